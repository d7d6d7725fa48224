"""Parser-compatibility rules: what one ONNX graph needs from the ONNX parser of one TensorRT release.

Each rule is a function ``rule(facts, table, where) -> [Finding]`` over :class:`jetcap.check.graph.GraphFacts`
and :class:`jetcap.check.tables.OperatorTable`; ``where`` is ``{"graph": ..., "precision": ...}``.  Rule
parameters come from the table (``table.rules``), so a release differs from another only in data.
"""
import numpy as np

from jetcap.check.graph import node_label
from jetcap.check.report import ERROR, INFO, WARNING, finding

RNN_OPS = ("LSTM", "GRU", "RNN")
POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops whose first input is not the tensor whose type decides the kernel (shape/index producers etc.)
TYPE_NEUTRAL = set(QDQ_OPS) | {"Cast", "CastLike", "Shape", "Size", "Constant", "ConstantOfShape", "Identity",
                               "NonZero", "Range", "EyeLike", "RandomUniform", "RandomNormal"}
INT64_FREE = ("INT64",)


def _trt(table):
    return "TensorRT {}".format(table.checked_name)


def _nodes(facts):
    for index, node in enumerate(facts.graph.node):
        yield index, node


# -- opset and operator support -------------------------------------------------------------------
def check_opset(facts, table, where):
    """The graph's ai.onnx opset against the release's range, naming the nodes whose op is newer."""
    findings = []
    onnx = facts.onnx
    if facts.opset > table.opset_max:
        newer = []
        for index, node in _nodes(facts):
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                since = onnx.defs.get_schema(node.op_type, facts.opset).since_version
            except Exception:  # unknown op: check_operators reports it
                continue
            if since > table.opset_max:
                newer.append((index, node, since))
        for index, node, since in newer:
            findings.append(finding(
                ERROR, "opset.node", "{} uses the opset-{} definition of {}; the {} parser reads opsets up to {}".format(
                    node_label(node, index), since, node.op_type, _trt(table), table.opset_max),
                node=node_label(node, index), op=node.op_type,
                hint="re-export with --opset {}".format(table.opset_max), **where))
        severity = ERROR if newer else WARNING
        findings.append(finding(
            severity, "opset.max", "graph declares opset {}; {} parses opsets {}..{}{}".format(
                facts.opset, _trt(table), table.opset_min, table.opset_max,
                "" if newer else " (every node here reads the same at opset {})".format(table.opset_max)),
            hint="re-export with --opset {}".format(table.opset_max), **where))
    elif facts.opset < table.opset_min:
        findings.append(finding(WARNING, "opset.min", "graph declares opset {}; {} is tested from opset {}".format(
            facts.opset, _trt(table), table.opset_min), **where))
    for domain, version in sorted(facts.domains.items()):
        if domain not in ("ai.onnx", "ai.onnx.ml") and any(n.domain == domain for n in facts.graph.node):
            findings.append(finding(ERROR, "opset.domain", "nodes from domain {!r} (version {}) need TensorRT "
                                    "plugins".format(domain, version), **where))
    return findings


def check_operators(facts, table, where):
    """Every node's operator is one the release's matrix supports."""
    findings = []
    for node, nested in facts.all_nodes():
        if node.domain not in ("", "ai.onnx"):
            continue
        supported = table.supports(node.op_type)
        if supported:
            continue
        why = "not supported by" if supported is False else "not in the operator matrix of"
        findings.append(finding(
            ERROR, "operator.unsupported", "{} is {} {}{}".format(node.op_type, why, _trt(table),
                                                                  " (inside a subgraph)" if nested else ""),
            node=node.name or None, op=node.op_type,
            hint="re-export so the operator is decomposed (an older opset), or target a newer TensorRT", **where))
    return findings


# -- data types ------------------------------------------------------------------------------------
def check_types(facts, table, where):
    """DOUBLE (refused), INT64 (cast down before 10.0), BOOL and other types an operator does not list."""
    findings = []
    io = set(facts.input_names) | set(facts.output_names)
    for name in sorted(io):
        if facts.types.get(name) == "DOUBLE":
            findings.append(finding(ERROR, "dtype.double", "graph input/output {!r} is DOUBLE; TensorRT has no "
                                    "64-bit float tensors".format(name), hint="export in float32", **where))
    int64 = []
    for index, node in _nodes(facts):
        label = node_label(node, index)
        for name in node.output:
            if facts.types.get(name) == "DOUBLE":
                findings.append(finding(
                    ERROR, "dtype.double", "computes {!r} in DOUBLE; no {} operator runs in DOUBLE (the parser would "
                    "cast it to FLOAT, clamping to +-FLT_MAX)".format(name, _trt(table)),
                    node=label, op=node.op_type, hint="export in float32 (no .double() in the model)", **where))
        for name in node.input:
            if name in facts.initializers and facts.types.get(name) == "DOUBLE":
                findings.append(finding(WARNING, "dtype.double", "initializer {!r} is DOUBLE: the parser casts it "
                                        "to FLOAT".format(name), node=label, op=node.op_type, **where))
        if node.op_type in TYPE_NEUTRAL or not node.input or not node.input[0]:
            continue
        dtype = facts.types.get(node.input[0])
        if dtype is None or dtype == "DOUBLE":
            continue
        listed = table.types(node.op_type)
        if not listed:
            continue
        if dtype == "INT64" and table.rules.get("int64") == "cast_to_int32":
            int64.append(label)
            if "INT32" in listed:
                continue
            dtype_shown = "INT64 (INT32 after the cast-down)"
        else:
            dtype_shown = dtype
        if dtype in listed or (dtype == "INT64" and "INT32" in listed):
            continue
        severity = ERROR if dtype == "BOOL" else WARNING
        findings.append(finding(
            severity, "dtype.bool" if dtype == "BOOL" else "dtype.unlisted",
            "{} takes {} input {!r}; {} lists {} for it".format(node.op_type, dtype_shown, node.input[0], _trt(table),
                                                                ", ".join(sorted(listed))),
            node=label, op=node.op_type, **where))
    int64_io = [n for n in facts.input_names + facts.output_names if facts.types.get(n) == "INT64"]
    if table.rules.get("int64") == "cast_to_int32" and (int64 or int64_io):
        findings.append(finding(
            WARNING, "dtype.int64", "{} has no INT64; cast down to INT32: {}".format(_trt(table), "; ".join(
                part for part in ("{} node(s) computing on INT64".format(len(int64)) if int64 else "",
                                  "graph I/O {}".format(", ".join(int64_io)) if int64_io else "") if part)),
            hint="fine for ids, indices and shapes below 2**31; jetcap's TensorRT runner narrows int64 inputs to int32 with a range check", **where))
    return findings


# -- Q/DQ ------------------------------------------------------------------------------------------
def check_qdq(facts, table, where):
    """Q/DQ in the form TensorRT's explicit quantization parses: symmetric, signed, per-channel on weights."""
    findings = []
    rules = table.rules["qdq"]
    quantized_types = set(rules["quantized_types"])
    for index, node in _nodes(facts):
        if node.op_type not in QDQ_OPS:
            continue
        label = node_label(node, index)
        here = dict(where, node=label, op=node.op_type)
        inputs = list(node.input) + [""] * (3 - len(node.input))
        data, scale_name, zero_name = inputs[:3]
        if not zero_name:
            if rules["zero_point_required"]:
                findings.append(finding(ERROR, "qdq.zero_point_missing", "no zero-point input; {} needs all three "
                                        "inputs with a zero point of 0".format(_trt(table)),
                                        hint="quantize with an explicit int8 zero point", **here))
        else:
            zero_type = facts.types.get(zero_name)
            stored = node.op_type == "DequantizeLinear" and data in facts.initializers
            if zero_type and zero_type not in quantized_types and not stored:
                findings.append(finding(ERROR, "qdq.dtype", "quantizes to {}; {} quantizes to {} only".format(
                    zero_type, _trt(table), ", ".join(sorted(quantized_types))),
                    hint="quantize activations and weights as signed INT8 (QuantType.QInt8)", **here))
            zero = facts.constant(zero_name)
            if zero is not None and np.any(zero != 0):
                findings.append(finding(ERROR, "qdq.zero_point", "asymmetric quantization: zero point {} (must be 0 "
                                        "everywhere for {})".format(_first_nonzero(zero), _trt(table)),
                                        hint="quantize symmetrically (ActivationSymmetric / WeightSymmetric)", **here))
        if node.op_type == "DequantizeLinear" and data in facts.initializers:
            data_type = facts.types.get(data)
            if data_type not in quantized_types:
                findings.append(finding(
                    ERROR, "qdq.dtype", "dequantizes the {} initializer {!r}; {} dequantizes only {} (a quantized "
                    "bias is refused: 'only activation types allowed')".format(
                        data_type, data, _trt(table), ", ".join(sorted(quantized_types))),
                    hint="keep biases float (quantize_static extra_options QuantizeBias=False)", **here))
        scale = facts.constant(scale_name)
        if scale is None:
            continue
        if facts.types.get(scale_name) not in ("FLOAT", "FLOAT16", "BFLOAT16") or (
                facts.types.get(scale_name) != "FLOAT" and table.release < (10,)):
            findings.append(finding(ERROR, "qdq.scale", "scale {!r} is {}; {} reads FLOAT scales".format(
                scale_name, facts.types.get(scale_name), _trt(table)), **here))
        if np.any(np.asarray(scale) <= 0):
            findings.append(finding(ERROR, "qdq.scale", "scale {!r} has values <= 0".format(scale_name), **here))
        if np.size(scale) > 1:
            findings.extend(_per_channel(facts, table, node, data, scale, here, rules))
    return findings


def _per_channel(facts, table, node, data, scale, here, rules):
    findings = []
    if facts.opset < rules["min_opset"]:
        findings.append(finding(ERROR, "qdq.opset", "per-channel Q/DQ needs opset {} (the axis attribute); graph "
                                "is opset {}".format(rules["min_opset"], facts.opset), **here))
    source = data
    if node.op_type == "DequantizeLinear" and source in facts.producers and \
            facts.producers[source].op_type == "QuantizeLinear":
        source = facts.producers[source].input[0]
    if not facts.is_constant(data) and not facts.is_constant(source) and not rules["per_channel_activations"]:
        findings.append(finding(ERROR, "qdq.per_channel", "per-channel scales on the activation {!r}; {} quantizes "
                                "activations per tensor only".format(data, _trt(table)), **here))
    shape = facts.shape(data)
    axis = facts.attr(node, "axis", 1)
    if shape is not None and shape:
        axis = axis + len(shape) if axis < 0 else axis
        channels = shape[axis] if 0 <= axis < len(shape) else None
        if isinstance(channels, int) and channels != np.size(scale):
            findings.append(finding(ERROR, "qdq.axis", "{} scales for axis {} of size {}".format(
                np.size(scale), axis, channels), **here))
    return findings


def _first_nonzero(values):
    flat = np.asarray(values).ravel()
    return int(flat[np.nonzero(flat)[0][0]])


# -- recurrent layers ------------------------------------------------------------------------------
def check_recurrent(facts, table, where):
    """LSTM/GRU/RNN: directions, activations, input_forget, layout, and INT8 (Q/DQ-fed) recurrent layers."""
    findings = []
    rules = table.rules["rnn"]
    allowed = set(rules["activations"])
    for index, node in _nodes(facts):
        if node.op_type not in RNN_OPS:
            continue
        label = node_label(node, index)
        here = dict(where, node=label, op=node.op_type)
        direction = facts.attr(node, "direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            findings.append(finding(ERROR, "rnn.direction", "direction {!r}".format(direction), **here))
        if node.op_type == "LSTM" and facts.attr(node, "input_forget", 0) and not rules["input_forget"]:
            findings.append(finding(ERROR, "rnn.input_forget", "coupled input/forget gates (input_forget=1) are not "
                                    "parsed by {}".format(_trt(table)), **here))
        if facts.attr(node, "layout", 0) and not rules["layout"]:
            findings.append(finding(ERROR, "rnn.layout", "batch-first layout=1 is not parsed by {}".format(_trt(table)),
                                    hint="export with batch_first handled by a Transpose (layout 0)", **here))
        activations = facts.attr(node, "activations", None)
        if activations:
            unknown = sorted(set(activations) - allowed)
            if unknown:
                findings.append(finding(ERROR, "rnn.activations", "activations {} are not parsed by {}".format(
                    ", ".join(unknown), _trt(table)), **here))
            if direction == "bidirectional" and rules["same_activations_both_directions"]:
                half = len(activations) // 2
                if activations[:half] != activations[half:]:
                    findings.append(finding(ERROR, "rnn.activations", "bidirectional with different activations per "
                                            "direction ({} vs {})".format(activations[:half], activations[half:]),
                                            **here))
        quantized = [name for name in node.input[:3]
                     if name in facts.producers and facts.producers[name].op_type == "DequantizeLinear"]
        if quantized:
            if rules["int8"] == "refused":
                findings.append(finding(
                    ERROR, "rnn.int8", "INT8 {}: inputs {} come from DequantizeLinear; {} has no INT8 recurrent "
                    "layers".format(node.op_type, ", ".join(quantized), _trt(table)),
                    hint="keep recurrent layers float (exclude them from quantization)", **here))
            else:
                findings.append(finding(INFO, "rnn.int8", "Q/DQ-fed {} runs in float ({} has no INT8 recurrent "
                                        "kernels)".format(node.op_type, _trt(table)), **here))
    return findings


# -- pooling, resize, scatter ----------------------------------------------------------------------
def check_pooling(facts, table, where):
    """Pooling kernels of 2 or 3 spatial axes (1 on a rank-3 input), dilations 1, no MaxPool indices."""
    findings = []
    rules = table.rules
    for index, node in _nodes(facts):
        if node.op_type not in POOL_OPS:
            continue
        here = dict(where, node=node_label(node, index), op=node.op_type)
        kernel = facts.attr(node, "kernel_shape", []) or []
        rank = facts.rank(node.input[0])
        one_d = len(kernel) == 1 and rules["pool_1d_via_rank3"] and rank in (3, None)
        if len(kernel) not in rules["pool_kernel_ranks"] and not one_d:
            findings.append(finding(ERROR, "pool.rank", "{}-D pooling; {} pools over 2 or 3 spatial axes{}".format(
                len(kernel), _trt(table), " (1 on a rank-3 input)" if rules["pool_1d_via_rank3"] else ""), **here))
        dilations = facts.attr(node, "dilations", []) or []
        if any(d != 1 for d in dilations) and not rules["pool_dilations"]:
            findings.append(finding(ERROR, "pool.dilations", "dilations {} (only 1 is parsed)".format(dilations),
                                    **here))
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            findings.append(finding(ERROR, "pool.indices", "MaxPool Indices output is not supported", **here))
    return findings


def check_resize(facts, table, where):
    """Resize modes, coordinate transformations and how many axes a linear/cubic resize may scale."""
    findings = []
    rules = table.rules["resize"]
    for index, node in _nodes(facts):
        if node.op_type not in ("Resize", "Upsample"):
            continue
        here = dict(where, node=node_label(node, index), op=node.op_type)
        mode = facts.attr(node, "mode", "nearest")
        if mode not in rules["modes"]:
            findings.append(finding(ERROR, "resize.mode", "mode {!r}; {} resizes with {}".format(
                mode, _trt(table), ", ".join(rules["modes"])),
                hint="use linear (bilinear) interpolation, or target a newer TensorRT", **here))
        coordinate = facts.attr(node, "coordinate_transformation_mode", "half_pixel")
        if node.op_type == "Resize" and facts.opset >= 11 and coordinate not in rules["coordinate_modes"]:
            findings.append(finding(ERROR, "resize.coordinates", "coordinate_transformation_mode {!r} is not parsed "
                                    "by {}".format(coordinate, _trt(table)), **here))
        if coordinate == "tf_half_pixel_for_nn" and table.release < (8, 5) and \
                facts.attr(node, "nearest_mode", "round_prefer_floor") != "round_prefer_floor":
            findings.append(finding(ERROR, "resize.nearest_mode", "tf_half_pixel_for_nn needs nearest_mode "
                                    "round_prefer_floor in {}".format(_trt(table)), **here))
        if facts.attr(node, "antialias", 0) and not rules["antialias"]:
            findings.append(finding(ERROR, "resize.antialias", "antialias=1 is not supported", **here))
        policy = facts.attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy not in rules["aspect_ratio_policies"]:
            findings.append(finding(ERROR, "resize.aspect_ratio", "keep_aspect_ratio_policy {!r}".format(policy),
                                    **here))
        scaled = _scaled_axes(facts, node)
        limit = {"linear": rules["linear_max_dims"], "cubic": rules["cubic_max_dims"]}.get(mode)
        if scaled is not None and limit and scaled:
            rank = len(scaled)
            outer = [axis for axis in range(rank - limit) if scaled[axis]]
            if outer:
                findings.append(finding(
                    ERROR, "resize.axes", "{} resize of {} axes (axis {} scaled); {} interpolates {} only on the {} "
                    "innermost axes".format(mode, sum(scaled), outer[0], _trt(table), mode, limit), **here))
    return findings


def _scaled_axes(facts, node):
    """Per axis, whether this Resize changes its size (None when scales/sizes are computed at run time)."""
    inputs = list(node.input)
    if node.op_type == "Upsample" or facts.opset < 11:
        scales = facts.constant(inputs[1]) if len(inputs) > 1 else None
        return None if scales is None else [float(s) != 1.0 for s in np.ravel(scales)]
    scales = facts.constant(inputs[2]) if len(inputs) > 2 and inputs[2] else None
    if scales is not None and np.size(scales):
        return [float(s) != 1.0 for s in np.ravel(scales)]
    sizes = facts.constant(inputs[3]) if len(inputs) > 3 and inputs[3] else None
    shape = facts.shape(inputs[0])
    if sizes is None or shape is None or len(shape) != np.size(sizes):
        return None
    return [not (isinstance(dim, int) and dim == int(size)) for dim, size in zip(shape, np.ravel(sizes))]


def check_scatter(facts, table, where):
    """ScatterND / ScatterElements with a reduction other than none."""
    findings = []
    for index, node in _nodes(facts):
        if node.op_type not in ("ScatterND", "ScatterElements"):
            continue
        reduction = facts.attr(node, "reduction", "none")
        refused = node.op_type == "ScatterND" or table.release < (10,)
        if reduction != "none" and refused and not table.rules["scatter_reduction"]:
            findings.append(finding(ERROR, "scatter.reduction", "reduction {!r} is not parsed by {}".format(
                reduction, _trt(table)), node=node_label(node, index), op=node.op_type, **where))
    return findings


RULES = (check_opset, check_operators, check_types, check_qdq, check_recurrent, check_pooling, check_resize,
         check_scatter)


def check_graph(facts, table, where):
    """Every rule of :data:`RULES` over one graph; a list of findings."""
    findings = []
    for rule in RULES:
        findings.extend(rule(facts, table, where))
    return findings
