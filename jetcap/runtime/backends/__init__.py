"""Inference backends behind one interface (:class:`jetcap.runtime.backends.base.Runner`)."""
