"""Spectrogram augmentations: each changes what it should and nothing else, per example, reproducibly,
and not at all in eval mode or with p=0."""
from __future__ import annotations

import math

import pytest
import torch

from augment import FrequencyMasking, GaussianNoise, RandomGain, SpectrogramAugment, TimeMasking, build_augment

F_BINS, T_FRAMES = 24, 40
MASK = -7.5  # a value no random input below takes


def spec(*lead, seed: int = 0) -> torch.Tensor:
    """A strictly positive random spectrogram [*lead, F_BINS, T_FRAMES] (never equal to MASK)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*lead, F_BINS, T_FRAMES, generator=g) + 0.5


def masked_positions(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Boolean [..., F, T] of changed entries; every changed entry must hold MASK."""
    changed = out != x
    assert torch.all(out[changed] == MASK)
    return changed


def assert_contiguous(indices: torch.Tensor) -> None:
    """``indices`` (sorted 1-D) form one run without gaps."""
    if len(indices):
        assert indices[-1] - indices[0] + 1 == len(indices)


def test_time_masking_sets_only_whole_contiguous_columns_shared_by_channels():
    torch.manual_seed(0)
    aug = TimeMasking(max_frames=15, p=1.0)
    x = spec(8, 3)  # batch of 8, 3 channels
    out = aug(x, mask_value=MASK)
    assert out.shape == x.shape and out.dtype == x.dtype
    widths = []
    for b in range(8):
        changed = masked_positions(x[b], out[b])
        columns = changed.all(dim=1)  # [C, T]: whole column masked
        assert torch.equal(changed.any(dim=1), columns)  # nothing but whole columns
        assert torch.equal(columns, columns[:1].expand_as(columns))  # every channel gets the same mask
        cols = columns[0].nonzero().flatten()
        assert_contiguous(cols)
        assert len(cols) < 15
        widths.append(len(cols))
    assert sum(w > 0 for w in widths) >= 6  # masks really happen
    assert len(set(widths)) > 1  # drawn per example, not once per batch


def test_frequency_masking_sets_only_whole_contiguous_rows():
    torch.manual_seed(1)
    aug = FrequencyMasking(max_bins=10, p=1.0)
    x = spec(8, 1)
    out = aug(x, mask_value=MASK)
    starts = []
    for b in range(8):
        changed = masked_positions(x[b], out[b])[0]  # [F, T]
        rows = changed.all(dim=1)
        assert torch.equal(changed.any(dim=1), rows)
        idx = rows.nonzero().flatten()
        assert_contiguous(idx)
        assert len(idx) < 10
        if len(idx):
            starts.append(int(idx[0]))
    assert len(starts) >= 6 and len(set(starts)) > 1


def test_masking_on_a_single_item_and_default_mask_value():
    torch.manual_seed(2)
    x = spec(1)
    out = TimeMasking(max_frames=30, p=1.0)(x)  # default mask value 0
    changed = out != x
    assert torch.all(out[changed] == 0)
    assert torch.equal(changed.any(dim=1), changed.all(dim=1))
    assert changed.any()


def test_gaussian_noise_has_the_given_std_and_applies_only_when_drawn():
    torch.manual_seed(3)
    x = torch.zeros(1, 64, 64)
    out = GaussianNoise(std=0.5, p=1.0)(x)
    assert abs(out.std().item() - 0.5) < 0.02
    assert abs(out.mean().item()) < 0.02

    torch.manual_seed(4)
    batch = spec(200, 1)
    out = GaussianNoise(std=0.1, p=0.5)(batch)
    diff = out - batch
    touched = (diff != 0).flatten(1)
    per_example_all = touched.all(dim=1)
    per_example_none = ~touched.any(dim=1)
    assert torch.all(per_example_all | per_example_none)  # an example gets noise everywhere or nowhere
    fraction = per_example_all.float().mean().item()
    assert 0.35 < fraction < 0.65
    assert abs(diff[per_example_all].std().item() - 0.1) < 0.01


def test_random_gain_multiplies_power_and_adds_decibels():
    torch.manual_seed(5)
    x = spec(16, 2)
    out = RandomGain(0.5, 2.0, p=1.0, scale="power")(x)
    ratio = out / x
    g = ratio[:, :1, :1, :1]
    assert torch.allclose(ratio, g.expand_as(ratio), rtol=1e-5)  # one factor per example, all channels
    assert torch.all((g >= 0.5) & (g <= 2.0))
    assert g.flatten().unique().numel() == 16  # per example

    torch.manual_seed(5)
    db = spec(16, 2) * 20 - 60
    out_db = RandomGain(0.5, 2.0, p=1.0, scale="db")(db)
    shift = out_db - db
    s = shift[:, :1, :1, :1]
    assert torch.allclose(shift, s.expand_as(shift), atol=1e-4)
    assert torch.all((s >= 10 * math.log10(0.5) - 1e-4) & (s <= 10 * math.log10(2.0) + 1e-4))
    # the same draws: the dB shift is 10 log10 of the power factor
    assert torch.allclose(s, 10 * torch.log10(g), atol=1e-4)


def test_random_gain_with_p_half_leaves_the_other_examples_alone():
    torch.manual_seed(6)
    x = spec(100, 1)
    out = RandomGain(0.5, 0.6, p=0.5, scale="power")(x)
    same = (out == x).flatten(1).all(dim=1)
    scaled = torch.isclose(out / x, (out / x)[:, :1, :1, :1].expand_as(x)).flatten(1).all(dim=1) & ~same
    assert torch.all(same | scaled)
    assert 30 < int(same.sum()) < 70


@pytest.mark.parametrize("make", [lambda p: TimeMasking(20, p), lambda p: FrequencyMasking(20, p),
                                  lambda p: GaussianNoise(1.0, p), lambda p: RandomGain(0.5, 2.0, p),
                                  lambda p: SpectrogramAugment(20, p, 20, p, 1.0, p, 0.5, 2.0, p)],
                         ids=["time", "freq", "noise", "gain", "all"])
def test_p0_and_eval_mode_are_identity_and_seeds_reproduce(make):
    x = spec(4, 1)
    for shape in (x, x[0]):  # batch [B, C, F, T] and item [C, F, T]
        assert torch.equal(make(0.0)(shape, mask_value=MASK), shape)
        aug = make(1.0)
        aug.eval()
        assert torch.equal(aug(shape, mask_value=MASK), shape)
        aug.train()
        torch.manual_seed(7)
        a = aug(shape, mask_value=MASK)
        torch.manual_seed(7)
        b = aug(shape, mask_value=MASK)
        assert a.shape == shape.shape
        assert torch.equal(a, b)
        torch.manual_seed(8)
        c = aug(shape, mask_value=MASK)
        assert not torch.equal(a, c)  # a different seed draws differently


def test_batch_examples_are_augmented_independently():
    torch.manual_seed(9)
    one = spec(1)
    batch = one.expand(8, -1, -1, -1).clone()  # 8 identical examples
    out = SpectrogramAugment(time_mask=20, freq_mask=10, noise_std=1.0, noise_p=0.5, gain_min=0.5, gain_max=2.0,
                             gain_p=0.5, scale="db")(batch, mask_value=MASK)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) == 8


def test_invalid_arguments_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="probability"):
        GaussianNoise(1.0, p=1.5)
    with pytest.raises(ValueError, match="gain range"):
        RandomGain(2.0, 1.0)
    with pytest.raises(ValueError, match="expected"):
        TimeMasking(5)(torch.zeros(F_BINS, T_FRAMES))


def test_build_augment_follows_the_config():
    import train
    cfg = dict(train.CONFIG, augment=True, time_mask=11, freq_mask=7, noise_std=0.25, noise_p=0.3, gain_min=0.8,
               gain_max=1.2, gain_p=0.4, scale="power")
    aug = build_augment(cfg)
    time_mask, freq_mask, noise, gain = aug.steps
    assert time_mask.mask.mask_param == 11 and freq_mask.mask.mask_param == 7
    assert (noise.std, noise.p) == (0.25, 0.3)
    assert (gain.min_gain, gain.max_gain, gain.p, gain.scale) == (0.8, 1.2, 0.4, "power")
    assert build_augment(dict(cfg, augment=False)) is None
