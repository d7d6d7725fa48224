"""config.pbtxt rendering: dims from manifest shapes, batch axis handling, the text format itself."""
import pytest

from jetcap.errors import BundleError
from jetcap.triton import config as pbtxt


def test_batch_axis_is_dropped_and_symbolic_axes_become_minus_one():
    entry = pbtxt.tensor_entry({"name": "sequence", "dtype": "float32", "shape": ["batch", "T", 63]}, batched=True)
    assert entry == {"name": "sequence", "data_type": "TYPE_FP32", "dims": [-1, 63]}


def test_batch_only_tensor_gets_dims_one_and_an_empty_reshape():
    entry = pbtxt.tensor_entry({"name": "prev_word", "dtype": "int64", "shape": ["batch"]}, batched=True)
    assert entry == {"name": "prev_word", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}


def test_unbatched_keeps_every_axis():
    entry = pbtxt.tensor_entry({"name": "x", "dtype": "float16", "shape": ["batch", 3]}, batched=False)
    assert entry["dims"] == [-1, 3] and entry["data_type"] == "TYPE_FP16"


def test_tensor_without_leading_batch_axis_is_refused():
    with pytest.raises(BundleError, match="no leading batch axis"):
        pbtxt.tensor_entry({"name": "x", "dtype": "float32", "shape": [3, "batch"]}, batched=True)


def test_unknown_dtype_is_refused():
    with pytest.raises(BundleError, match="no Triton data type"):
        pbtxt.triton_dtype("complex64")


def test_render_text_format():
    config = pbtxt.model_config("m", [{"name": "a", "data_type": "TYPE_STRING", "dims": [1], "optional": True}],
                                [{"name": "b", "data_type": "TYPE_FP32", "dims": [2]}], 4, instance_count=2,
                                kind="KIND_CPU", backend="python", queue_delay_us=100,
                                parameters={"note": 'say "hi"'})
    text = pbtxt.render(config)
    assert 'name: "m"' in text and 'backend: "python"' in text and "max_batch_size: 4" in text
    assert "data_type: TYPE_STRING" in text and "optional: true" in text and "dims: [2]" in text
    assert "max_queue_delay_microseconds: 100" in text and "kind: KIND_CPU" in text and "count: 2" in text
    assert 'string_value: "say \\"hi\\""' in text


def test_no_dynamic_batching_without_batching():
    config = pbtxt.model_config("m", [], [], 0, queue_delay_us=100, platform="onnxruntime_onnx")
    assert "dynamic_batching" not in config
