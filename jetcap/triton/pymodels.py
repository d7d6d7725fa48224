"""Triton Python-backend models over a jetcap bundle: caption decoding and classification (Python 3.6 syntax).

A repository's ``model.py`` subclasses :class:`CaptionerModel` or :class:`ClassifierModel` as
``TritonPythonModel`` and sets ``pb_utils`` and ``model_dir``.  The model's ``config.pbtxt`` parameters say
how to run the graphs:

* ``mode: "bls"`` -- the graphs are other Triton models (``encoder_model``/``decoder_model`` or
  ``graph_model``), called through BLS (:mod:`jetcap.triton.bls`); the numpy search runs here;
* ``mode: "inprocess"`` -- the bundle's ONNX files travel in ``bundle/`` beside ``model.py`` and run in
  this process with ONNX Runtime (:func:`jetcap.runtime.session.open_bundle`).

Requests that Triton's dynamic batcher hands over together are decoded as one batch (captioner, greedy)
or grouped by sequence length (classifier).
"""
import io
import json
import os

import numpy as np

from jetcap.errors import JetcapError, UsageError
from jetcap.runtime import preprocess
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline, class_probabilities, class_scores
from jetcap.triton.bls import BlsRunner

BUNDLE_SUBDIR = "bundle"


def model_parameters(args):
    """``{key: string}`` of the ``parameters`` of the model config Triton passes to ``initialize``."""
    config = json.loads(args["model_config"])
    return dict((key, value.get("string_value", "")) for key, value in config.get("parameters", {}).items())


class _BundleModel(object):
    """Shared parts: parameters, the manifest beside model.py, the in-process session, error responses."""

    pb_utils = None
    model_dir = None

    def initialize(self, args):
        """Load the manifest (and, in-process, the bundle's graphs) named by the config parameters."""
        self.params = model_parameters(args)
        self.mode = self.params.get("mode", "bls")
        bundle_dir = os.path.join(self.model_dir, self.params.get("bundle_dir", BUNDLE_SUBDIR))
        self.manifest = Manifest.load(bundle_dir)
        self.session = None
        if self.mode == "inprocess":
            from jetcap.runtime.session import open_bundle

            threads = int(self.params.get("threads", "0")) or None
            self.session = open_bundle(self.manifest, backend="onnxruntime",
                                       precision=self.params.get("precision", "fp32"), threads=threads)
        elif self.mode != "bls":
            raise UsageError("unknown mode {!r} in the model parameters (bls or inprocess)".format(self.mode))

    def runner(self, graph, param, outputs=None):
        """The runner of ``graph``: the in-process one, or a BLS runner to the model named by ``param``."""
        if self.session is not None:
            return self.session.runners[graph]
        dtypes = json.loads(self.params.get("served_dtypes") or "{}").get(graph)
        return BlsRunner(self.pb_utils, self.params[param], self.manifest.graph(graph), outputs=outputs,
                         dtypes=dtypes)

    def error_response(self, message):
        """An error response (the request fails; the model stays up)."""
        return self.pb_utils.InferenceResponse(output_tensors=[], error=self.pb_utils.TritonError(message))

    def optional_int(self, request, name, default):
        """An optional INT32 [1] input's first value, else ``default``."""
        tensor = self.pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        values = tensor.as_numpy().reshape(-1)
        if values.size == 0 or int(values[0]) < 1:
            raise UsageError("{} must be at least 1".format(name))
        return int(values[0])

    def finalize(self):
        """Release the in-process session."""
        if self.session is not None:
            self.session.close()
            self.session = None


class CaptionerModel(_BundleModel):
    """Caption encoded images (``image``: bytes) or preprocessed ones (``images``: float32 3xHxW).

    Optional inputs ``beam_size`` and ``max_len`` (INT32 [1]); outputs ``caption`` (bytes) and ``score``.
    """

    def initialize(self, args):
        """Set up the caption pipeline (BLS or in-process)."""
        _BundleModel.initialize(self, args)
        runners = {"encoder": self.runner("encoder", "encoder_model"),
                   "decoder_step": self.runner("decoder_step", "decoder_model")}
        self.pipeline = CaptionPipeline(self.manifest, runners, self.params.get("precision", "fp32"))
        self.preprocessing = self.manifest.preprocessing
        height, width = self.preprocessing["image_size"]
        self.image_shape = (3, int(height), int(width))
        self.defaults = (int(self.manifest.decoding.get("beam_size") or 1),
                         int(self.manifest.decoding.get("max_len") or 20))

    def images_of(self, request):
        """float32 (b, 3, H, W) of a request's ``image`` (encoded bytes) or ``images`` input."""
        pb_utils = self.pb_utils
        encoded = pb_utils.get_input_tensor_by_name(request, "image")
        if encoded is not None:
            arrays = []
            for index, data in enumerate(encoded.as_numpy().reshape(-1)):
                stream = io.BytesIO(bytes(data))
                stream.name = "image[{}]".format(index)
                arrays.append(preprocess.preprocess_image(preprocess.open_image(stream), self.preprocessing))
            return np.stack(arrays).astype(np.float32)
        tensor = pb_utils.get_input_tensor_by_name(request, "images")
        if tensor is None:
            raise UsageError("send either 'image' (encoded image bytes) or 'images' (preprocessed float32)")
        images = np.asarray(tensor.as_numpy(), dtype=np.float32)
        if images.shape[1:] != self.image_shape:
            raise UsageError("images must be (batch, {}, {}, {}), got {}".format(
                self.image_shape[0], self.image_shape[1], self.image_shape[2], images.shape))
        if not np.all(np.isfinite(images)):
            raise UsageError("images contain NaN or Inf")
        return images

    def execute(self, requests):
        """One response per request; the images of requests with the same settings are decoded together."""
        pb_utils = self.pb_utils
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            try:
                images = self.images_of(request)
                key = (self.optional_int(request, "beam_size", self.defaults[0]),
                       self.optional_int(request, "max_len", self.defaults[1]))
            except JetcapError as exc:
                responses[index] = self.error_response(str(exc))
                continue
            groups.setdefault(key, []).append((index, images))
        for (beam_size, max_len), items in groups.items():
            batch = np.concatenate([images for _, images in items])
            try:
                hypotheses = self.pipeline.caption(batch, beam_size=beam_size, max_len=max_len)
            except JetcapError as exc:
                for index, _ in items:
                    responses[index] = self.error_response(str(exc))
                continue
            start = 0
            for index, images in items:
                found = hypotheses[start:start + len(images)]
                start += len(images)
                captions = np.array([[self.pipeline.text(h).encode("utf-8")] for h in found], dtype=np.object_)
                scores = np.array([[h.score] for h in found], dtype=np.float32)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("caption", captions), pb_utils.Tensor("score", scores)])
        return responses


class ClassifierModel(_BundleModel):
    """Classify keypoint sequences ``sequence`` (float32 (T, F)); outputs ``label``, ``index``, ``probabilities``."""

    def initialize(self, args):
        """Set up the classifier runner (BLS or in-process)."""
        _BundleModel.initialize(self, args)
        self.model = self.runner("model", "graph_model", outputs=["logits"])
        self.labels = list(self.manifest.labels)
        self.width = int(self.manifest.config["input_size"])
        self.min_len = int(self.manifest.axes["T"]["min"])
        self.max_len = int(self.manifest.axes["T"]["max"])
        self.max_batch = int(self.manifest.axes["batch"]["max"])
        self.scores = class_scores(self.manifest.config)

    def sequences_of(self, request):
        """float32 (b, T, F) of a request, checked like ``jetcap predict`` checks files."""
        from jetcap.runtime.sequences import check_sequence

        tensor = self.pb_utils.get_input_tensor_by_name(request, "sequence")
        batch = np.asarray(tensor.as_numpy(), dtype=np.float32)
        return np.stack([check_sequence(row, "sequence[{}]".format(i), width=self.width, max_len=self.max_len,
                                        min_len=self.min_len) for i, row in enumerate(batch)])

    def probabilities(self, batch):
        """float64 (b, classes) for same-length sequences, in chunks of the bundle's largest batch."""
        chunks = []
        for start in range(0, len(batch), self.max_batch):
            logits = self.model.infer({"sequence": batch[start:start + self.max_batch]})["logits"]
            chunks.append(class_probabilities(logits, self.scores))
        return np.concatenate(chunks)

    def execute(self, requests):
        """One response per request; sequences of the same length from several requests run together."""
        pb_utils = self.pb_utils
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            try:
                batch = self.sequences_of(request)
            except JetcapError as exc:
                responses[index] = self.error_response(str(exc))
                continue
            groups.setdefault(batch.shape[1], []).append((index, batch))
        for _, items in groups.items():
            try:
                probs = self.probabilities(np.concatenate([batch for _, batch in items]))
            except JetcapError as exc:
                for index, _ in items:
                    responses[index] = self.error_response(str(exc))
                continue
            start = 0
            for index, batch in items:
                rows = probs[start:start + len(batch)]
                start += len(batch)
                best = np.argmax(rows, axis=1)
                labels = np.array([[self.labels[i].encode("utf-8")] for i in best], dtype=np.object_)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("label", labels),
                    pb_utils.Tensor("index", best.astype(np.int32).reshape(-1, 1)),
                    pb_utils.Tensor("probabilities", rows.astype(np.float32))])
        return responses


def requested_outputs(output_names, requested):
    """The outputs a request gets: those of ``output_names`` it names in ``requested``, in the graph's
    order, or all of them when it names none."""
    requested = set(requested or ())
    return [name for name in output_names if name in requested] or list(output_names)


class GraphModel(object):
    """Serve one bundle graph with ONNX Runtime inside the Python backend (``--backend python-bls``).

    For a Triton without the onnxruntime backend (PyTriton's build has only the Python backend): the graph
    models keep the names, tensors and batching of the ``onnxruntime_onnx`` ones, so the BLS models above
    run unchanged.  Parameters: ``graph``, ``precision``, ``threads``.
    """

    pb_utils = None
    model_dir = None

    def initialize(self, args):
        """Open the graph's ONNX file from ``bundle/`` beside model.py."""
        from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, variant_options

        params = model_parameters(args)
        manifest = Manifest.load(os.path.join(self.model_dir, params.get("bundle_dir", BUNDLE_SUBDIR)))
        self.graph = params["graph"]
        precision = params.get("precision", "fp32")
        manifest.verify_file(precision, self.graph)
        spec = manifest.graph(self.graph)
        self.inputs = spec["inputs"]
        self.column_inputs = set(t["name"] for t in self.inputs if list(t["shape"]) == ["batch"])
        self.output_names = [t["name"] for t in spec["outputs"]]
        self.runner = OnnxRuntimeRunner(manifest.graph_path(precision, self.graph), spec,
                                        name="triton-python:{}".format(self.graph),
                                        threads=int(params.get("threads", "0")) or None,
                                        **variant_options(precision))
        self.runner.activate()

    def execute(self, requests):
        """Run the requests Triton batched together as one ONNX Runtime call, then split the outputs.  Each
        request gets the outputs it names (all when it names none), and the call computes and copies only
        those the requests name (a caption model's step requests name the state and the top-k)."""
        pb_utils = self.pb_utils
        feeds, asked = [], []
        for request in requests:
            asked.append(requested_outputs(self.output_names, request.requested_output_names()))
            feed = {}
            for spec in self.inputs:
                array = pb_utils.get_input_tensor_by_name(request, spec["name"]).as_numpy()
                feed[spec["name"]] = array.reshape(-1) if spec["name"] in self.column_inputs else array
            feeds.append(feed)
        sizes = [len(feed[self.inputs[0]["name"]]) for feed in feeds]
        wanted = [name for name in self.output_names if any(name in names for names in asked)]
        try:
            merged = dict((spec["name"], np.concatenate([feed[spec["name"]] for feed in feeds]))
                          for spec in self.inputs)
            outputs = self.runner.infer(merged, wanted)
        except (JetcapError, ValueError) as exc:
            # shapes that cannot be concatenated (another T) or a refused feed: run the requests one by one
            return [self._single(feed, names) for feed, names in zip(feeds, asked)] if len(feeds) > 1 else [
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))]
        responses, start = [], 0
        for size, names in zip(sizes, asked):
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][start:start + size])) for name in names]))
            start += size
        return responses

    def _single(self, feed, names):
        pb_utils = self.pb_utils
        try:
            outputs = self.runner.infer(feed, names)
        except JetcapError as exc:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(outputs[name]))
                                                          for name in names])

    def finalize(self):
        """Release the ONNX Runtime session."""
        self.runner.deactivate()
