"""The runner interface every backend implements (Python 3.6).

A runner wraps one graph.  The base class checks state, input names, ranks, fixed dimensions and
dtypes once, so a backend only implements ``activate_impl`` / ``infer_impl`` / ``deactivate_impl``.
Runners are context managers::

    with OnnxRuntimeRunner(path, io_spec) as runner:
        outputs = runner.infer({"images": batch})
"""
import numpy as np

from jetcap.errors import UsageError


class Runner(object):
    """Base class of graph runners.

    Args:
        name: a readable name for messages (e.g. ``"onnxruntime:encoder[fp16]"``).
        io_spec: the manifest's ``{inputs: [{name, dtype, shape}], outputs: [...]}`` of the graph.
    """

    backend = "base"

    def __init__(self, name, io_spec):
        self.name = name
        self.io_spec = io_spec
        self.is_active = False

    @property
    def input_names(self):
        return [t["name"] for t in self.io_spec["inputs"]]

    @property
    def output_names(self):
        return [t["name"] for t in self.io_spec["outputs"]]

    def activate(self):
        """Load what the runner needs (session, engine, buffers)."""
        if self.is_active:
            return self
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self):
        """Release the session/engine; the runner can be activated again."""
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, exc_type, exc, tb):
        self.deactivate()

    def infer(self, feed, outputs=None):
        """Run the graph on ``feed`` ``{input_name: ndarray}`` -> ``{output_name: ndarray}``.

        ``outputs``: the outputs to return (default all).  A backend that keeps its outputs elsewhere
        (TensorRT on the GPU, a Triton model) copies only these: a decoder step's top-k search needs a
        few numbers per row, not the whole distribution.
        """
        if not self.is_active:
            raise RuntimeError("{} is not active; use it as a context manager or call activate()".format(self.name))
        self.check_feed(feed)
        return self.infer_impl(feed, self.check_outputs(outputs))

    def check_outputs(self, outputs):
        """The output names to return (see :func:`select_outputs`)."""
        return select_outputs(self.name, self.output_names, outputs)

    def check_feed(self, feed):
        """UsageError when names, ranks, fixed dims or dtypes of ``feed`` do not fit the graph."""
        expected = set(self.input_names)
        given = set(feed)
        if expected != given:
            raise UsageError("{}: inputs {} expected, got {}".format(self.name, sorted(expected), sorted(given)))
        for tensor in self.io_spec["inputs"]:
            array = feed[tensor["name"]]
            if not isinstance(array, np.ndarray):
                raise UsageError("{}: input {} must be a numpy array".format(self.name, tensor["name"]))
            if array.ndim != len(tensor["shape"]):
                raise UsageError("{}: input {} has rank {}, expected shape {}".format(
                    self.name, tensor["name"], array.ndim, tensor["shape"]))
            for got, want in zip(array.shape, tensor["shape"]):
                if isinstance(want, int) and got != want:
                    raise UsageError("{}: input {} has shape {}, expected {}".format(
                        self.name, tensor["name"], array.shape, tensor["shape"]))
            if array.dtype != np.dtype(tensor["dtype"]):
                raise UsageError("{}: input {} has dtype {}, expected {}".format(
                    self.name, tensor["name"], array.dtype, tensor["dtype"]))

    # -- to implement ---------------------------------------------------------------------------
    def activate_impl(self):
        raise NotImplementedError

    def infer_impl(self, feed, outputs):
        raise NotImplementedError

    def deactivate_impl(self):
        raise NotImplementedError



def select_outputs(name, output_names, outputs):
    """``outputs`` as a list (``output_names``, all of them, for None); UsageError naming the graph ``name``
    for an output it does not have.  Every runner-like object (PyTorch's for the reference decode too)
    answers a request for outputs the same way."""
    if outputs is None:
        return list(output_names)
    outputs = list(outputs)
    unknown = sorted(set(outputs) - set(output_names))
    if unknown:
        raise UsageError("{}: no outputs {} (has {})".format(name, unknown, list(output_names)))
    return outputs

def io_mismatches(io_spec, inputs, outputs, exact=True):
    """How a graph's I/O as a backend reads it (``inputs`` / ``outputs``: ``[(name, shape)]``) differs from
    the manifest's ``io_spec`` (a list of one-line problems; empty when it matches).

    Every manifest tensor must be there with its rank, and no fixed dimension may differ from a fixed
    dimension of the manifest.  ``exact`` (the gate's ``io.names_shapes``): also the same names in the same
    order, and no dynamic axis frozen to a size.  Without it (the check at load) the graph may have more
    outputs, in any order: what matters there is that the file is the graph the manifest describes.
    """
    problems = []
    for side, actual in (("inputs", inputs), ("outputs", outputs)):
        names, wanted = [name for name, _ in actual], [tensor["name"] for tensor in io_spec[side]]
        unexpected = exact and names != wanted or (side == "inputs" and sorted(names) != sorted(wanted))
        if unexpected or any(name not in names for name in wanted):
            problems.append("{} are {}, the manifest says {}".format(side, names, wanted))
            continue
        shapes = dict(actual)
        for tensor in io_spec[side]:
            got, want = shapes[tensor["name"]], tensor["shape"]
            if got is None or want is None:
                continue
            if len(got) != len(want):
                problems.append("{} has rank {}, the manifest says {}".format(tensor["name"], len(got), len(want)))
                continue
            for axis, (g, w) in enumerate(zip(got, want)):
                if exact and isinstance(w, str) and isinstance(g, int) and g > 0:
                    problems.append("dynamic axis {!r} of {} is fixed to {} in the graph".format(w, tensor["name"], g))
                elif isinstance(w, int) and isinstance(g, int) and g != w:
                    problems.append("{} axis {} is {}, the manifest says {}".format(tensor["name"], axis, g, w))
    return problems
