"""Lazy imports of heavy optional packages, naming what to install when one is missing.

Nothing here imports torch, onnx, onnxruntime or tensorrt at import time; ``require`` imports on the
first call and turns an ImportError into a :class:`MissingDependencyError` that says how to fix it.
"""
import importlib

from jetcap.errors import MissingDependencyError

# module name -> what to tell the user to install
INSTALL_HINTS = {
    "torch": "pip install 'jetcap[export]' (PyTorch is only needed to export or validate against a checkpoint)",
    "torchvision": "pip install 'jetcap[export]'",
    "onnx": "pip install 'jetcap[export]'",
    "onnxslim": "pip install 'jetcap[export]'",
    "onnxscript": "pip install 'jetcap[export]' (the dynamo exporter needs onnxscript)",
    "onnxruntime": "pip install onnxruntime (on Jetson: the onnxruntime-gpu wheel for your JetPack)",
    "tensorrt": "TensorRT ships with JetPack on Jetson; on a PC: pip install tensorrt (NVIDIA's index)",
    "pycuda": "pip install pycuda (builds against the CUDA toolkit; on JetPack 4.6 export CUDA_HOME=/usr/local/cuda first)",
    "PIL": "pip install Pillow",
    "cv2": "pip install opencv-python-headless (on Jetson use JetPack's python3-opencv)",
}


def require(name):
    """Import and return module ``name``; raise MissingDependencyError with an install hint if absent.

    Args:
        name: dotted module name, e.g. ``"onnxruntime"`` or ``"onnxruntime.quantization"``.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = INSTALL_HINTS.get(top, "pip install {}".format(top))
        raise MissingDependencyError(
            "{} is required for this step but cannot be imported: {}".format(name, exc), hint=hint
        )


def available(name):
    """True when module ``name`` imports cleanly (any exception while importing counts as absent)."""
    try:
        importlib.import_module(name)
    except Exception:  # a broken install (e.g. missing shared library) is "not available" too
        return False
    return True
