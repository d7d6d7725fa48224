"""Triton Inference Server: model repositories from jetcap bundles, and a local server (Python 3.6 syntax).

* :mod:`jetcap.triton.config` renders ``config.pbtxt`` (Triton's ``ModelConfig`` in protobuf text format)
  without needing protobuf;
* :mod:`jetcap.triton.repository` writes a model repository from a bundle (``jetcap triton-repo``);
* :mod:`jetcap.triton.pymodels` holds the Python-backend models (caption decoding, classification) that the
  repository's ``model.py`` files subclass; :mod:`jetcap.triton.bls` is their BLS runner;
* :mod:`jetcap.triton.server` finds and runs ``tritonserver`` locally (``jetcap serve-triton``);
* :mod:`jetcap.triton.check` parses every ``config.pbtxt`` against Triton's own ``ModelConfig`` message.

The runtime part (``bls``, ``pymodels``) is copied into each Python-backend model of a repository, so a
repository runs on any Triton whose Python has numpy and Pillow (plus onnxruntime for ``--backend python``).
"""
