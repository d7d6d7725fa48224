"""Where the benchmark runs each configuration: the CPU, or a CUDA GPU (Python 3.6, no torch).

``--device cpu`` (the default) runs PyTorch eager and ONNX Runtime on the processor, ONNX Runtime
through its CPU provider alone even where ``onnxruntime-gpu`` is installed, so both sides of every
ratio run on the same hardware.  ``--device cuda`` runs PyTorch eager on the GPU (``torch.cuda``)
and ONNX Runtime through its CUDA execution provider (with the CPU provider behind it for the nodes
CUDA lacks, as ONNX Runtime itself does).  TensorRT runs on the GPU either way.

Float32 math is strict FP32 on both sides of a GPU comparison: ONNX Runtime's CUDA provider uses TF32
for float32 GEMMs and convolutions by default (an Ampere or newer GPU), PyTorch for convolutions only,
so each library's defaults would compare different arithmetic under one "FP32" label.  jetcap turns
TF32 off in both (ONNX Runtime's ``use_tf32`` provider option, from 1.18 on; torch's ``allow_tf32``
flags) and measures the matmul limit the same way.  The FP16 variant is where a GPU's reduced
precision belongs.

The decisions are plain functions of what was found (the installed providers, a child process's
look at ``torch.cuda``), so they are tested on machines without a GPU; the parent process never
imports torch.
"""

DEVICES = ("cpu", "cuda")
CPU_PROVIDERS = ["CPUExecutionProvider"]
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
# ONNX Runtime's CUDA provider reads ``use_tf32`` from 1.18 on (microsoft/onnxruntime PRs 19357 and 19426,
# merged after 1.17 was cut); an older one refuses an unknown option
TF32_OPTION_SINCE = (1, 18)
STRICT_FP32 = "strict FP32 (TF32 off)"
# the manifest's source kinds of jetcap's own families (jetcap.models.sources.BUILTIN; that module imports
# torch, which the parent process never does); older bundles name none
BUILTIN_SOURCES = (None, "built-in family")
# precisions that exist for one processor only: int8-cpu is dynamic u8s8 MatMulInteger for x86/ARM CPUs
CPU_ONLY_PRECISIONS = ("int8-cpu",)


def onnxruntime_providers(device, available, version=None):
    """``(providers, None)`` for ONNX Runtime on ``device``, or ``(None, reason)`` when it cannot run there.

    Args:
        device: "cpu" or "cuda".
        available: ``onnxruntime.get_available_providers()`` of this machine.
        version: onnxruntime's version as a tuple (``(1, 18)`` and later: the CUDA provider is given
            ``use_tf32 = 0``, strict FP32 like the PyTorch side).
    """
    if device == "cpu":
        return list(CPU_PROVIDERS), None
    if "CUDAExecutionProvider" in available:
        if version is not None and tuple(version) >= TF32_OPTION_SINCE:
            return [["CUDAExecutionProvider", {"use_tf32": "0"}], "CPUExecutionProvider"], None
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
        user_code: the bundle's PyTorch reference is not a built-in family (:func:`is_builtin_bundle`).
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


def provider_name(provider):
    """The name of a provider entry: "CUDAExecutionProvider" or ``["CUDAExecutionProvider", {options}]``."""
    return provider if isinstance(provider, str) else provider[0]


def session_providers(providers):
    """ONNX Runtime's form of provider entries that went through JSON: ``(name, options)`` tuples."""
    if providers is None:
        return None
    return [p if isinstance(p, str) else (p[0], dict(p[1])) for p in providers]


def float32_math(device, providers):
    """What float32 arithmetic the configurations use on ``device``, for the report."""
    if device == "cpu":
        return None
    tf32_off = providers is None or any(not isinstance(p, str) and p[1].get("use_tf32") == "0" for p in providers)
    return STRICT_FP32 if tf32_off else (STRICT_FP32 + " in PyTorch; ONNX Runtime before 1.18 chooses its own")


def is_builtin_bundle(source_kind, checkpoint_options=None):
    """Whether the bundle's PyTorch reference is one of jetcap's built-in families (not the user's code,
    pickled modules or a model handed over in Python), from the manifest's source kind and the options."""
    options = checkpoint_options or {}
    return source_kind in BUILTIN_SOURCES and not (options.get("models") or options.get("trust_pickle"))


def strict_fp32(torch):
    """Set ``torch`` (the module) to strict FP32 float32 matmuls and convolutions on a GPU (TF32 off), the
    policy above; the caller imports torch, this module never does."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
