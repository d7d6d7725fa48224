"""Export patches: modules swapped, for the duration of an export only, for equivalents that trace.

Some standard modules compute the right thing in PyTorch but do not export to what the target reads:
``nn.MultiheadAttention`` bakes the sequence length into Reshape nodes when traced (the exported
graph then refuses every other T), and ``nn.AdaptiveAvgPool2d`` to a size that does not divide its
input (Show-Attend-Tell's 7x7 -> 14x14) has no opset-13 form at all.  A patch replaces such a module
by one that *shares its parameters* and computes the same function with export-friendly operators;
it never changes what the model computes.  :func:`patched` applies every matching patch from the one
registry (used by both families) inside a ``with`` block and puts the original modules back after;
export code proves each patched graph equal to the unpatched model (:func:`prove_equal`) and the
exported ONNX graph is checked against the *unpatched* model.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from jetcap.util.lazy import require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional


@dataclass(frozen=True)
class ExportPatch:
    """One registered patch.

    Attributes:
        name: registry name (shown in the manifest).
        reason: why the original module does not export.
        applies: ``module -> None`` when the patch fits the module, else the reason it cannot be patched
            (the module then stays as it is).
        replace: ``module -> equivalent module`` sharing the original's parameters.
    """

    name: str
    module_type: type
    reason: str
    applies: Callable[[object], Optional[str]]
    replace: Callable[[object], object]


_PATCHES: Dict[str, ExportPatch] = {}


def register_patch(patch: ExportPatch) -> ExportPatch:
    """Add ``patch`` to the registry; a duplicate name is an error."""
    if patch.name in _PATCHES:
        raise ValueError("export patch {!r} is already registered".format(patch.name))
    _PATCHES[patch.name] = patch
    return patch


def registered_patches() -> List[ExportPatch]:
    return [_PATCHES[k] for k in sorted(_PATCHES)]


# -- nn.MultiheadAttention ---------------------------------------------------------------------------

class ExplicitMultiheadAttention(nn.Module):
    """Eval-mode ``nn.MultiheadAttention`` written with shape-agnostic ops (same parameters).

    Supports self- and cross-attention, ``batch_first`` either way, ``need_weights`` and
    ``average_attn_weights``, boolean or float ``attn_mask`` (2-D or 3-D) and ``key_padding_mask``.
    """

    def __init__(self, original):
        super().__init__()
        self.original = original  # parameters stay where they are (and in the user's state_dict)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        mha = self.original
        if not mha.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads = mha.num_heads
        head_dim = mha.embed_dim // heads
        bias = mha.in_proj_bias
        if mha._qkv_same_embed_dim:
            w_q, w_k, w_v = mha.in_proj_weight.chunk(3, dim=0)
        else:
            w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        b_q, b_k, b_v = bias.chunk(3, dim=0) if bias is not None else (None, None, None)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
        if is_causal and attn_mask is None:
            length = scores.size(-1)
            attn_mask = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.unflatten(0, (-1, heads))
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = torch.softmax(scores, dim=-1)
        out = mha.out_proj(torch.matmul(weights, v).transpose(1, 2).flatten(2))
        if not mha.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(dim=1) if average_attn_weights else weights)


def _mha_applies(module) -> Optional[str]:
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv is not supported by the export patch"
    if module.add_zero_attn:
        return "add_zero_attn is not supported by the export patch"
    return None


register_patch(ExportPatch(
    name="multihead-attention",
    module_type=nn.MultiheadAttention,
    reason="nn.MultiheadAttention bakes the sequence length into Reshape nodes when traced",
    applies=_mha_applies,
    replace=ExplicitMultiheadAttention,
))


# -- nn.AdaptiveAvgPool2d --------------------------------------------------------------------------

def pooling_matrix(in_size: int, out_size: int):
    """``(out_size, in_size)`` matrix whose rows average the input cells adaptive pooling averages."""
    matrix = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products with constant pooling matrices.

    The matrices follow from the input size seen while tracing (the image size is fixed in such an
    export); where the output size divides the input the ordinary pooling (an AveragePool node) is used.
    """

    def __init__(self, original):
        super().__init__()
        self.original = original

    def forward(self, x):
        raw = self.original.output_size
        out_h, out_w = (raw, raw) if isinstance(raw, int) else tuple(raw)
        in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
        out_h = in_h if out_h is None else int(out_h)
        out_w = in_w if out_w is None else int(out_w)
        if in_h % out_h == 0 and in_w % out_w == 0:
            return F.adaptive_avg_pool2d(x, (out_h, out_w))
        rows = pooling_matrix(in_h, out_h).to(x.dtype)
        cols = pooling_matrix(in_w, out_w).to(x.dtype).t()
        return torch.matmul(torch.matmul(rows, x), cols)


register_patch(ExportPatch(
    name="adaptive-avg-pool2d",
    module_type=nn.AdaptiveAvgPool2d,
    reason="adaptive average pooling to a size that does not divide the input has no ONNX opset-13 form",
    applies=lambda module: None,
    replace=MatmulAdaptiveAvgPool2d,
))


# -- applying ---------------------------------------------------------------------------------------

@dataclass
class AppliedPatch:
    """A patch applied to one submodule (``path`` as in ``named_modules``)."""

    patch: str
    path: str
    reason: str


def _parent(root, path: str) -> Tuple[object, str]:
    parent = root
    parts = path.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part)
    return parent, parts[-1]


def plan_patches(root) -> Tuple[List[AppliedPatch], List[str]]:
    """Which registered patches fit which submodules of ``root``: ``(applicable, notes on the ones
    that do not fit)``."""
    found, skipped = [], []
    for path, module in root.named_modules():
        if not path:
            continue
        for patch in registered_patches():
            if type(module) is patch.module_type:
                why_not = patch.applies(module)
                if why_not is None:
                    found.append(AppliedPatch(patch.name, path, patch.reason))
                else:
                    skipped.append("{} ({}): not patched: {}".format(path, patch.name, why_not))
    return found, skipped


@contextlib.contextmanager
def patched(root, plan: Optional[List[AppliedPatch]] = None) -> Iterator[List[AppliedPatch]]:
    """Within the block, ``root``'s submodules of ``plan`` (default: every fitting patch) are replaced
    by their export equivalents; the originals are put back afterwards, whatever happens."""
    if plan is None:
        plan = plan_patches(root)[0]
    swapped = []
    try:
        for applied in plan:
            parent, name = _parent(root, applied.path)
            original = getattr(parent, name)
            setattr(parent, name, _PATCHES[applied.patch].replace(original))
            swapped.append((parent, name, original))
        yield plan
    finally:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)


def prove_equal(run: Callable[[], object], root, plan: List[AppliedPatch], atol: float = 1e-4) -> float:
    """Max abs difference between ``run()`` with and without the patches (all outputs, flattened);
    raises ExportError when it exceeds ``atol`` relative to the output scale."""
    from jetcap.export.onnx_graph import ExportError

    with torch.no_grad():
        plain = _flatten(run())
        with patched(root, plan):
            patched_out = _flatten(run())
    if len(plain) != len(patched_out):
        raise ExportError("export patches changed the number of outputs ({} -> {})".format(len(plain), len(patched_out)))
    worst = 0.0
    for a, b in zip(plain, patched_out):
        if a.shape != b.shape:
            raise ExportError("export patches changed an output shape {} -> {}".format(tuple(a.shape), tuple(b.shape)))
        if a.numel() == 0:
            continue
        diff = float((a.float() - b.float()).abs().max())
        scale = max(1.0, float(a.float().abs().max()))
        if not diff <= atol * scale:
            raise ExportError("export patches {} change the model's outputs (max abs diff {:.3g}); not exporting".format(
                ", ".join(p.patch + " at " + p.path for p in plan), diff))
        worst = max(worst, diff)
    return worst


def _flatten(out) -> List[object]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    return []
