"""Runners that call other Triton models through BLS (business logic scripting), for the Python backend.

A :class:`BlsRunner` has the ``infer(feed, outputs=None) -> {output: array}`` of every jetcap runner, so the jetcap
pipelines (:class:`jetcap.runtime.pipeline.CaptionPipeline`) and the shared numpy search
(:mod:`jetcap.runtime.decoding`) run unchanged over Triton models; its :meth:`BlsRunner.decoder_session`
gives a decoder session whose ``step()`` is one BLS request to the ``decoder_step`` model.

``pb_utils`` (``triton_python_backend_utils``) exists only inside Triton's Python backend, so it is passed
in rather than imported.  Python 3.6 syntax (a Jetson's Triton runs the stub on the system Python).
"""
import numpy as np

from jetcap.errors import JetcapError
from jetcap.runtime.pipeline import HostDecoderSession


class TritonModelError(JetcapError):
    """A model called through BLS answered with an error."""


class BlsRunner(object):
    """Run the Triton model ``model_name`` serving one bundle graph, through BLS.

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        model_name: the Triton model serving the graph.
        graph: the manifest's ``{inputs, outputs}`` of the graph.
        outputs: output names to request (default: all of the graph's).
        dtypes: ``{input name: dtype}`` where the served model differs from the manifest (TensorRT 8's INT32
            for INT64 inputs); default none.
    """

    def __init__(self, pb_utils, model_name, graph, outputs=None, dtypes=None):
        self.pb_utils = pb_utils
        self.model_name = model_name
        self.inputs = list(graph["inputs"])
        self.output_names = list(outputs or [t["name"] for t in graph["outputs"]])
        self.dtypes = dict(dtypes or {})
        # inputs that are only [batch] are served as dims [1] + reshape [] (see jetcap.triton.config)
        self.column_inputs = set(t["name"] for t in self.inputs if list(t["shape"]) == ["batch"])
        self.name = "triton-bls:{}".format(model_name)

    def infer(self, feed, outputs=None):
        """``{output: ndarray}`` of one BLS request with the arrays of ``feed`` (batch-first); ``outputs``:
        those to request (default this runner's), so the served model sends only what is read."""
        pb_utils = self.pb_utils
        names = list(outputs) if outputs is not None else self.output_names
        tensors = []
        for spec in self.inputs:
            dtype = np.dtype(self.dtypes.get(spec["name"], spec["dtype"]))
            array = np.ascontiguousarray(feed[spec["name"]], dtype=dtype)
            if spec["name"] in self.column_inputs:
                array = array.reshape(-1, 1)
            tensors.append(pb_utils.Tensor(spec["name"], array))
        request = pb_utils.InferenceRequest(model_name=self.model_name, requested_output_names=names,
                                            inputs=tensors)
        response = request.exec()
        if response.has_error():
            raise TritonModelError("model {} failed: {}".format(self.model_name, response.error().message()))
        result = {}
        for name in names:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise TritonModelError("model {} returned no output {!r}".format(self.model_name, name))
            result[name] = tensor.as_numpy()
        return result

    def decoder_session(self, initial, protocol):
        """A :class:`BlsDecoderSession` for one batch of encoded images (used by the caption pipeline)."""
        return BlsDecoderSession(self, initial, protocol)


class BlsDecoderSession(HostDecoderSession):
    """Decoder session for :mod:`jetcap.runtime.decoding` whose ``step()`` is one BLS request.

    The recurrent state and the per-image context stay in this Python model's memory as numpy
    arrays; each step sends them with the previous words to the ``decoder_step`` model, and
    ``reorder()`` selects rows for the beam search.
    """
