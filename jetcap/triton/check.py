"""Check a Triton model repository against Triton's own ``ModelConfig`` message (needs ``tritonclient``).

``python -m jetcap.triton.check REPO`` parses every ``*/config.pbtxt`` with protobuf's text format into
``tritonclient.grpc.model_config_pb2.ModelConfig`` (unknown fields and bad enum names fail), then checks
what Triton would refuse at load time: the name matches the directory, a version directory holds the
file the platform needs, batching settings agree, and BLS/label references exist.  Prints a JSON summary
and exits 1 listing every problem.
"""
import json
import os
import sys

from jetcap.util.lazy import require

MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}


def load_config(path):
    """The ``ModelConfig`` message parsed from the ``config.pbtxt`` at ``path`` (raises ParseError)."""
    text_format = require("google.protobuf.text_format")
    model_config_pb2 = require("tritonclient.grpc.model_config_pb2")
    with open(path) as handle:
        return text_format.Parse(handle.read(), model_config_pb2.ModelConfig())


def check_repository(repo):
    """``(summary, problems)`` of every model of the repository ``repo``.

    ``summary`` is ``{model: {platform, backend, max_batch_size, inputs, outputs, dynamic_batching,
    instances}}``; ``problems`` a list of one-line strings (empty when the repository is sound).
    """
    text_format = require("google.protobuf.text_format")
    summary, problems = {}, []
    models = sorted(d for d in os.listdir(repo) if os.path.isdir(os.path.join(repo, d)))
    if not models:
        problems.append("{} has no model directories".format(repo))
    configs = {}
    for model in models:
        path = os.path.join(repo, model, "config.pbtxt")
        if not os.path.isfile(path):
            problems.append("{}: no config.pbtxt".format(model))
            continue
        try:
            configs[model] = load_config(path)
        except text_format.ParseError as exc:
            problems.append("{}: config.pbtxt does not parse as ModelConfig: {}".format(model, exc))
    for model, cfg in configs.items():
        if cfg.name != model:
            problems.append("{}: config name {!r} differs from its directory".format(model, cfg.name))
        versions = [d for d in os.listdir(os.path.join(repo, model)) if d.isdigit()]
        if not versions:
            problems.append("{}: no numeric version directory".format(model))
        needed = MODEL_FILES.get(cfg.platform) or ("model.py" if cfg.backend == "python" else None)
        if needed is None:
            problems.append("{}: neither a known platform nor the python backend".format(model))
        for version in versions:
            if needed and not os.path.isfile(os.path.join(repo, model, version, needed)):
                problems.append("{}: version {} lacks {}".format(model, version, needed))
        if cfg.max_batch_size < 0:
            problems.append("{}: negative max_batch_size".format(model))
        if cfg.HasField("dynamic_batching") and cfg.max_batch_size == 0:
            problems.append("{}: dynamic batching without max_batch_size".format(model))
        for tensor in list(cfg.input) + list(cfg.output):
            if not tensor.dims:
                problems.append("{}: tensor {} has no dims".format(model, tensor.name))
        for out in cfg.output:
            if out.label_filename and not os.path.isfile(os.path.join(repo, model, out.label_filename)):
                problems.append("{}: label file {} missing".format(model, out.label_filename))
        params = dict((key, value.string_value) for key, value in cfg.parameters.items())
        for key in ("encoder_model", "decoder_model", "graph_model"):
            if key in params and params[key] not in configs:
                problems.append("{}: parameter {} names model {!r}, not in the repository".format(
                    model, key, params[key]))
        summary[model] = {
            "platform": cfg.platform, "backend": cfg.backend, "max_batch_size": cfg.max_batch_size,
            "inputs": dict((t.name, list(t.dims)) for t in cfg.input),
            "outputs": dict((t.name, list(t.dims)) for t in cfg.output),
            "dynamic_batching": cfg.HasField("dynamic_batching"),
            "queue_delay_us": cfg.dynamic_batching.max_queue_delay_microseconds,
            "instances": [(g.count, model_config_kind(g.kind)) for g in cfg.instance_group],
            "parameters": params,
        }
    return summary, problems


def model_config_kind(kind):
    """Name of a ``ModelInstanceGroup.Kind`` value."""
    model_config_pb2 = require("tritonclient.grpc.model_config_pb2")
    return model_config_pb2.ModelInstanceGroup.Kind.Name(kind)


def main(argv=None):
    """``python -m jetcap.triton.check REPO``: JSON summary on stdout; exit 1 with the problems on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m jetcap.triton.check REPOSITORY\n")
        return 2
    summary, problems = check_repository(argv[0])
    sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for problem in problems:
        sys.stderr.write("problem: {}\n".format(problem))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
