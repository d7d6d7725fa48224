"""Where the benchmark runs each configuration: the CPU, or a CUDA GPU (Python 3.6, no torch).

``--device cpu`` (the default) runs PyTorch eager and ONNX Runtime on the processor, ONNX Runtime
through its CPU provider alone even where ``onnxruntime-gpu`` is installed, so both sides of every
ratio run on the same hardware.  ``--device cuda`` runs PyTorch eager on the GPU (``torch.cuda``)
and ONNX Runtime through its CUDA execution provider (with the CPU provider behind it for the nodes
CUDA lacks, as ONNX Runtime itself does).  TensorRT runs on the GPU either way.

The decisions are plain functions of what was found (the installed providers, a child process's
look at ``torch.cuda``), so they are tested on machines without a GPU; the parent process never
imports torch.
"""

DEVICES = ("cpu", "cuda")
CPU_PROVIDERS = ["CPUExecutionProvider"]
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
# precisions that exist for one processor only: int8-cpu is dynamic u8s8 MatMulInteger for x86/ARM CPUs
CPU_ONLY_PRECISIONS = ("int8-cpu",)


def onnxruntime_providers(device, available):
    """``(providers, None)`` for ONNX Runtime on ``device``, or ``(None, reason)`` when it cannot run there.

    Args:
        device: "cpu" or "cuda".
        available: ``onnxruntime.get_available_providers()`` of this machine.
    """
    if device == "cpu":
        return list(CPU_PROVIDERS), None
    if "CUDAExecutionProvider" in available:
        return list(CUDA_PROVIDERS), None
    return None, ("onnxruntime has no CUDAExecutionProvider here (it has {}): install the onnxruntime-gpu "
                  "build that matches this machine's CUDA".format(", ".join(available) or "none"))


def precision_reason(device, precision):
    """Why the ONNX Runtime variant ``precision`` is not benchmarked on ``device`` (None: it is)."""
    if device == "cuda" and precision in CPU_ONLY_PRECISIONS:
        return ("{} is the CPU variant (dynamic u8s8 MatMulInteger for CPUs); on a GPU the INT8 speed-up "
                "belongs to TensorRT".format(precision))
    return None


def torch_reason(device, probe, user_code):
    """Why PyTorch eager is not benchmarked on ``device`` (None: it is).

    Args:
        device: "cpu" or "cuda".
        probe: what a child process found of torch (:func:`jetcap.bench.child.probe`): ``{"cuda": bool,
            "why": str}``; only read for "cuda".
        user_code: the bundle was exported from the user's own code.
    """
    if device == "cpu":
        return None
    if user_code:
        return ("PyTorch on the GPU is timed for jetcap's built-in families; a bundle exported from your code "
                "is timed in PyTorch on the CPU (--device cpu)")
    if not probe.get("cuda"):
        return "torch cannot use a CUDA GPU here: {}".format(probe.get("why") or "torch.cuda.is_available() is False")
    return None


def label_words(device):
    """What a configuration's label says of its device: nothing on the CPU, " CUDA" on a GPU."""
    return " CUDA" if device == "cuda" else ""
