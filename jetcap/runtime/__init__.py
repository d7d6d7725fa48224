"""The torch-free runtime: what runs on the Jetson.

Everything under ``jetcap.runtime`` imports without torch or onnx and keeps Python 3.6 syntax
(JetPack 4.6); onnxruntime, tensorrt and pycuda are imported lazily by the backends that need them.
"""
