"""The PyTorch runner of the reference decode: the outputs asked for, and a clear refusal of others."""
import numpy as np
import pytest
import torch

from jetcap.errors import UsageError
from jetcap.export.subject import TorchRunner
from jetcap.models.registry import GraphSpec, TensorSpec


class _TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return x + 1, x * 2


def test_the_torch_runner_returns_the_outputs_asked_for_and_refuses_unknown_ones():
    spec = GraphSpec("pair", (TensorSpec("x", "float32", ("batch", 2)),),
                     (TensorSpec("plus", "float32", ("batch", 2)), TensorSpec("twice", "float32", ("batch", 2))))
    runner = TorchRunner(_TwoOutputs(), spec)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert sorted(runner.infer({"x": x})) == ["plus", "twice"]
    only = runner.infer({"x": x}, ["twice"])
    assert list(only) == ["twice"] and (only["twice"] == x * 2).all()
    with pytest.raises(UsageError, match=r"no outputs \['logits'\]"):
        runner.infer({"x": x}, ["twice", "logits"])
