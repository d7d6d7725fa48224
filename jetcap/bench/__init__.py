"""``jetcap bench``: jetcap's runtimes against PyTorch eager, side by side, with the distance to the limit.

* :mod:`jetcap.bench.runs`: the run (configurations, inputs, one child process each);
* :mod:`jetcap.bench.child`: what runs in each child (cold start, measurements, matmul rate);
* :mod:`jetcap.bench.subjects` / :mod:`jetcap.bench.torch_subjects`: what each configuration executes;
* :mod:`jetcap.bench.flops`: FLOPs of an ONNX graph from its shapes;
* :mod:`jetcap.bench.matmul`: the machine's measured GEMM rates (the "limit");
* :mod:`jetcap.bench.report` and :mod:`jetcap.bench.plot`: ratios, targets, the table and the PNG.

Importing this package imports nothing heavy (children start with ``python -m jetcap.bench.child``).
Python 3.6 compatible, so the benchmark also runs on a JetPack 4.6 device.
"""
