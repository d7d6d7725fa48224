"""Corpus BLEU (jetcap.validate.bleu) against hand-computed values and its defining properties."""
import math
import random

import pytest

from jetcap.errors import UsageError
from jetcap.validate.bleu import corpus_bleu, corpus_bleu_score, ngram_counts


def toks(text):
    return text.split()


def test_ngram_counts():
    counts = ngram_counts(toks("the cat the cat"), 2)
    assert counts == {("the", "cat"): 2, ("cat", "the"): 1}
    assert not ngram_counts(toks("a b"), 3)


def test_hand_computed_bleu4():
    # candidate 1-grams: 5 of 6 clipped matches ("the" twice, once in the reference), 2-grams 3/5,
    # 3-grams 2/4, 4-grams 1/3; equal lengths so BP = 1; BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4)
    score = corpus_bleu_score([toks("the cat sat on the mat")], [[toks("the cat sat on a mat")]])
    assert score.matches == [5, 3, 2, 1] and score.totals == [6, 5, 4, 3]
    assert score.brevity_penalty == 1.0
    assert score.precisions == pytest.approx([500 / 6.0, 60.0, 50.0, 100 / 3.0])
    assert score.score == pytest.approx(100 * (1 / 12.0) ** 0.25)  # 53.728...
    assert score.score == pytest.approx(53.7284965911771)


def test_corpus_level_pools_counts_instead_of_averaging_sentences():
    cands = [toks("the cat sat on the mat"), toks("a b c d")]
    refs = [[toks("the cat sat on a mat")], [toks("a b c d")]]
    # pooled: p1 = 9/10, p2 = 6/8, p3 = 4/6, p4 = 2/4
    expected = 100 * (0.9 * 0.75 * (4 / 6.0) * 0.5) ** 0.25
    assert corpus_bleu(cands, refs) == pytest.approx(expected)
    assert corpus_bleu(cands, refs) != pytest.approx((53.7284965911771 + 100) / 2)


def test_papineni_clipping_example():
    # Papineni et al. 2002: "the the the ..." has modified unigram precision 2/7
    cand = toks("the the the the the the the")
    refs = [toks("the cat is on the mat"), toks("there is a cat on the mat")]
    score = corpus_bleu_score([cand], [refs], max_order=1)
    assert score.matches == [2] and score.totals == [7]
    assert score.reference_length == 7  # closest reference length
    assert score.score == pytest.approx(100 * 2 / 7.0)


def test_clipping_uses_the_reference_where_the_ngram_is_most_frequent():
    cand = toks("the the cat")
    both = corpus_bleu_score([cand], [[toks("the cat"), toks("the the dog")]], max_order=1)
    assert both.matches == [3] and both.score == pytest.approx(100.0)
    first_only = corpus_bleu_score([cand], [[toks("the cat")]], max_order=1)
    assert first_only.matches == [2] and first_only.score == pytest.approx(200 / 3.0)


def test_brevity_penalty():
    score = corpus_bleu_score([toks("the cat")], [[toks("the cat sat on the mat")]], max_order=2)
    assert score.precisions == [100.0, 100.0]
    assert score.brevity_penalty == pytest.approx(math.exp(1 - 6 / 2.0))
    assert score.score == pytest.approx(100 * math.exp(-2))  # 13.53...
    # longer than the reference: no penalty
    longer = corpus_bleu_score([toks("the cat sat on the mat")], [[toks("the cat")]], max_order=2)
    assert longer.brevity_penalty == 1.0


def test_closest_reference_length_ties_go_to_the_shorter():
    score = corpus_bleu_score([toks("a b c d")], [[toks("a b c"), toks("a b c d e")]], max_order=1)
    assert score.reference_length == 3
    assert score.score == pytest.approx(100.0)


def test_identical_corpus_scores_100():
    corpus = [toks("a red circle left of a blue square"), toks("a small green triangle above a circle")]
    assert corpus_bleu(corpus, [[c] for c in corpus]) == 100.0
    ids = [[4, 8, 15, 16, 23, 42], [1, 2, 3, 4]]
    assert corpus_bleu(ids, [[list(c)] for c in ids]) == 100.0


def test_short_identical_captions_need_effective_order():
    corpus = [toks("red circle"), toks("blue square")]
    refs = [[c] for c in corpus]
    assert corpus_bleu(corpus, refs) == 0.0  # standard BLEU-4: no 3-/4-grams at all
    score = corpus_bleu_score(corpus, refs, effective_order=True)
    assert score.score == 100.0
    assert score.precisions == [100.0, 100.0, None, None]


def test_empty_candidates():
    assert corpus_bleu([[]], [[toks("a b c")]]) == 0.0
    assert corpus_bleu([[]], [[toks("a b c")]], effective_order=True) == 0.0
    # an empty candidate adds its reference length to r: the brevity penalty punishes it
    cands = [toks("a b c d"), []]
    refs = [[toks("a b c d")], [toks("x y")]]
    score = corpus_bleu_score(cands, refs)
    assert score.candidate_length == 4 and score.reference_length == 6
    assert score.score == pytest.approx(100 * math.exp(1 - 6 / 4.0))


def test_zero_precision_gives_zero():
    assert corpus_bleu([toks("x y z w")], [[toks("a b c d")]]) == 0.0


def test_score_is_within_0_and_100_and_ordered():
    rng = random.Random(0)
    words = "a the small large red blue circle square left of".split()
    for _ in range(100):
        n = rng.randint(1, 5)
        cands = [[rng.choice(words) for _ in range(rng.randint(0, 9))] for _ in range(n)]
        refs = [[[rng.choice(words) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 3))]
                for _ in range(n)]
        for effective in (False, True):
            assert 0.0 <= corpus_bleu(cands, refs, effective_order=effective) <= 100.0
            # adding the candidate itself as a reference can only help
            more = [r + [list(c)] for c, r in zip(cands, refs)]
            assert corpus_bleu(cands, more, effective_order=effective) >= \
                corpus_bleu(cands, refs, effective_order=effective) - 1e-9


def test_word_and_id_tokens_score_alike():
    words = [toks("a b c d e")]
    ids = [[1, 2, 3, 4, 5]]
    assert corpus_bleu(words, [[toks("a b c d x")]]) == corpus_bleu(ids, [[[1, 2, 3, 4, 9]]])


@pytest.mark.parametrize("cands,refs,match", [
    ([], [], "at least one candidate"),
    ([toks("a")], [], "1 candidates but 0 reference sets"),
    ([toks("a b")], [toks("a b")], "got the tokens themselves"),
    ([toks("a b")], [[]], "at least one reference"),
    (["a b"], [[toks("a b")]], "tokenize it first"),
    ([toks("a b")], ["a b"], "got a string"),
])
def test_bad_input_is_usage_error(cands, refs, match):
    with pytest.raises(UsageError, match=match):
        corpus_bleu(cands, refs)


def test_bad_max_order():
    with pytest.raises(UsageError):
        corpus_bleu([toks("a")], [[toks("a")]], max_order=0)
