"""Captions and labels from ONNX Runtime equal the PyTorch reference stored in the bundle."""
import numpy as np
import pytest

from jetcap import samples
from jetcap.errors import UsageError
from jetcap.export.tasks import unpad
from jetcap.runtime.inference import read_images
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline, HostDecoderSession
from jetcap.runtime.session import open_bundle
from jetcap.util.npz import load_npz

from .recording import AskedOutputs


@pytest.fixture(scope="module")
def caption_session(captioner_bundle):
    with open_bundle(captioner_bundle, backend="onnxruntime") as session:
        yield session


@pytest.fixture(scope="module")
def captioner_reference(captioner_bundle):
    return load_npz(Manifest.load(captioner_bundle).reference_path())


@pytest.fixture(scope="module")
def classifier_reference(classifier_bundle):
    return load_npz(Manifest.load(classifier_bundle).reference_path())


def test_greedy_captions_equal_pytorch(caption_session, captioner_reference):
    hypotheses = caption_session.caption_pipeline().caption(captioner_reference["task/images"])
    expected = [unpad(row) for row in captioner_reference["task/greedy_tokens"]]
    assert [h.tokens for h in hypotheses] == expected
    np.testing.assert_allclose([h.score for h in hypotheses], captioner_reference["task/greedy_scores"],
                               atol=1e-3, rtol=1e-4)
    for hypothesis in hypotheses:
        assert hypothesis.alphas.shape[0] == len(hypothesis.tokens)


def test_beam_captions_equal_pytorch(caption_session, captioner_reference):
    beam = int(captioner_reference["task/beam_size"])
    hypotheses = caption_session.caption_pipeline().caption(captioner_reference["task/images"], beam_size=beam)
    assert [h.tokens for h in hypotheses] == [unpad(row) for row in captioner_reference["task/beam_tokens"]]


def test_sample_files_preprocess_like_the_reference(captioner_bundle, captioner_reference):
    manifest = Manifest.load(captioner_bundle)
    names = [str(n) for n in captioner_reference["task/names"]]
    paths = [p for p in samples.sample_images() if p.name in names]
    assert paths, "the reference should include the shipped sample images"
    batch = read_images(paths, manifest.preprocessing)
    expected = captioner_reference["task/images"][[names.index(p.name) for p in paths]]
    np.testing.assert_allclose(batch.arrays, expected, atol=1e-6)


def test_batches_beyond_the_max_batch_match_single_images(caption_session, captioner_reference):
    pipeline = caption_session.caption_pipeline()
    images = captioner_reference["task/images"]
    count = pipeline.max_batch + 2
    images = np.concatenate([images] * (count // len(images) + 1))[:count]
    batched = pipeline.caption(images)
    singles = [pipeline.caption(images[i:i + 1])[0] for i in range(count)]
    assert [h.tokens for h in batched] == [h.tokens for h in singles]


class _Closing(object):
    """A decoder session that records its close() (TensorRT's sessions free device buffers there)."""

    def __init__(self, inner, closed):
        self.inner, self.closed = inner, closed
        self.topk, self.vocab_size = inner.topk, inner.vocab_size

    def step(self, prev):
        return self.inner.step(prev)

    def step_topk(self, prev):
        return self.inner.step_topk(prev)

    def reorder(self, rows):
        self.inner.reorder(rows)

    def close(self):
        self.closed.append(self)


@pytest.mark.parametrize("beam", [1, 2])
def test_caption_closes_every_decoder_session_it_opens(caption_session, captioner_reference, monkeypatch, beam):
    pipeline = caption_session.caption_pipeline()
    opened, closed = [], []
    make = pipeline.decoder_session

    def decoder_session(encoded, rows=None):
        opened.append(_Closing(make(encoded, rows), closed))
        return opened[-1]

    monkeypatch.setattr(pipeline, "decoder_session", decoder_session)
    images = captioner_reference["task/images"][:2]
    hypotheses = pipeline.caption(images, beam_size=beam)
    assert len(hypotheses) == 2 and opened and closed == opened


def test_host_and_bound_decoder_sessions_agree(caption_session, captioner_reference):
    from jetcap.runtime import decoding
    from jetcap.runtime.pipeline import OrtBoundDecoderSession

    pipeline = caption_session.caption_pipeline()
    images = captioner_reference["task/images"][:4]
    encoded = pipeline.encode(images)
    protocol = pipeline.protocol
    start, end = pipeline.vocab.start_id, pipeline.vocab.end_id
    host = decoding.greedy_decode(HostDecoderSession(pipeline.step, protocol.initial(encoded), protocol), len(images),
                                  start, end, 20)
    bound = decoding.greedy_decode(OrtBoundDecoderSession(pipeline.step, protocol.initial(encoded), protocol),
                                   len(images), start, end, 20)
    assert [x.tokens for x in host] == [x.tokens for x in bound]
    beam_host = decoding.beam_search(HostDecoderSession(pipeline.step, protocol.initial(encoded, [0]), protocol), 3,
                                     start, end, 20)
    beam_bound = decoding.beam_search(OrtBoundDecoderSession(pipeline.step, protocol.initial(encoded, [0]), protocol),
                                      3, start, end, 20)
    assert beam_host.tokens == beam_bound.tokens


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_variants_caption(captioner_bundle, captioner_reference, precision):
    with open_bundle(captioner_bundle, backend="onnxruntime", precision=precision) as session:
        hypotheses = session.caption_pipeline().caption(captioner_reference["task/images"])
    expected = [unpad(row) for row in captioner_reference["task/greedy_tokens"]]
    agreement = np.mean([h.tokens == e for h, e in zip(hypotheses, expected)])
    assert agreement >= 0.75, agreement


def test_caption_pipeline_refuses_a_classifier(classifier_bundle):
    with open_bundle(classifier_bundle, backend="onnxruntime") as session:
        with pytest.raises(UsageError, match="not a captioner"):
            CaptionPipeline(session.manifest, session.runners)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_classifier_labels_equal_pytorch(classifier_bundle, classifier_reference, precision):
    count = int(classifier_reference["task/count"])
    with open_bundle(classifier_bundle, backend="onnxruntime", precision=precision) as session:
        pipeline = session.classifier_pipeline()
        labels = pipeline.labels
        for i in range(count):
            sequence = classifier_reference["task/seq_{:03d}".format(i)]
            expected = classifier_reference["task/probs_{:03d}".format(i)]
            prediction = pipeline.predict(sequence)
            assert prediction["index"] == int(np.argmax(expected)), i
            assert prediction["label"] == labels[int(np.argmax(expected))]
            if precision == "fp32":
                probs = pipeline.probabilities(sequence)
                np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_classifier_refuses_bad_sequences(classifier_bundle):
    with open_bundle(classifier_bundle, backend="onnxruntime") as session:
        pipeline = session.classifier_pipeline()
        width, low, high = pipeline.width, pipeline.min_len, pipeline.max_len
        with pytest.raises(UsageError, match="more than the bundle's maximum"):
            pipeline.predict(np.zeros((high + 1, width), np.float32))
        with pytest.raises(UsageError, match="features per frame"):
            pipeline.predict(np.zeros((low, width + 1), np.float32))
        if low > 1:
            with pytest.raises(UsageError, match="needs at least {}".format(low)):
                pipeline.predict(np.zeros((low - 1, width), np.float32))
        bad = np.zeros((low, width), np.float32)
        bad[3, 2] = np.nan
        with pytest.raises(UsageError, match="NaN"):
            pipeline.predict(bad)


@pytest.mark.parametrize("beam", [1, 3, 16])
def test_the_steps_top_k_gives_the_captions_of_the_full_distribution(caption_session, captioner_reference, beam):
    from jetcap.runtime import decoding

    pipeline = caption_session.caption_pipeline()
    protocol = pipeline.protocol
    assert protocol.topk == {"log_probs": "topk_log_probs", "ids": "topk_ids", "k": min(16, protocol.vocab_size)}
    encoded = pipeline.encode(captioner_reference["task/images"])
    start, end = pipeline.vocab.start_id, pipeline.vocab.end_id
    for i in range(len(captioner_reference["task/images"])):
        sessions = [HostDecoderSession(pipeline.step, protocol.initial(encoded, [i]), protocol, use_topk=use)
                    for use in (True, False)]
        if beam == 1:
            got, want = [decoding.greedy_decode(s, 1, start, end, 20)[0] for s in sessions]
        else:
            got, want = [decoding.beam_search(s, beam, start, end, 20) for s in sessions]
        assert got.tokens == want.tokens
        assert abs(got.score - want.score) < 1e-9


def test_a_runner_returns_the_outputs_asked_for_and_refuses_unknown_ones(caption_session, captioner_reference):
    step = caption_session.runners["decoder_step"]
    pipeline = caption_session.caption_pipeline()
    protocol = pipeline.protocol
    feed = dict(protocol.initial(pipeline.encode(captioner_reference["task/images"][:2])))
    feed[protocol.word_input] = np.zeros(2, dtype=np.int64)
    everything = step.infer(feed)
    assert list(everything) == step.output_names
    some = step.infer(feed, ["topk_ids", "h_new"])
    assert list(some) == ["topk_ids", "h_new"]
    np.testing.assert_array_equal(some["topk_ids"], everything["topk_ids"])
    np.testing.assert_array_equal(some["h_new"], everything["h_new"])
    with pytest.raises(UsageError, match=r"no outputs \['logits'\]"):
        step.infer(feed, ["h_new", "logits"])


@pytest.mark.parametrize("use_topk", [True, False])
def test_a_decoder_session_asks_only_for_the_state_and_what_its_search_reads(caption_session, captioner_reference,
                                                                              use_topk):
    from jetcap.runtime import decoding

    pipeline = caption_session.caption_pipeline()
    protocol = pipeline.protocol
    step = AskedOutputs(pipeline.step)
    session = HostDecoderSession(step, protocol.initial(pipeline.encode(captioner_reference["task/images"][:2])),
                                 protocol, use_topk=use_topk)
    decoding.greedy_decode(session, 2, pipeline.vocab.start_id, pipeline.vocab.end_id, 20)
    state = sorted(protocol.state_outputs)
    read = ["topk_log_probs", "topk_ids", "alpha"] if use_topk else ["log_probs", "alpha"]
    assert step.asked and all(sorted(asked) == sorted(state + read) for asked in step.asked)

