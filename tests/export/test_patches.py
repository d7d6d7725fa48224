"""Export patches: each equals the module it replaces, is applied only inside the block, and exports."""
import numpy as np
import pytest
import torch
from torch import nn

from jetcap.export import patches
from jetcap.export.onnx_graph import ExportError


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_explicit_multihead_attention_equals_torch(batch_first, average):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    explicit = patches.ExplicitMultiheadAttention(mha)
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, -2:] = True
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": mask}, {"attn_mask": torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)},
                       {"need_weights": False}):
            want = mha(x, x, x, average_attn_weights=average, **kwargs)
            got = explicit(x, x, x, average_attn_weights=average, **kwargs)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
            if want[1] is None:
                assert got[1] is None
            else:
                torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_cross_attention_with_other_key_dims():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, batch_first=True).eval()
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 9, 5), torch.randn(2, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(patches.ExplicitMultiheadAttention(mha)(q, k, v)[0], mha(q, k, v)[0], atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("size_in,size_out", [(7, 14), (8, 14), (10, 3), (9, 9), (7, 1), (16, 4)])
def test_matmul_adaptive_pool_equals_torch(size_in, size_out):
    pool = nn.AdaptiveAvgPool2d((size_out, size_out))
    x = torch.randn(2, 3, size_in, size_in)
    torch.testing.assert_close(patches.MatmulAdaptiveAvgPool2d(pool)(x), pool(x), atol=1e-6, rtol=1e-6)


def test_pooling_matrix_rows_average():
    matrix = patches.pooling_matrix(7, 14)
    np.testing.assert_allclose(matrix.sum(dim=1).numpy(), np.ones(14), atol=1e-6)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(14)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.pool(self.conv(x))


def test_patched_restores_the_original_modules_even_on_error():
    net = _Net()
    original = net.pool
    with pytest.raises(RuntimeError):
        with patches.patched(net) as plan:
            assert [p.path for p in plan] == ["pool"]
            assert isinstance(net.pool, patches.MatmulAdaptiveAvgPool2d)
            raise RuntimeError("boom")
    assert net.pool is original


def test_patched_graph_exports_at_opset_13_where_the_original_does_not(tmp_path):
    import onnx
    import onnxruntime as ort

    net = _Net().eval()
    x = torch.randn(1, 3, 9, 9)  # 7x7 feature map pooled to 14x14
    with pytest.raises(Exception):
        torch.onnx.export(net, (x,), str(tmp_path / "plain.onnx"), opset_version=13, dynamo=False)
    with patches.patched(net):
        torch.onnx.export(net, (x,), str(tmp_path / "patched.onnx"), opset_version=13, dynamo=False)
    onnx.checker.check_model(str(tmp_path / "patched.onnx"))
    session = ort.InferenceSession(str(tmp_path / "patched.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)


def test_prove_equal_refuses_a_patch_that_changes_the_outputs():
    net = _Net().eval()
    x = torch.randn(1, 3, 9, 9)
    plan, _ = patches.plan_patches(net)
    assert patches.prove_equal(lambda: net(x), net, plan) < 1e-5

    class Wrong(nn.Module):
        def __init__(self, original):
            super().__init__()

        def forward(self, y):
            return torch.zeros(y.shape[0], y.shape[1], 14, 14)

    wrong = patches.ExportPatch("wrong-pool", nn.AdaptiveAvgPool2d, "test", lambda m: None, Wrong)
    patches.register_patch(wrong)
    try:
        plan = [patches.AppliedPatch("wrong-pool", "pool", "test")]
        with pytest.raises(ExportError, match="change the model's outputs"):
            patches.prove_equal(lambda: net(x), net, plan)
        with pytest.raises(ValueError, match="already registered"):
            patches.register_patch(wrong)
    finally:
        del patches._PATCHES["wrong-pool"]


def test_unsupported_attention_options_are_left_alone():
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    holder = nn.Module()
    holder.attn = mha
    plan, skipped = patches.plan_patches(holder)
    assert plan == [] and "add_bias_kv" in skipped[0]
