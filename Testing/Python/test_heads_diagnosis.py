"""SAP pooling, per-plane experts, MPAE gate (incl. missing planes) and feature-level fusion."""

import pytest
import torch

from OrthoDiffusionLib.heads import (PLANES, ConcatFusionHead, CrossAttentionFusionHead, MPAEGate, MPAEHead,
                                     ProjectionFusionHead, SAPPooling)
from OrthoDiffusionLib.heads.pooling import largest_divisor_at_most


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(b=3, c=32, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(b, c, *shape, generator=g) for p in PLANES}


def test_sap_matches_published_formula():
    torch.manual_seed(0)
    pool = SAPPooling(32, num_heads=4).eval()
    x = torch.randn(2, 32, 2, 3, 3)
    out = pool(x)
    assert out.shape == (2, 64)
    # [GAP ; W_o · mean_n softmax(QK^T/sqrt(d)) V] computed by hand from the layer's own weights
    t = x.flatten(2).transpose(1, 2)
    wq, wk, wv = pool.attention.in_proj_weight.chunk(3)
    bq, bk, bv = pool.attention.in_proj_bias.chunk(3)
    heads, d = 4, 8
    q, k, v = [(t @ w.T + b).view(2, -1, heads, d).transpose(1, 2) for w, b in ((wq, bq), (wk, bk), (wv, bv))]
    ctx = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1) @ v
    pooled = pool.attention.out_proj(ctx.transpose(1, 2).reshape(2, -1, 32).mean(1))
    torch.testing.assert_close(out, torch.cat([t.mean(1), pooled], 1), rtol=1e-5, atol=1e-5)
    # the SDPA path is the torch block's own computation, in training mode too
    pool.train()
    torch.testing.assert_close(pool._self_attention(t), pool.attention(t, t, t, need_weights=False)[0],
                               rtol=1e-5, atol=1e-6)


def test_head_count_is_largest_divisor():
    # default: the published head width (C=256 -> 16 heads of 16 channels), kept for narrower C
    assert SAPPooling(256).num_heads == 16
    assert SAPPooling(64).num_heads == 4
    assert SAPPooling(24).num_heads == 1
    assert SAPPooling(24, num_heads=16).num_heads == 12
    assert SAPPooling(7, num_heads=16).num_heads == 7
    assert largest_divisor_at_most(10, 4) == 2


@pytest.mark.parametrize("gate_mode", ["shared", "label"])
def test_mpae_shapes_and_weights_sum_to_one(gate_mode):
    torch.manual_seed(0)
    head = MPAEHead(32, n_labels=5, num_heads=8, gate_mode=gate_mode).eval()
    out = head(_features())
    assert out.logits.shape == (3, 5)
    assert out.plane_weights.shape == (3, 5, 3) and out.expert_logits.shape == (3, 5, 3)
    torch.testing.assert_close(out.plane_weights.sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(out.logits, (out.plane_weights * out.expert_logits).sum(-1))
    assert out.weights_are_explanations


def test_label_gate_has_independent_parameters_per_label():
    gate = MPAEGate(n_labels=4, mode="label", dropout=0.0)
    with torch.no_grad():
        gate.b2[2] = torch.tensor([5.0, 0.0, 0.0])  # only label 2 favours sagittal
    _, w = gate(torch.zeros(1, 4, 3))
    assert w[0, 2, 0] > 0.9
    torch.testing.assert_close(w[0, 0], w[0, 1])


def test_missing_plane_renormalises_over_available_planes():
    torch.manual_seed(0)
    head = MPAEHead(32, n_labels=4, num_heads=8).eval()
    feats = _features(b=4)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    out = head(feats, present)
    w = out.plane_weights
    assert torch.all(w[~present[:, None, :].expand_as(w)] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 4))
    # fused logit = weighted sum over the available experts, computed independently of masking
    experts = torch.stack([head.experts[p](feats[p]) for p in PLANES], -1)
    expected = (w * experts * present[:, None, :]).sum(-1)
    torch.testing.assert_close(out.logits, expected)
    assert torch.all(w[2, :, 2] == 1)  # a single plane takes all the weight

    # a plane given as None behaves like a plane absent for every case
    no_cor = dict(feats, coronal=None)
    torch.testing.assert_close(head(no_cor).logits, head(feats, torch.tensor([[1, 0, 1]] * 4).bool()).logits)


def test_mpae_requires_one_plane_per_case():
    head = MPAEHead(32, n_labels=2, num_heads=8)
    with pytest.raises(ValueError, match="at least one plane"):
        head(_features(b=2), torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))


def test_stacking_is_flagged_as_not_explanatory():
    head = MPAEHead(32, n_labels=3, num_heads=8, stacking=True).eval()
    out = head(_features())
    assert out.logits.shape == (3, 3) and not out.weights_are_explanations


@pytest.mark.parametrize("make", [
    lambda: ConcatFusionHead([32, 16, 32], 4, num_heads=4),
    lambda: ConcatFusionHead([32, 16, 32], 4, num_heads=4, hidden=8),
    lambda: ProjectionFusionHead([32, 16, 32], 4, dim=8, mode="concat", num_heads=4),
    lambda: ProjectionFusionHead([32, 16, 32], 4, dim=8, mode="sum", num_heads=4),
    lambda: CrossAttentionFusionHead([32, 16, 32], 4, dim=8, num_heads=2),
])
def test_feature_fusion_heads_handle_missing_planes(make):
    torch.manual_seed(0)
    head = make().eval()
    g = torch.Generator().manual_seed(1)
    feats = {"sagittal": torch.randn(2, 32, 1, 4, 4, generator=g), "coronal": torch.randn(2, 16, 2, 2, 2, generator=g),
             "axial": torch.randn(2, 32, 1, 4, 4, generator=g)}
    full = head(feats).logits
    assert full.shape == (2, 4) and torch.isfinite(full).all()
    present = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    masked = head(feats, present).logits
    # case 0 lost its coronal plane: its output changes and does not depend on the coronal values
    assert not torch.allclose(masked[0], full[0])
    garbage = dict(feats, coronal=feats["coronal"].clone())
    garbage["coronal"][0] = 1e3
    torch.testing.assert_close(head(garbage, present).logits[0], masked[0])
    torch.testing.assert_close(masked[1], full[1])
    assert head(dict(feats, coronal=None)).logits.shape == (2, 4)
