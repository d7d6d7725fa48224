"""Exact rewrites of exported graphs that runtimes execute faster (needs onnx; run at export).

The one rewrite so far: an **attention-weighted sum** written the usual Show-Attend-Tell way,
``(features * alpha.unsqueeze(2)).sum(dim=1)``, exports as ``Mul`` (broadcasting a (B, P, 1) weight
over (B, P, C) features) then ``ReduceSum`` over the pixels.  ONNX Runtime runs that as an elementwise
pass writing a (B, P, C) temporary and a reduction reading it back: 107 + 29 us of a 1.3 ms decoder step
at 7x7x1280 features (measured on the benchmark captioner, 2 threads).  The same sum is the matrix
product ``alpha.unsqueeze(1) @ features`` -> (B, 1, C), one ``MatMul`` with no temporary.  The rewrite
is exact in real arithmetic; in float32 only the order of the P additions changes, which the export's
numeric check against PyTorch then covers like any other difference.

Attention pooling written ``(x * weights).sum(dim=1)`` with (B, T, 1) weights (a scoring layer with
one output, softmaxed over T) is the same sum: there the weights are transposed to (B, 1, T).

It applies only where the shapes prove the two equal: features of rank 3, weights of rank 2 unsqueezed
at their last axis or of rank 3 with a last axis of 1, the sum over axis 1 of the product, the pixel dimensions of both the same (same
size or the same named axis: a weight broadcast over pixels is left alone), and the product read by
nothing else.  Opset 11-12 (axes as attributes) and 13+ (axes as inputs) graphs are both handled.
"""
from typing import List, Optional

import numpy as np

from jetcap.check.graph import GraphFacts
from jetcap.util.lazy import require


# the rewritten MatMul's node name ends so: the FP16 variant keeps it in FP32, as it keeps reductions
WEIGHTED_SUM_SUFFIX = "/as_matmul"
ONNX_DOMAINS = ("", "ai.onnx")


def is_weighted_sum(node) -> bool:
    """Whether ``node`` is a weighted sum this module wrote as a MatMul."""
    return node.op_type == "MatMul" and node.name.endswith(WEIGHTED_SUM_SUFFIX)


def in_weighted_sum(node) -> bool:
    """Whether ``node`` is one of the nodes that compute a rewritten weighted sum (the MatMul and the
    Unsqueeze / Transpose / Squeeze around it): the FP16 variant keeps them all in FP32."""
    return is_weighted_sum(node) or WEIGHTED_SUM_SUFFIX + "/" in node.name


def _bodies(graph):
    """The subgraphs (If / Loop / Scan bodies) of ``graph``'s nodes, at any depth."""
    for node in graph.node:
        for attribute in node.attribute:
            for body in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield body
                for inner in _bodies(body):
                    yield inner


def _subgraph_reads(graph) -> set:
    """Names read by the nodes of ``graph``'s subgraphs: a body reads outer values by name without
    listing them as its node's inputs."""
    return set(name for body in _bodies(graph) for node in body.node for name in node.input)


def _subgraph_names(graph) -> set:
    """Every name a subgraph reads or defines (its inputs, outputs, initializers, node outputs): a new
    outer value must not shadow one of them."""
    names = _subgraph_reads(graph)
    for body in _bodies(graph):
        names.update(v.name for v in list(body.input) + list(body.output) + list(body.value_info))
        names.update(i.name for i in body.initializer)
        names.update(o for node in body.node for o in node.output)
    return names


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


class _Graph(GraphFacts):
    """The pre-flight's lookups over one graph (:class:`jetcap.check.graph.GraphFacts`), and what a rewrite
    needs besides: who reads a value (subgraphs and graph outputs too) and names nothing uses yet.  An
    initializer that is also a graph input is a default the caller may replace: not a constant here."""

    def __init__(self, model):
        GraphFacts.__init__(self, model)
        graph = model.graph
        graph_inputs = set(i.name for i in graph.input)
        self.initializers = dict((name, t) for name, t in self.initializers.items() if name not in graph_inputs)
        self.outputs = set(self.output_names)
        self.inner_reads = _subgraph_reads(graph)
        self.taken = (graph_inputs | self.outputs | set(i.name for i in graph.initializer) | set(self.producers)
                      | set(v.name for v in graph.value_info) | _subgraph_names(graph))

    def readers(self, name: str) -> int:
        """How many nodes read ``name``: this graph's, plus one when a subgraph or the graph's outputs do."""
        return len(self.consumers.get(name, [])) + (name in self.inner_reads) + (name in self.outputs)

    def fresh(self, base: str) -> str:
        """A value name starting with ``base`` that nothing in the graph uses yet (then taken)."""
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = "{}_{}".format(base, index)
        self.taken.add(name)
        return name

    def constant_ints(self, name: str) -> Optional[List[int]]:
        value = self.constant(name)
        return None if value is None else [int(v) for v in np.reshape(value, -1)]

    def axes(self, node, opset_with_inputs: int) -> Optional[List[int]]:
        """A node's ``axes``: its attribute before ``opset_with_inputs``, its second input from then on."""
        if self.opset >= opset_with_inputs:
            return self.constant_ints(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        axes = self.attr(node, "axes")
        return None if axes is None else list(axes)


def _same_dim(a, b) -> bool:
    return a is not None and b is not None and a == b


def _match(graph: _Graph, reduce_node):
    """``(mul, unsqueeze, weights, features, keepdims)`` when ``reduce_node`` sums a weighted product over
    pixels that a MatMul computes equally, else None.  ``unsqueeze`` is the node that gave (B, P) weights
    their last axis, or None where the weights are (B, P, 1) already (attention pooling whose scoring
    layer has one output)."""
    if reduce_node.domain not in ONNX_DOMAINS or graph.axes(reduce_node, 13) not in ([1], [-2]):
        return None
    mul = graph.producers.get(reduce_node.input[0])
    if mul is None or mul.op_type != "Mul" or mul.domain not in ONNX_DOMAINS:
        return None
    if graph.readers(mul.output[0]) != 1:  # the product itself is read elsewhere (a body, an output)
        return None
    for weighted, features in ((mul.input[1], mul.input[0]), (mul.input[0], mul.input[1])):
        f_dims = graph.shape(features)
        if f_dims is None or len(f_dims) != 3:
            continue
        unsqueeze = graph.producers.get(weighted)
        if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze" and unsqueeze.domain in ONNX_DOMAINS:
            weights, w_dims = unsqueeze.input[0], graph.shape(unsqueeze.input[0])
            if w_dims is None or len(w_dims) != 2 or graph.axes(unsqueeze, 13) not in ([2], [-1]):
                continue
        else:
            unsqueeze, weights, w_dims = None, weighted, graph.shape(weighted)
            if w_dims is None or len(w_dims) != 3 or w_dims[2] != 1:
                continue
        if not _same_dim(w_dims[1], f_dims[1]):  # a weight broadcast over the pixels is another sum
            continue
        return mul, unsqueeze, weights, features, int(graph.attr(reduce_node, "keepdims", 1))
    return None


def weighted_sums_as_matmul(model) -> int:
    """Rewrite every attention-weighted sum of ``model`` (an ``onnx.ModelProto``, changed in place) as a
    MatMul (see the module docstring); returns how many were rewritten."""
    onnx = require("onnx")
    helper = onnx.helper
    opset = _opset(model)
    if opset < 11:
        return 0
    rewritten = 0
    while True:
        graph = _Graph(model)
        found = None
        for node in model.graph.node:
            if node.op_type == "ReduceSum" and node.input:
                match = _match(graph, node)
                if match is not None:
                    found = (node, match)
                    break
        if found is None:
            return rewritten
        reduce_node, (mul, unsqueeze, weights, features, keepdims) = found
        prefix = (reduce_node.name or reduce_node.output[0]) + WEIGHTED_SUM_SUFFIX
        new_nodes = []
        row, product, axes = (graph.fresh(prefix + part) for part in ("/weights_row", "/product", "/axis_1"))
        if opset >= 13 and not (keepdims and unsqueeze is None):
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
        if unsqueeze is None:  # (B, P, 1) -> (B, 1, P)
            new_nodes.append(helper.make_node("Transpose", [weights], [row], name=prefix + "/Transpose", perm=[0, 2, 1]))
        elif opset >= 13:
            new_nodes.append(helper.make_node("Unsqueeze", [weights, axes], [row], name=prefix + "/Unsqueeze"))
        else:
            new_nodes.append(helper.make_node("Unsqueeze", [weights], [row], name=prefix + "/Unsqueeze", axes=[1]))
        # (B, 1, P) @ (B, P, C) -> (B, 1, C): what the sum with keepdims gives; squeezed otherwise
        if keepdims:
            new_nodes.append(helper.make_node("MatMul", [row, features], [reduce_node.output[0]], name=prefix))
        else:
            new_nodes.append(helper.make_node("MatMul", [row, features], [product], name=prefix))
            if opset >= 13:
                new_nodes.append(helper.make_node("Squeeze", [product, axes], [reduce_node.output[0]],
                                                  name=prefix + "/Squeeze"))
            else:
                new_nodes.append(helper.make_node("Squeeze", [product], [reduce_node.output[0]],
                                                  name=prefix + "/Squeeze", axes=[1]))
        nodes = list(model.graph.node)
        at = nodes.index(mul)
        drop = [mul, reduce_node]
        if unsqueeze is not None and graph.readers(unsqueeze.output[0]) == 1:
            drop.append(unsqueeze)
        kept = [n for n in nodes[:at] if n not in drop] + new_nodes + [n for n in nodes[at:] if n not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        _drop_stale_value_info(model, [mul.output[0]] + ([unsqueeze.output[0]] if unsqueeze in drop else []))
        _drop_unread_constants(model, [name for node in drop for name in node.input[1:]])
        rewritten += 1


def _drop_stale_value_info(model, names) -> None:
    stale = [v for v in model.graph.value_info if v.name in names]
    for value in stale:
        model.graph.value_info.remove(value)


def _drop_unread_constants(model, names) -> None:
    """Remove the initializers and Constant nodes among ``names`` (the removed nodes' axes) that nothing
    reads any more, so the bundle carries no dead values (other runtimes warn about them)."""
    graph = model.graph
    read = set(n for node in graph.node for n in node.input) | _subgraph_reads(graph) | set(o.name for o in graph.output)
    inputs = set(i.name for i in graph.input)
    for name in set(names) - read - inputs:
        for initializer in [i for i in graph.initializer if i.name == name]:
            graph.initializer.remove(initializer)
        for node in [n for n in graph.node if n.op_type == "Constant" and list(n.output) == [name]]:
            graph.node.remove(node)
        _drop_stale_value_info(model, [name])
