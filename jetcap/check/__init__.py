"""TensorRT pre-flight without TensorRT: will a bundle parse, build and run on its Jetson?

``preflight_bundle(bundle_dir, tensorrt=None, target=None)`` -> :class:`Report`.  Importing this package
needs neither torch nor onnx; checking a bundle needs ``onnx`` (imported lazily).
"""
from jetcap.check.preflight import preflight_bundle  # noqa: F401
from jetcap.check.report import ERROR, INFO, WARNING, Finding, Report  # noqa: F401
from jetcap.check.targets import DEVICES, resolve_target  # noqa: F401
