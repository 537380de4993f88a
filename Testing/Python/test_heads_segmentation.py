"""Segmentation decoder (stage plan, multi-scale taps), partial-label loss, multi-plane fusion."""

import math

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.heads import PartialLabelSegLoss, SegmentationDecoder, fuse_plane_probabilities, upsampling_plan


pytestmark = pytest.mark.usefixtures("one_thread")


def test_plan_matches_released_config_and_anisotropic_depth():
    assert upsampling_plan([1, 16, 16], [16, 256, 256]) == [(2, 2, 2)] * 4
    assert upsampling_plan([4, 4, 4], [4, 32, 32]) == [(1, 2, 2)] * 3
    assert upsampling_plan([2, 4, 4], [4, 16, 16]) == [(2, 2, 2), (1, 2, 2)]


def test_decoder_channels_derive_from_input_and_reach_target():
    dec = SegmentationDecoder(64, 5, [2, 4, 4], [4, 16, 16], min_channels=8)
    assert [m.out_channels for m in dec.up] == [32, 16]
    assert dec(torch.randn(2, 64, 2, 4, 4)).shape == (2, 5, 4, 16, 16)
    # non power-of-two target: last stage overshoots, logits are resized to the exact target
    assert SegmentationDecoder(16, 3, [1, 3, 3], [5, 10, 10])(torch.randn(1, 16, 1, 3, 3)).shape == (1, 3, 5, 10, 10)


def test_multiscale_decoder_uses_encoder_taps():
    torch.manual_seed(0)
    taps = {"in_1": {"channels": 8, "shape": [4, 8, 8]}, "in_0": {"channels": 4, "shape": [4, 16, 16]}}
    dec = SegmentationDecoder(32, 3, [2, 4, 4], [4, 16, 16], min_channels=8, taps=taps).eval()
    x = torch.randn(1, 32, 2, 4, 4)
    t = {"in_1": torch.randn(1, 8, 4, 8, 8), "in_0": torch.randn(1, 4, 4, 16, 16)}
    out = dec(x, t)
    assert out.shape == (1, 3, 4, 16, 16)
    changed = dict(t, in_0=t["in_0"] + 1.0)
    assert not torch.allclose(dec(x, changed), out)  # the full-resolution tap reaches the output
    with pytest.raises(ValueError, match="taps"):
        dec(x, {"in_1": t["in_1"]})
    with pytest.raises(ValueError, match="spatial shape"):
        SegmentationDecoder(32, 3, [2, 4, 4], [4, 16, 16], taps={"bad": {"channels": 2, "shape": [3, 3, 3]}})


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    target[0, :3, :3, :3] = 1
    target[0, 3:, 3:, 3:] = 2  # class 2 region
    target[0, :2, 4:, 4:] = 3
    logits = torch.randn(1, 4, 6, 6, 6, generator=g)
    return logits, target


def test_moving_mass_between_background_and_unannotated_class_changes_nothing():
    logits, target = _case()
    annotated = torch.tensor([[True, True, False, True]])
    loss = PartialLabelSegLoss()
    base = loss.components(logits, target, annotated)
    # inside the class-2 region, shift probability between background and class 2 while keeping
    # logsumexp(bg, c2) fixed: annotated-class probabilities are unchanged
    shifted = logits.clone()
    region = target[0] == 2
    lse = torch.logsumexp(logits[0, [0, 2]], 0)
    shifted[0, 0][region] = lse[region] + math.log(0.99)
    shifted[0, 2][region] = lse[region] + math.log(0.01)
    moved = loss.components(shifted, target, annotated)
    torch.testing.assert_close(moved["loss"], base["loss"])
    torch.testing.assert_close(moved["dice"], base["dice"])
    # relabelling the unannotated class as background changes nothing either
    relabelled = torch.where(target == 2, 0, target)
    torch.testing.assert_close(loss(logits, relabelled, annotated), base["loss"])
    # when class 2 IS annotated the same prediction change matters
    full = torch.ones_like(annotated)
    assert not torch.allclose(loss(shifted, target, full), loss(logits, target, full))


def test_unannotated_dice_term_has_no_gradient_and_is_excluded():
    logits, target = _case(1)
    annotated = torch.tensor([[True, True, False, True]])
    loss = PartialLabelSegLoss()
    logits.requires_grad_(True)
    comps = loss.components(logits, target, annotated)
    # the dice term equals the mean of the annotated foreground classes' terms only
    torch.testing.assert_close(comps["dice"], comps["dice_per_class"][0, [0, 2]].mean())
    grad_dice, = torch.autograd.grad(comps["dice"], logits, retain_graph=True)
    # the class-2 per-class Dice term is computed but dropped: its gradient never reaches the loss
    per_class_grad, = torch.autograd.grad(comps["dice_per_class"][0, 1], logits, retain_graph=True)
    assert per_class_grad.abs().sum() > 0
    only_annotated = comps["dice_per_class"][0, [0, 2]].mean()
    expected, = torch.autograd.grad(only_annotated, logits)
    torch.testing.assert_close(grad_dice, expected)


def test_ignored_voxels_do_not_count():
    logits, target = _case(2)
    loss = PartialLabelSegLoss(ignore_index=-1)
    ignored = target.clone()
    ignored[0, 0] = -1
    other = logits.clone()
    other[:, :, 0] = torch.randn_like(other[:, :, 0]) * 10
    torch.testing.assert_close(loss(logits, ignored), loss(other, ignored))


def test_fuse_plane_probabilities_mean_over_covering_planes():
    rng = np.random.default_rng(0)
    shape = (4, 5, 6)
    probs = [rng.dirichlet(np.ones(3), size=shape).transpose(3, 0, 1, 2) for _ in range(3)]
    valid = [np.ones(shape, bool), np.ones(shape, bool), np.zeros(shape, bool)]
    valid[1][0] = False  # the coronal slab does not cover the first slice
    valid[2][:, :, :3] = True
    out = fuse_plane_probabilities(probs, valid)
    assert isinstance(out["probabilities"], np.ndarray)
    np.testing.assert_allclose(out["probabilities"][:, 1, 2, 4], (probs[0] + probs[1])[:, 1, 2, 4] / 2, rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"][:, 0, 2, 1], (probs[0] + probs[2])[:, 0, 2, 1] / 2, rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"].sum(0), 1.0, rtol=1e-5)
    assert (out["labels"] == out["probabilities"].argmax(0)).all()
    assert out["coverage"][0, 0, 5] == 1 and out["coverage"][1, 0, 0] == 3
    assert ((out["entropy"] >= 0) & (out["entropy"] <= 1)).all()
    own = np.stack([p.argmax(0) for p in probs])
    expected = ((own != out["labels"][None]) & np.stack(valid)).sum(0) / np.stack(valid).sum(0)
    np.testing.assert_allclose(out["disagreement"], expected, rtol=1e-6)

    # planes that agree with certainty: zero entropy, zero disagreement; torch in -> torch out
    certain = torch.zeros(3, 2, 2, 2)
    certain[1] = 1
    t = fuse_plane_probabilities({"sagittal": certain, "axial": certain})
    assert torch.is_tensor(t["labels"]) and (t["labels"] == 1).all()
    assert torch.all(t["entropy"] < 1e-6) and torch.all(t["disagreement"] == 0)
    split = fuse_plane_probabilities([certain, torch.roll(certain, 1, 0)])
    assert torch.allclose(split["entropy"], torch.full((2, 2, 2), math.log(2) / math.log(3)))
    assert torch.all(split["disagreement"] == 0.5)


@pytest.mark.parametrize("cin,cout", [(16, 16), (24, 8)])
def test_res_block_equals_monai_unet_res_block(cin, cout):
    from monai.networks.blocks import UnetResBlock

    from OrthoDiffusionLib.heads.segmentation import ResBlock

    torch.manual_seed(0)
    theirs = UnetResBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=("group", {"num_groups": 8}))
    ours = ResBlock(cin, cout)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    for p in theirs.parameters():  # non-trivial norm parameters too
        p.data.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, cin, 4, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x.clone()), rtol=1e-5, atol=1e-6)
