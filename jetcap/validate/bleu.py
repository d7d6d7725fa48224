"""Corpus BLEU (Papineni et al., 2002), written out in plain Python (3.6 compatible, no nltk/sacrebleu).

For a corpus of candidate token sequences, each with one or more reference token sequences:

* p_n (n = 1..4): the *clipped* n-gram precision over the whole corpus: each candidate n-gram counts
  at most as many times as it appears in the one reference where it appears most often; matches and
  candidate n-gram totals are summed over the corpus before dividing;
* c: total candidate length; r: the sum over candidates of the reference length closest to the
  candidate's (ties go to the shorter reference);
* brevity penalty BP = 1 if c > r else exp(1 - r / c);
* BLEU = 100 * BP * exp(sum_n w_n log p_n) with uniform weights w_n = 1 / N (0 when any p_n is 0 or
  when c is 0).

With ``effective_order=True``, orders for which the corpus has no candidate n-gram at all (every
candidate shorter than n) are left out and the weights spread over the remaining orders; this keeps
a corpus of identical short captions at 100 instead of 0.

Tokens may be anything hashable (word strings or integer ids).
"""
import collections
import math

from jetcap.errors import UsageError


def ngram_counts(tokens, n):
    """``Counter`` of the n-grams (tuples) of ``tokens``."""
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


class BleuScore(object):
    """A corpus BLEU score and the statistics it was computed from.

    Attributes:
        score: BLEU in 0..100.
        precisions: clipped n-gram precisions p_1..p_N in 0..100 (None for orders left out with
            ``effective_order``).
        matches, totals: clipped n-gram matches and candidate n-gram counts per order.
        brevity_penalty: BP in (0, 1].
        candidate_length, reference_length: c and r.
        max_order: N.
    """

    def __init__(self, score, precisions, matches, totals, brevity_penalty, candidate_length,
                 reference_length, max_order):
        self.score = score
        self.precisions = precisions
        self.matches = matches
        self.totals = totals
        self.brevity_penalty = brevity_penalty
        self.candidate_length = candidate_length
        self.reference_length = reference_length
        self.max_order = max_order

    def to_dict(self):
        """All fields as a JSON-ready dict."""
        return dict(self.__dict__)

    def __float__(self):
        return float(self.score)

    def __repr__(self):
        return "<BleuScore {:.2f} (BP {:.3f}, c {} r {})>".format(
            self.score, self.brevity_penalty, self.candidate_length, self.reference_length)


def _tokens(seq, what):
    if isinstance(seq, (str, bytes)):
        raise UsageError("{} must be a sequence of tokens, got a string (tokenize it first)".format(what))
    try:
        return tuple(seq)
    except TypeError:
        raise UsageError("{} must be a sequence of tokens, got {!r}".format(what, seq))


def _reference_set(refs, index):
    """The reference token tuples of candidate ``index``; catches a flat token list passed by mistake."""
    what = "references of candidate {}".format(index)
    if isinstance(refs, (str, bytes)):
        raise UsageError("{} must be a list of token sequences, got a string".format(what))
    try:
        refs = list(refs)
    except TypeError:
        raise UsageError("{} must be a list of token sequences, got {!r}".format(what, refs))
    if not refs:
        raise UsageError("{} are empty: give at least one reference per candidate".format(what))
    for ref in refs:
        if isinstance(ref, (str, bytes)) or not hasattr(ref, "__iter__"):
            raise UsageError(
                "{} must be a list of token sequences, got the tokens themselves".format(what),
                hint="wrap a single reference in a list: references=[[ref] for ref in refs]")
    return [_tokens(ref, what) for ref in refs]


def _closest_length(lengths, target):
    """The length in ``lengths`` closest to ``target``; ties go to the shorter one."""
    return min(lengths, key=lambda length: (abs(length - target), length))


def corpus_bleu_score(candidates, references, max_order=4, effective_order=False):
    """Corpus BLEU with its statistics.

    Args:
        candidates: a list of candidate token sequences.
        references: for each candidate, a *list* of one or more reference token sequences.
        max_order: the largest n-gram order N (default 4: BLEU-4).
        effective_order: leave out orders with no candidate n-gram in the corpus (default False:
            standard BLEU, which is 0 when every candidate is shorter than ``max_order``).
    Returns:
        a :class:`BleuScore`.
    Raises:
        UsageError: when the corpus is empty, the two lists differ in length, or an entry is malformed.
    """
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise UsageError("max_order must be a positive integer, got {!r}".format(max_order))
    candidates = [_tokens(c, "candidate {}".format(i)) for i, c in enumerate(candidates)]
    references = list(references)
    if len(candidates) != len(references):
        raise UsageError("{} candidates but {} reference sets".format(len(candidates), len(references)))
    if not candidates:
        raise UsageError("BLEU needs at least one candidate")

    matches = [0] * max_order
    totals = [0] * max_order
    cand_len = 0
    ref_len = 0
    for index, (cand, refs) in enumerate(zip(candidates, references)):
        refs = _reference_set(refs, index)
        cand_len += len(cand)
        ref_len += _closest_length([len(r) for r in refs], len(cand))
        for n in range(1, max_order + 1):
            cand_counts = ngram_counts(cand, n)
            if not cand_counts:
                continue
            max_ref_counts = collections.Counter()  # type: collections.Counter
            for ref in refs:
                for gram, count in ngram_counts(ref, n).items():
                    if count > max_ref_counts[gram]:
                        max_ref_counts[gram] = count
            matches[n - 1] += sum(min(count, max_ref_counts[gram]) for gram, count in cand_counts.items())
            totals[n - 1] += sum(cand_counts.values())

    precisions = []
    for n in range(max_order):
        if totals[n] == 0:
            precisions.append(None if effective_order else 0.0)
        else:
            precisions.append(100.0 * matches[n] / totals[n])

    if cand_len == 0:
        bp = 0.0
    elif cand_len > ref_len:
        bp = 1.0
    else:
        bp = math.exp(1.0 - float(ref_len) / cand_len)

    used = [p for p in precisions if p is not None]
    if cand_len == 0 or not used or min(used) == 0.0:
        score = 0.0
    else:
        log_mean = sum(math.log(p / 100.0) for p in used) / len(used)
        score = 100.0 * bp * math.exp(log_mean)
    return BleuScore(score, precisions, matches, totals, bp, cand_len, ref_len, max_order)


def corpus_bleu(candidates, references, max_order=4, effective_order=False):
    """Corpus BLEU-``max_order`` in 0..100; see :func:`corpus_bleu_score` for the arguments."""
    return corpus_bleu_score(candidates, references, max_order, effective_order).score
