"""Triton ``config.pbtxt`` rendering (protobuf text format of ``inference.ModelConfig``) without protobuf.

A config is built from plain dicts and lists (:func:`model_config`) and rendered by :func:`render`: a dict
is a message, a list is a repeated field, strings are quoted and names in :data:`ENUM_FIELDS` are
written bare (``kind: KIND_CPU``).  ``tests/triton`` parses every rendered file with Triton's own
``ModelConfig`` message, so a field misspelt here fails there.
"""
from jetcap.errors import BundleError

# manifest dtype -> Triton DataType
DATA_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL", "string": "TYPE_STRING",
}
ENUM_FIELDS = ("data_type", "kind", "format")
BATCH_AXIS = "batch"


def triton_dtype(dtype):
    """Triton's ``TYPE_*`` name of a manifest dtype; BundleError for one Triton has not."""
    try:
        return DATA_TYPES[str(dtype)]
    except KeyError:
        raise BundleError("dtype {!r} has no Triton data type".format(dtype))


def tensor_entry(tensor, batched):
    """``ModelInput``/``ModelOutput`` fields of a manifest tensor ``{name, dtype, shape}``.

    Symbolic axes become -1.  With ``batched`` the leading ``batch`` axis is left out of ``dims`` (Triton
    adds it from ``max_batch_size``); a tensor that is only ``[batch]`` gets ``dims: [1]`` and
    ``reshape: {shape: []}`` since Triton needs at least one dim.
    """
    shape = list(tensor["shape"])
    if batched:
        if not shape or shape[0] != BATCH_AXIS:
            raise BundleError("tensor {!r} has no leading batch axis (shape {}); use --max-batch 0".format(
                tensor["name"], shape))
        shape = shape[1:]
    dims = [d if isinstance(d, int) else -1 for d in shape]
    entry = {"name": tensor["name"], "data_type": triton_dtype(tensor["dtype"])}
    if dims:
        entry["dims"] = dims
    else:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    return entry


def model_config(name, inputs, outputs, max_batch_size, instance_count=1, kind="KIND_AUTO", platform=None,
                 backend=None, queue_delay_us=None, parameters=None):
    """A ``ModelConfig`` as a dict ready for :func:`render`.

    Args:
        name: the model's name (its directory in the repository).
        inputs, outputs: lists of ``ModelInput``/``ModelOutput`` dicts (see :func:`tensor_entry`).
        max_batch_size: 0 for no batching, else the largest batch Triton may form.
        instance_count: model instances (copies) per device, default 1.
        kind: ``KIND_AUTO`` (default), ``KIND_CPU`` or ``KIND_GPU``.
        platform / backend: e.g. ``platform="onnxruntime_onnx"`` or ``backend="python"``.
        queue_delay_us: with batching, the dynamic batcher's ``max_queue_delay_microseconds`` (None: no
            dynamic batcher).
        parameters: ``{key: string value}`` passed to the model.
    """
    config = {"name": name}
    if platform:
        config["platform"] = platform
    if backend:
        config["backend"] = backend
    config["max_batch_size"] = int(max_batch_size)
    config["input"] = list(inputs)
    config["output"] = list(outputs)
    if max_batch_size > 0 and queue_delay_us is not None:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(queue_delay_us)}
    config["instance_group"] = [{"count": int(instance_count), "kind": kind}]
    if parameters:
        config["parameters"] = [{"key": str(key), "value": {"string_value": str(value)}}
                                for key, value in sorted(parameters.items())]
    return config


def _scalar(key, value):
    if key in ENUM_FIELDS:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"{}"'.format(text)


def _render_message(message, indent):
    lines = []
    pad = "  " * indent
    for key, value in message.items():
        if isinstance(value, dict):
            lines.append("{}{} {{".format(pad, key))
            lines.extend(_render_message(value, indent + 1))
            lines.append("{}}}".format(pad))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append("{}{} [".format(pad, key))
            for i, item in enumerate(value):
                lines.append("{}  {{".format(pad))
                lines.extend(_render_message(item, indent + 2))
                lines.append("{}  }}{}".format(pad, "," if i + 1 < len(value) else ""))
            lines.append("{}]".format(pad))
        elif isinstance(value, list):
            lines.append("{}{}: [{}]".format(pad, key, ", ".join(_scalar(key, v) for v in value)))
        else:
            lines.append("{}{}: {}".format(pad, key, _scalar(key, value)))
    return lines


def render(config):
    """The protobuf text format of ``config`` (a dict from :func:`model_config`), newline-terminated."""
    return "\n".join(_render_message(config, 0)) + "\n"
