"""The machine's matrix-multiply throughput, measured: numpy's BLAS and ONNX Runtime, or torch on a GPU
(Python 3.6).

The "limit" the benchmark compares each graph with: a large square GEMM gives the peak rate of this
CPU at the thread count used; a GEMM of the exact shape of a graph's largest matmul at batch 1 gives
what one call of that (memory-bound, matrix-vector) shape can reach.  Run in a child process so the
BLAS thread count can be fixed through the environment before numpy loads.
"""
import numpy as np

from jetcap.bench.timing import summarize, time_calls
from jetcap.errors import MissingDependencyError
from jetcap.util.lazy import require

PEAK_SIZE = 1024


def _rate(flops, durations):
    stats = summarize(durations)
    return {"gflops": flops / (stats["p50_ms"] * 1e-3) / 1e9, "p50_ms": stats["p50_ms"], "n": stats["n"]}


def numpy_gemm(m, k, n, repeat=10, warmup=2, seed=0):
    """``{gflops, p50_ms, n, shape}`` of float32 ``(m, k) @ (k, n)`` with numpy's BLAS."""
    rng = np.random.RandomState(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), dtype=np.float32)
    result = _rate(2.0 * m * k * n, time_calls(lambda i: np.dot(a, b, out=out), repeat, warmup))
    result["shape"] = [m, k, n]
    return result


def matmul_model(k, n, seed=0):
    """A one-node ONNX graph ``y = x @ W`` with ``x`` (M, k) (M dynamic) and the weight ``W`` (k, n)."""
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    weight = np.random.RandomState(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="jetcap-bench")
    model.ir_version = 7
    return model


def onnxruntime_gemm(m, k, n, threads=None, repeat=10, warmup=2, seed=0):
    """``{gflops, p50_ms, n, shape}`` of float32 ``(m, k) @ (k, n)`` as one ONNX Runtime MatMul node
    (the weight an initializer, as in the exported graphs; per-call overhead included)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    session = ort.InferenceSession(matmul_model(k, n, seed).SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    x = np.random.RandomState(seed + 1).standard_normal((m, k)).astype(np.float32)
    result = _rate(2.0 * m * k * n, time_calls(lambda i: session.run(None, {"x": x}), repeat, warmup))
    result["shape"] = [m, k, n]
    return result


def torch_gemm(m, k, n, device, repeat=10, warmup=2, seed=0):
    """``{gflops, p50_ms, n, shape}`` of float32 ``(m, k) @ (k, n)`` with torch on ``device`` (a GPU: each
    timed call ends with ``torch.cuda.synchronize``; strict FP32, TF32 off, as the benchmark runs the graphs)."""
    from jetcap.bench.devices import strict_fp32

    torch = require("torch")
    strict_fp32(torch)
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=generator).to(device)
    b = torch.randn(k, n, generator=generator).to(device)
    out = torch.empty(m, n, device=device)

    def call(i):
        torch.mm(a, b, out=out)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)

    result = _rate(2.0 * m * k * n, time_calls(call, repeat, warmup))
    result["shape"] = [m, k, n]
    return result


def measure_gpu_matmul(shapes=(), peak_size=PEAK_SIZE, repeat=10, shape_repeat=200):
    """The GPU's GEMM rates through torch (``--device cuda``): ``{torch_peak, peak_gflops, shapes, device}``,
    or ``{device, error}`` where torch has no CUDA GPU (the limit is then not measured)."""
    try:
        torch = require("torch")
    except MissingDependencyError as exc:
        return {"device": "cuda", "error": exc.message}
    if not torch.cuda.is_available():
        return {"device": "cuda", "error": "torch {} sees no CUDA GPU: the GPU's matmul rate is not measured".format(
            torch.__version__)}
    size = int(peak_size)
    # the square GEMM runs long enough on a GPU only when large; 4x the CPU side, at least 4096
    peak = torch_gemm(max(4096, 4 * size), max(4096, 4 * size), max(4096, 4 * size), "cuda", repeat=repeat)
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(0), "torch_peak": peak,
            "peak_gflops": peak["gflops"],
            "shapes": [torch_gemm(int(m), int(k), int(n), "cuda", repeat=shape_repeat, warmup=10) for m, k, n in shapes]}


def measure_matmul(threads=None, shapes=(), peak_size=PEAK_SIZE, repeat=10, shape_repeat=200, device="cpu"):
    """The machine's GEMM rates (on ``device`` "cuda": :func:`measure_gpu_matmul`).

    Args:
        threads: ONNX Runtime intra-op threads (numpy's come from the environment).
        shapes: extra ``(m, k, n)`` shapes measured with ONNX Runtime (a graph's largest matmul).
        peak_size: side of the square GEMM giving the peak rate (default 1024).
        repeat: timed repetitions of the square GEMMs (default 10).
        shape_repeat: timed repetitions of each small shape (default 200).
    Returns:
        ``{numpy_peak, onnxruntime_peak, peak_gflops, shapes: [{shape, gflops, ...}]}``;
        ``peak_gflops`` is the better of the two square-GEMM rates.
    """
    if device == "cuda":
        return measure_gpu_matmul(shapes, peak_size, repeat, shape_repeat)
    size = int(peak_size)
    result = {"numpy_peak": numpy_gemm(size, size, size, repeat=repeat)}
    try:
        result["onnxruntime_peak"] = onnxruntime_gemm(size, size, size, threads, repeat=repeat)
    except MissingDependencyError as exc:  # reported; numpy's rate still counts
        result["onnxruntime_peak"] = {"error": exc.message}
    rates = [r["gflops"] for r in (result["numpy_peak"], result["onnxruntime_peak"]) if "gflops" in r]
    result["peak_gflops"] = max(rates)
    result["shapes"] = []
    for m, k, n in shapes:
        if "gflops" not in result["onnxruntime_peak"]:
            break
        result["shapes"].append(onnxruntime_gemm(int(m), int(k), int(n), threads, repeat=shape_repeat, warmup=10))
    return result
