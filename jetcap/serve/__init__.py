"""``jetcap serve-engine``: the HTTP side of serving one bundle (Python 3.6, standard library only).

The folder is the architecture:

* :mod:`jetcap.serve.options`: :class:`ServeOptions`, every limit in one checked object.
* :mod:`jetcap.serve.connection`: sockets and threads: connection slots, the probe lane that keeps
  ``/health`` / ``/ready`` answerable while slow clients hold every slot, per-request deadlines
  (:class:`DeadlineReader`), draining and lingering so an early answer (413) reaches the client.
* :mod:`jetcap.serve.parsing`: one request's bytes: body reading against its deadline, its minimum rate
  and the buffered-body budget, multipart, JSON that cannot blow the stack, error details without heap
  addresses.
* :mod:`jetcap.serve.endpoints`: what each path answers (``/health``, ``/ready``, ``/model``,
  ``/metrics``, ``/caption``, ``/predict``).
* :mod:`jetcap.serve.app`: :class:`EngineServer`, which puts them together with the model state,
  workers and memory guard of :mod:`jetcap.runtime.serving`, and :func:`serve`.

See docs/SERVING.md for the limits and what a client sees at each.
"""
