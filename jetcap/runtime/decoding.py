"""Greedy and beam-search caption decoding in numpy, over any backend (Python 3.6).

The search is written once and shared by every backend and by the PyTorch reference, so that "same
caption" comparisons test the numerics of the graphs, not two implementations of the search.

A backend provides a *decoder session* for a batch of encoded images:

* ``session.step(prev_words)`` takes int64 ids of shape ``(n,)``, advances the hidden state that the
  session keeps (on the device, for TensorRT), and returns numpy ``(log_probs (n, V), alpha (n, P))``;
* ``session.reorder(rows)`` keeps/duplicates state rows by index (beam selection, finished rows).

A session may also offer ``session.step_topk(prev_words) -> (values (n, k), ids (n, k), alpha)`` with
``session.topk`` = k and ``session.vocab_size``: the step graph's own top-k of the log-probabilities
(sorted, ties by lower id), so that a GPU backend copies k numbers per row instead of the whole
vocabulary and the search sorts k candidates per row instead of V.  The search uses it when k covers
what it needs (1 for greedy, the live beam for beam search): the result is the same caption, since
the best ``live`` words over all rows are among each row's best ``live``.
"""
import collections

import numpy as np

Hypothesis = collections.namedtuple("Hypothesis", ["tokens", "score", "alphas", "finished"])
Hypothesis.__doc__ = """One decoded caption: token ids (without <start>/<end>), the summed log-probability
(including that of <end> when finished), per-token attention weights ``(len(tokens), P)`` and whether
<end> was produced within the length limit."""


STEP = "step"
REORDER = "reorder"


def check_finite(hypotheses):
    """``hypotheses`` (a list or one), raising BundleError when a score is NaN or infinite: a broken graph
    or manifest values (preprocessing) that overflow, never an answer to print as a caption."""
    from jetcap.errors import BundleError

    for hypothesis in (hypotheses if isinstance(hypotheses, list) else [hypotheses]):
        if not np.isfinite(hypothesis.score):
            raise BundleError("the bundle's graphs produced a {} score: its decoder or encoder outputs are not "
                              "finite numbers (a broken graph, or preprocessing values in the manifest that "
                              "overflow)".format(hypothesis.score))
    return hypotheses


def run_search(search, session):
    """Drive a search generator (:func:`greedy_search`, :func:`beam_steps`) over one decoder session.

    The generator yields ``(STEP, prev_words, use_topk)`` -- answered with ``session.step_topk(prev)``
    or ``session.step(prev)`` -- and ``(REORDER, rows)`` -- answered by ``session.reorder(rows)`` -- and
    returns its result.  :class:`jetcap.runtime.scheduler.DecodeScheduler` drives many of them at once,
    sharing each step call between them; this drives one.
    """
    answer = None
    try:
        while True:
            op = search.send(answer)
            if op[0] == STEP:
                answer = session.step_topk(op[1]) if op[2] else session.step(op[1])
            else:
                session.reorder(op[1])
                answer = None
    except StopIteration as stop:
        return stop.value


def greedy_decode(session, batch_size, start_id, end_id, max_len):
    """Greedy decoding of ``batch_size`` images that share one decoder session.

    Args:
        session: the decoder session (see module docstring), with ``batch_size`` rows.
        batch_size: number of images.
        start_id, end_id: special token ids.
        max_len: the most decoding steps (the <end> token counts as one).
    Returns:
        a list of :class:`Hypothesis`, one per image.
    """
    return run_search(greedy_search(batch_size, start_id, end_id, max_len, getattr(session, "topk", 0)), session)


def greedy_search(batch_size, start_id, end_id, max_len, topk=0):
    """The generator of :func:`greedy_decode` (see :func:`run_search`); ``topk``: the k the session's
    ``step_topk`` offers (0: none)."""
    tokens = [[] for _ in range(batch_size)]
    alphas = [[] for _ in range(batch_size)]
    scores = np.zeros(batch_size, dtype=np.float64)
    finished = np.zeros(batch_size, dtype=bool)
    active = np.arange(batch_size)
    prev = np.full(batch_size, start_id, dtype=np.int64)
    use_topk = topk >= 1
    for _ in range(max_len):
        if use_topk:
            values, ids, alpha = yield (STEP, prev, True)
            best, best_scores = ids[:, 0], values[:, 0]
        else:
            log_probs, alpha = yield (STEP, prev, False)
            best = np.argmax(log_probs, axis=1)
            best_scores = log_probs[np.arange(len(best)), best]
        for row, image in enumerate(active):
            scores[image] += float(best_scores[row])
            if best[row] == end_id:
                finished[image] = True
            else:
                tokens[image].append(int(best[row]))
                alphas[image].append(np.asarray(alpha[row], dtype=np.float32))
        keep = np.nonzero(best != end_id)[0]
        if keep.size == 0:
            break
        if keep.size < active.size:
            yield (REORDER, keep)
            active = active[keep]
        prev = best[keep].astype(np.int64)
    return [
        Hypothesis(tokens[i], float(scores[i]), _stack(alphas[i]), bool(finished[i]))
        for i in range(batch_size)
    ]


def beam_search(session, beam_size, start_id, end_id, max_len, vocab_size=None):
    """Beam search for one image whose decoder session starts with a single row.

    Keeps the ``beam_size`` best partial captions by summed log-probability; a caption that emits <end>
    is complete and leaves the beam (which shrinks), as in Show-Attend-Tell.  Ties are broken by the
    lower flat index (stable sort), so every backend explores the same beams for the same scores.

    Returns:
        the best :class:`Hypothesis` (best complete one; the best incomplete one if none completed).
    """
    search = beam_steps(beam_size, start_id, end_id, max_len, vocab_size,
                        getattr(session, "topk", 0), getattr(session, "vocab_size", None))
    return run_search(search, session)


def beam_steps(beam_size, start_id, end_id, max_len, vocab_size=None, topk=0, topk_vocab=None):
    """The generator of :func:`beam_search` (see :func:`run_search`); ``topk``/``topk_vocab``: the k
    and the vocabulary size of the session's ``step_topk`` (0: none)."""
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    seqs = [[]]
    seq_alphas = [[]]
    seq_scores = np.zeros(1, dtype=np.float64)
    prev = np.full(1, start_id, dtype=np.int64)
    complete = []
    use_topk = topk >= beam_size
    for _ in range(max_len):
        live = beam_size - len(complete)
        if use_topk:
            values, ids, alpha = yield (STEP, prev, True)
            rows, words, chosen = _beam_candidates_topk(values, ids, int(topk_vocab), seq_scores, live)
        else:
            log_probs, alpha = yield (STEP, prev, False)
            vocab = log_probs.shape[1] if vocab_size is None else vocab_size
            total = seq_scores[:, None] + log_probs.astype(np.float64)
            order = np.argsort(-total.ravel(), kind="stable")[:live]
            rows, words, chosen = order // vocab, order % vocab, total.ravel()[order]
        new_seqs, new_alphas, new_scores, keep_rows, keep_words = [], [], [], [], []
        for row, word, score in zip(rows, words, chosen):
            score = float(score)
            history = seq_alphas[row] + [np.asarray(alpha[row], dtype=np.float32)]
            if word == end_id:
                complete.append(Hypothesis(list(seqs[row]), score, _stack(seq_alphas[row]), True))
            else:
                new_seqs.append(seqs[row] + [int(word)])
                new_alphas.append(history)
                new_scores.append(score)
                keep_rows.append(int(row))
                keep_words.append(int(word))
        if len(complete) >= beam_size or not new_seqs:
            seqs = []
            break
        yield (REORDER, np.asarray(keep_rows, dtype=np.int64))
        seqs, seq_alphas = new_seqs, new_alphas
        seq_scores = np.asarray(new_scores, dtype=np.float64)
        prev = np.asarray(keep_words, dtype=np.int64)
    candidates = complete or [
        Hypothesis(seqs[i], float(seq_scores[i]), _stack(seq_alphas[i]), False) for i in range(len(seqs))
    ]
    return max(candidates, key=lambda h: h.score)


def _beam_candidates_topk(values, ids, vocab_size, seq_scores, live):
    """The ``live`` best (row, word) pairs from the step's per-row top-k, ordered as the full search
    orders them: by total score, ties by the lower flat index ``row * V + word``."""
    total = seq_scores[:, None] + values.astype(np.float64)
    flat = np.arange(ids.shape[0])[:, None] * vocab_size + ids.astype(np.int64)
    order = np.lexsort((flat.ravel(), -total.ravel()))[:live]
    rows = order // ids.shape[1]
    return rows, ids.ravel()[order].astype(np.int64), total.ravel()[order]


def _stack(rows):
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32)
