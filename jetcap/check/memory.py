"""Memory plan of a bundle on a Jetson: will the engine build, and will it run, in the RAM left by the OS?

Every Jetson shares one RAM between CPU and GPU, so everything below is counted against the same budget
(device RAM minus what the OS keeps).  The numbers are estimates, and say so:

* weights: the bytes of the initializers of the ONNX file the build parses for that precision (halved
  for float tensors when FP16 is a builder flag on an FP32 file, as before TensorRT 11);
* activations: the peak of live intermediate tensors walking the graph in order, at the **max** profile
  (ONNX shape inference with every dynamic axis at its max).  TensorRT fuses and reuses memory, so this
  bounds its activation memory from above for the unfused graph;
* context: CUDA context + TensorRT, plus cuBLAS and cuDNN when their tactic sources are on.  Measured on a
  Jetson Nano with JetPack 4.6.1 / TensorRT 8.2 and published in TensorRT's MemUsageChange log lines
  (triton-inference-server/server#4087: cuBLAS +158 MB, cuDNN +241 MB; ultralytics/ultralytics#14751:
  cuDNN +241 MB); the CUDA-context share and later JetPacks are estimates;
* build peak: context + the parsed ONNX weights + the engine's weights + workspace + activations (the
  builder times tactics on real buffers); runtime: context + every graph's engine weights, activations
  and I/O buffers (the bundle's graphs run side by side).
"""
import collections

import numpy as np

from jetcap.check.graph import type_name

MB = 1e6
# TensorRT release (major, minor) -> context estimate in MB: (cuda + tensorrt, cublas, cudnn, on by default)
CONTEXT_MB = (
    ((8, 0), (250, 160, 240, True)),   # JetPack 4.6.x, CUDA 10.2: cuBLAS and cuDNN tactic sources on by default
    ((8, 5), (300, 160, 250, False)),  # JetPack 5.1, CUDA 11.4: cuDNN/cuBLAS loaded only when tactics use them
    ((10, 0), (250, 160, 250, False)),  # JetPack 6, CUDA 12 lazy module loading
)
ITEM_SIZE = {"FLOAT": 4, "FLOAT16": 2, "BFLOAT16": 2, "DOUBLE": 8, "INT64": 8, "INT32": 4, "INT8": 1, "UINT8": 1,
             "BOOL": 1, "INT16": 2, "UINT16": 2, "FLOAT8E4M3FN": 1, "INT4": 1}
BuildMemory = collections.namedtuple("BuildMemory", ["weights", "activations", "io", "unknown"])


def context_mb(version, tactic_libraries=None):
    """Estimated CUDA + TensorRT (+ cuBLAS/cuDNN) memory of one process, MB, for TensorRT ``version``.

    Args:
        version: TensorRT version tuple.
        tactic_libraries: True / False to count cuBLAS + cuDNN or not; None: that release's default.
    Returns:
        ``(context_mb, cublas_plus_cudnn_mb, libraries_counted)``.
    """
    entry = CONTEXT_MB[0][1]
    for release, values in CONTEXT_MB:
        if version[:2] >= release:
            entry = values
    base, cublas, cudnn, default_on = entry
    if tactic_libraries is None:
        tactic_libraries = default_on
    return base + (cublas + cudnn if tactic_libraries else 0), cublas + cudnn, bool(tactic_libraries)


def graph_memory(onnx, model, max_axes, half_floats=False):
    """Weights, peak activations and I/O bytes of ``model`` with dynamic axes at ``max_axes``.

    Args:
        onnx: the onnx module.
        model: an ``onnx.ModelProto`` (not modified).
        max_axes: ``{axis name: max size}``; a dynamic dim without a size here stays unknown.
        half_floats: count FLOAT tensors as 2 bytes (FP16 builder flag on an FP32 file).
    Returns:
        :class:`BuildMemory` (bytes; ``unknown``: intermediate tensors whose size shape inference left open).
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializer_names = set(t.name for t in fixed.graph.initializer)
    for value in fixed.graph.input:
        if value.name in initializer_names:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in max_axes:
                dim.dim_value = int(max_axes[dim.dim_param])
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:
        inferred = fixed

    def nbytes(value):
        tensor = value.type.tensor_type
        dtype = type_name(onnx, tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if any(d is None for d in dims):
            return None
        size = ITEM_SIZE.get(dtype, 4)
        if half_floats and dtype == "FLOAT":
            size = 2
        return int(np.prod(dims, dtype=np.int64)) * size

    weights = 0
    for tensor in inferred.graph.initializer:
        dtype = type_name(onnx, tensor.data_type)
        size = 2 if half_floats and dtype == "FLOAT" else ITEM_SIZE.get(dtype, 4)
        weights += int(np.prod(tensor.dims, dtype=np.int64)) * size
    values = dict((v.name, v) for v in list(inferred.graph.value_info) + list(inferred.graph.output))
    io = 0
    for value in list(inferred.graph.input) + list(inferred.graph.output):
        if value.name not in initializer_names:
            io += nbytes(value) or 0
    last_use = {}
    for index, node in enumerate(inferred.graph.node):
        for name in node.input:
            last_use[name] = index
    outputs = set(v.name for v in inferred.graph.output)
    live, peak, unknown = {}, 0, 0
    for index, node in enumerate(inferred.graph.node):
        for name in node.output:
            if not name or name in outputs:
                continue
            size = nbytes(values[name]) if name in values else None
            if size is None:
                unknown += 1
                size = 0
            live[name] = size
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, index) <= index:
                del live[name]
    return BuildMemory(weights, peak, io, unknown)


def plan_memory(device, version, per_precision, workspace_mb, max_axes, onnx_bytes, tactic_libraries=None,
                os_reserve_mb=None, ram_mb=None):
    """The memory plan dict of a bundle on ``device`` (see :class:`jetcap.check.targets.Device`).

    Args:
        device: the Jetson module.
        version: TensorRT version tuple.
        per_precision: ``{precision: [BuildMemory per graph]}``.
        workspace_mb: builder workspace limit.
        max_axes: ``{axis: max}`` the activations were estimated at (reported).
        onnx_bytes: ``{precision: [initializer bytes of each parsed ONNX file]}`` (held while building).
        tactic_libraries, os_reserve_mb, ram_mb: overrides of the device defaults (None: defaults).
    Returns:
        a dict with device facts, ``context_mb``, ``budget_mb`` and per precision ``weights_mb``,
        ``activations_mb``, ``io_mb``, ``build_peak_mb``, ``runtime_mb``, ``fits_build``, ``fits_runtime``,
        ``verdict`` and ``advice`` (list of str).
    """
    ram = ram_mb if ram_mb is not None else device.ram_mb
    reserve = os_reserve_mb if os_reserve_mb is not None else device.os_reserve_mb
    budget = ram - reserve
    context, libraries, libraries_on = context_mb(version, tactic_libraries)
    entries = []
    for precision, graphs in per_precision.items():
        weights = sum(g.weights for g in graphs) / MB
        activations = sum(g.activations for g in graphs) / MB
        io = sum(g.io for g in graphs) / MB
        build_peak = max(context + (parsed + g.weights) / MB + workspace_mb + g.activations / MB
                         for g, parsed in zip(graphs, onnx_bytes[precision]))
        runtime = context + weights + activations + io
        advice = []
        no_libraries = "build with `jetcap build --no-tactic-libraries` (no cuBLAS/cuDNN): saves about {} MB".format(
            libraries)
        fits_build, fits_runtime = build_peak <= budget, runtime <= budget
        if not fits_runtime or runtime > 0.85 * budget:
            advice.append("export a smaller max batch / sequence length (activations grow with the max profile)")
            if precision == "fp32":
                advice.append("run the fp16 variant (half the weights and activations)")
            if libraries_on:
                advice.append(no_libraries)
        if not fits_build or build_peak > 0.85 * budget:
            advice.append("build with a smaller --workspace-mb (now {})".format(workspace_mb))
            if libraries_on:
                advice.append(no_libraries)
            advice.append("stop the desktop (headless boot frees about 1 GB) and add swap for the build")
        verdict = "fits" if fits_build and fits_runtime else (
            "build does NOT fit" if not fits_build and fits_runtime else
            "runtime does NOT fit" if fits_build else "build and runtime do NOT fit")
        entries.append({
            "precision": precision, "weights_mb": round(weights, 2), "activations_mb": round(activations, 2),
            "io_mb": round(io, 2), "build_peak_mb": round(build_peak, 1), "runtime_mb": round(runtime, 1),
            "fits_build": fits_build, "fits_runtime": fits_runtime, "verdict": verdict,
            "advice": sorted(set(advice), key=advice.index),
            "unknown_tensors": sum(g.unknown for g in graphs),
        })
    return {"device": device.title, "ram_mb": ram, "os_reserve_mb": reserve, "budget_mb": budget,
            "context_mb": context, "tactic_libraries_mb": libraries, "tactic_libraries_on": libraries_on,
            "workspace_mb": workspace_mb, "max_axes": dict(max_axes), "precisions": entries}
