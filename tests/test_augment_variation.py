"""Augmentations of real variation (issue 18): each does what it says, on numbers worked out by hand; eval mode
and probability 0 are the identity; a seed gives the same batch; the registry builds what the config says."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import train
from augment import (AUGMENTATIONS, BackgroundMix, BandGain, FrequencyWarp, PitchShift, Reverb, TimeStretch,
                     build_augment)
from augment.base import from_power, to_power
from augment.level import band_gains_db
from augment.mixing import mix_at_snr, rir_bank, synthetic_rir
from augment.warp import VTLP_BOUNDARY, resample_axis, vtlp_source_hz
from conftest import make_tree, write_wav
from data.audio import change_speed, load_audio
from data.cache import FeatureCache
from data.dataset import ClipDataset
from data.frontends import KaldiFbank, LogMel, PannsLogMel, Waveform
from experiment.config import ConfigError

SR, N_FFT, HOP, N_MELS = 8000, 256, 80, 64
ALL_ON = dict(time_stretch_p=1.0, vtlp_p=1.0, pitch_shift_p=1.0, reverb_p=1.0, background_p=1.0, band_gain_p=1.0,
              time_mask_p=1.0, freq_mask_p=1.0, noise_p=1.0, gain_p=1.0)


def logmel() -> LogMel:
    return LogMel(SR, N_FFT, HOP, N_MELS)


def tone(freq: float, seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def config(**extra) -> dict:
    return dict(train.CONFIG, sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, **extra)


# ---------------------------------------------------------------- speed perturbation (cached copies)
def test_a_speed_factor_of_1_1_shortens_a_clip_by_1_over_1_1_and_keeps_its_rate(tmp_path):
    wave = tone(440.0, 1.0)
    assert change_speed(wave, SR, 1.0) is wave
    for factor in (0.9, 1.1):
        assert len(change_speed(wave, SR, factor)) == round(SR / factor)
    # played faster, the tone's pitch rises by the same factor (tempo and pitch together)
    fast = change_speed(wave, SR, 1.1)
    peak = torch.fft.rfft(fast).abs().argmax() * SR / len(fast)
    assert float(peak) == pytest.approx(440.0 * 1.1, abs=2.0)

    path = write_wav(tmp_path / "a.wav", 1.0, SR, kind="tone")
    cache = FeatureCache(tmp_path / "cache", logmel())
    copies = cache.build_speed_copies([str(path)], (0.9, 1.1), show_progress=False)
    original = cache.get(str(path))
    assert cache.entry(str(path)) != copies[1.1][0] != copies[0.9][0]  # three distinct entries
    for factor in (0.9, 1.1):
        copy = np.load(copies[factor][0])
        assert copy.shape[1] == 1 + round(SR / factor) // HOP and original.shape[1] == 1 + SR // HOP


def test_the_dataset_takes_a_speed_copy_with_probability_speed_p_and_reproducibly(tmp_path):
    paths = [str(write_wav(tmp_path / f"{i}.wav", 1.0, SR, kind="tone", seed=i)) for i in range(4)]
    cache = FeatureCache(tmp_path / "cache", logmel())
    copies = cache.build_speed_copies(paths, (0.9, 1.1), show_progress=False)
    frames = 1 + SR // HOP
    ds = ClipDataset(paths, [0, 1, 0, 1], cache, frames + 20, seed=3, speed_copies=copies, speed_p=0.5)
    # a crop wider than every copy is the whole track, padded: its width in real frames tells the copy
    widths = [int((ds[(i, e)][0] != ds[(i, e)][0].min()).any(dim=1).sum()) for i in range(4) for e in range(60)]
    counts = {w: widths.count(w) for w in set(widths)}
    assert set(counts) <= {frames, 1 + round(SR / 0.9) // HOP, 1 + round(SR / 1.1) // HOP}
    assert 0.35 < counts.get(frames, 0) / len(widths) < 0.65  # the original half of the time
    assert torch.equal(ds[(2, 7)][0], ds[(2, 7)][0])
    plain = ClipDataset(paths, [0, 1, 0, 1], cache, frames + 20, seed=3)
    assert all(int((plain[(i, 0)][0] != plain[(i, 0)][0].min()).any(dim=1).sum()) == frames for i in range(4))


# ---------------------------------------------------------------- mel-axis warps
@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_pure_tones_peak_to_the_predicted_mel_band(alpha):
    fe = logmel()
    axis = fe.mel_axis()
    f0 = 1000.0  # below the boundary (0.6 * 4000 Hz): moves to alpha * f0
    x = fe(tone(f0))[None, None]  # [1, 1, 64, T]
    warp = FrequencyWarp(axis, 0.1, p=1.0)
    out = resample_axis(x, warp.source_bins(torch.tensor([alpha])), -2)
    peak = int(out[0, 0].mean(-1).argmax())
    expected = float(axis.hz_to_bin(torch.tensor(alpha * f0)))
    assert abs(peak - expected) <= 0.6
    assert abs(int(x[0, 0].mean(-1).argmax()) - float(axis.hz_to_bin(torch.tensor(f0)))) <= 0.6
    # the top of the axis stays where it is, and the warp is continuous at the boundary
    top = torch.tensor([axis.f_max])
    assert float(vtlp_source_hz(top, torch.tensor([[alpha]]), axis.f_max)) == pytest.approx(axis.f_max)
    knee = VTLP_BOUNDARY * axis.f_max * min(alpha, 1.0)
    below, above = vtlp_source_hz(torch.tensor([knee - 1e-3, knee + 1e-3]), torch.tensor([[alpha]]), axis.f_max)[0]
    assert float(below) == pytest.approx(float(above), abs=1e-2)


@pytest.mark.parametrize("frontend", [PannsLogMel(16000, 512, 160, 64, 50.0, 8000.0), KaldiFbank(16000, 400, 160, 64)],
                         ids=["slaney", "kaldi"])
def test_pitch_shift_moves_a_tone_by_its_semitones_on_every_mel_scale(frontend):
    axis = frontend.mel_axis()
    t = torch.arange(8000) / 16000
    x = frontend(0.5 * torch.sin(2 * math.pi * 800.0 * t))[None, None]
    shift = PitchShift(axis, 4.0, p=1.0)
    out = resample_axis(x, shift.source_bins(torch.tensor([3.0])), -2, torch.tensor(-100.0))
    peak = int(out[0, 0].mean(-1).argmax())
    assert abs(peak - float(axis.hz_to_bin(torch.tensor(800.0 * 2 ** (3 / 12))))) <= 0.6
    # shifting down leaves the top bands without a source: they take the fill value
    down = resample_axis(x, shift.source_bins(torch.tensor([-4.0])), -2, torch.tensor(-123.0))
    assert torch.all(down[0, 0, -1] == -123.0)


# ---------------------------------------------------------------- time stretch
def test_time_stretch_reads_rate_times_as_many_frames_and_rate_1_is_an_exact_slice():
    out_frames = 20
    stretch = TimeStretch(0.25, out_frames, p=1.0)
    width = stretch.input_frames(out_frames)
    assert width == 25
    ramp = torch.arange(width, dtype=torch.float32).expand(6, 1, 3, width).clone()  # x[t] = t
    torch.manual_seed(0)
    out = stretch(ramp)
    assert out.shape == (6, 1, 3, out_frames)
    steps = out[:, 0, 0].diff(dim=-1)  # the rate of each example: constant within it
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-4)
    assert torch.all((steps >= 0.75 - 1e-4) & (steps <= 1.25 + 1e-4)) and steps[:, 0].unique().numel() == 6
    assert out.min() >= 0 and out.max() <= width - 1
    never = TimeStretch(0.25, out_frames, p=0.0)
    torch.manual_seed(1)
    sliced = never(ramp)[:, 0, 0]
    assert torch.equal(sliced, sliced[:, :1] + torch.arange(out_frames))  # whole frames, unchanged values
    assert torch.equal(stretch.eval()(ramp), ramp)


# ---------------------------------------------------------------- band gains, background, reverb
def test_a_band_gain_of_6_db_raises_exactly_those_bands():
    edges = torch.tensor([0, 10, 25, 64])
    gains = torch.tensor([[0.0, 6.0, -3.0]])
    per_bin = band_gains_db(edges, gains, linear=False)[0]
    assert torch.all(per_bin[:10] == 0) and torch.all(per_bin[10:25] == 6.0) and torch.all(per_bin[25:] == -3.0)
    linear = band_gains_db(edges, torch.tensor([[0.0, 6.0, 6.0, 0.0]]), linear=True)[0]
    assert linear[0] == 0 and linear[9] == pytest.approx(6.0) and torch.all(linear[10:25] == 6.0)
    assert linear[63] == pytest.approx(0.0) and torch.all(linear.diff()[:9] > 0)
    x = torch.randn(2, 1, 64, 30) * 10 - 40
    from augment.base import add_decibels
    raised = add_decibels(x, per_bin[None, None, :, None], "db")
    assert torch.allclose(raised - x, per_bin[None, None, :, None].expand_as(x))
    power = to_power(x, "db")
    assert torch.allclose(add_decibels(power, per_bin[None, None, :, None], "power") / power,
                          (10 ** (per_bin / 10))[None, None, :, None].expand_as(x), rtol=1e-4)
    torch.manual_seed(0)
    random = BandGain(6.0, p=1.0, units="db")(x) - x
    assert random.abs().max() <= 6.0 + 1e-4 and torch.allclose(random, random[..., :1].expand_as(random), atol=1e-4)


@pytest.mark.parametrize("units", ["db", "ln", "power", "wave"])
def test_background_at_a_given_snr_has_that_snr(units):
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 50) * (10 if units == "db" else 1) - (40 if units == "db" else 0)
    if units == "power":
        x = x.abs()
    noise = torch.randn_like(x) * 3 + (-60 if units == "db" else 0)
    if units == "power":
        noise = noise.abs()
    snr = torch.tensor([0.0, 5.0, 10.0, 20.0])
    mixed = mix_at_snr(x, noise, snr, units)
    if units == "wave":
        added = mixed - x
        measured = 10 * torch.log10(x.square().mean((1, 2, 3)) / added.square().mean((1, 2, 3)))
    else:
        added = to_power(mixed, units) - to_power(x, units)
        measured = 10 * torch.log10(to_power(x, units).mean((1, 2, 3)) / added.mean((1, 2, 3)))
    assert torch.allclose(measured, snr, atol=1e-2)


def test_background_mix_takes_another_clip_of_the_batch_or_the_noise_bank():
    x = torch.stack([torch.full((1, 8, 12), float(v)) for v in (-30.0, -40.0, -50.0)])
    torch.manual_seed(0)
    mixed = BackgroundMix(0.0, 0.0, p=1.0, units="db")(x)  # 0 dB: the background is as loud as the clip
    # each clip gained exactly 3 dB (its own power plus an equal one), whatever clip it got
    assert torch.allclose(mixed - x, torch.full_like(x, 10 * math.log10(2)), atol=1e-4)
    assert torch.equal(BackgroundMix(0.0, 0.0, p=1.0)(x[:1]), x[:1])  # a single clip has no other clip
    bank = torch.full((8, 5), -70.0)  # shorter than a crop: tiled
    loud = BackgroundMix(10.0, 10.0, p=1.0, bank=bank)(x)
    assert torch.allclose(loud - x, torch.full_like(x, 10 * math.log10(1.1)), atol=1e-4)


def test_synthetic_rooms_decay_60_db_over_rt60_and_reverb_keeps_the_power_and_adds_a_tail():
    g = torch.Generator().manual_seed(0)
    rir = synthetic_rir(0.5, 5.0, SR, g)
    assert len(rir) == SR // 2 and rir[0] == 1.0
    tail = rir[1:].square()
    assert float(10 * torch.log10(tail.sum())) == pytest.approx(-5.0, abs=1e-3)  # the direct path 5 dB above
    early = float(tail[: SR // 20].mean())
    late = float(tail[-SR // 20:].mean())
    assert 10 * math.log10(early / late) == pytest.approx(60 * 0.9, abs=6.0)  # 0.45 s of a 60 dB/0.5 s decay

    fe = logmel()
    bank = rir_bank(fe, "db", 0.8)
    assert bank.shape[0] == 64 and bank.shape[1] == N_MELS and torch.isfinite(bank).all()
    click = torch.full((2, 1, N_MELS, 60), -150.0)
    click[..., 5] = -20.0  # a short sound in silence
    torch.manual_seed(0)
    wet = Reverb(bank, p=1.0, units="db")(click)
    assert torch.allclose(to_power(wet, "db").mean((1, 2, 3)), to_power(click, "db").mean((1, 2, 3)), rtol=1e-3)
    assert torch.all(wet[..., 15] > -100.0)  # the room rings on after the sound
    assert torch.all(wet[..., 2] < -80.0)  # and nothing comes before it (60 dB down: FFT round-off only)
    waves = rir_bank(Waveform(SR), "wave", 0.5)
    assert waves.shape[:2] == (64, 1) and torch.all(waves[:, 0, 0] == 1.0)


def test_rir_dir_and_noise_dir_read_real_folders_and_an_empty_one_is_a_clear_error(tmp_path):
    from augment.mixing import noise_bank
    write_wav(tmp_path / "rirs" / "room.wav", 0.3, SR, kind="pulses")
    bank = rir_bank(logmel(), "db", 0.8, str(tmp_path / "rirs"))
    assert bank.shape[:2] == (1, N_MELS)
    (tmp_path / "empty").mkdir()
    cfg = config(reverb_p=0.5, rir_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="reverb.*--rir_dir.*no audio files"):
        build_augment(cfg, logmel(), 81)
    write_wav(tmp_path / "noise" / "hum.wav", 0.5, SR, kind="hum")
    (tmp_path / "noise" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    cache = FeatureCache(tmp_path / "cache", logmel())
    bank, skipped = noise_bank(str(tmp_path / "noise"), cache.get)
    assert bank.shape == (N_MELS, 1 + 4000 // HOP) and [p for p, _ in skipped] == [str(tmp_path / "noise" / "broken.wav")]


# ---------------------------------------------------------------- the pipeline and the registry
def test_every_entry_is_the_identity_in_eval_mode_and_a_seed_gives_the_same_batch():
    cfg = config(**ALL_ON)
    aug = build_augment(cfg, logmel(), 51)
    assert [type(s).__name__ for s in aug.steps] == ["TimeStretch", "FrequencyWarp", "PitchShift", "Reverb",
                                                     "BackgroundMix", "BandGain", "TimeMasking", "FrequencyMasking",
                                                     "GaussianNoise", "RandomGain"]
    x = torch.randn(4, 1, N_MELS, aug.input_frames(51)) * 10 - 40
    torch.manual_seed(7)
    a = aug.train()(x, -40.0)
    torch.manual_seed(7)
    b = aug(x, -40.0)
    torch.manual_seed(8)
    c = aug(x, -40.0)
    assert a.shape == (4, 1, N_MELS, 51) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    window = x[..., :51]
    assert torch.equal(aug.eval()(window, -40.0), window)
    for step in aug.steps:  # each one alone, too
        assert torch.equal(step.eval()(window, -40.0), window)
    none = build_augment(config(**{k: 0.0 for k in ALL_ON}), logmel(), 51)
    assert none is None


def test_the_registry_builds_what_the_config_says_for_each_front_end():
    notes = []
    wave = build_augment(config(**ALL_ON), Waveform(SR), 8000, notes=notes)
    assert [type(s).__name__ for s in wave.steps] == ["Reverb", "BackgroundMix", "RandomGain"] and wave.units == "wave"
    assert notes == ["time_stretch", "vtlp", "pitch_shift", "band_gain", "time_mask", "freq_mask", "noise"]
    fbank = build_augment(config(gain_p=1.0, time_mask_p=0.0, freq_mask_p=0.0, noise_p=0.0), KaldiFbank(16000, 400, 160, 32))
    assert fbank.steps[0].scale == "ln"  # a gain on a natural-log fbank adds ln(g), not 10 log10(g)
    for entry in AUGMENTATIONS.values():
        assert all(k in train.CONFIG for k in entry.keys), entry.name  # every key is a config key with a comment
        assert entry.source
    with pytest.raises(ConfigError, match="--vtlp_p=1.5"):
        build_augment(config(vtlp_p=1.5), logmel(), 51)
    with pytest.raises(ConfigError, match="--background_snr_min"):
        build_augment(config(background_p=0.5, background_snr_min=30.0, background_snr_max=10.0), logmel(), 51)


def test_waveform_models_get_the_waveform_augmentation_end_to_end():
    from data.features import build_features
    cfg = config(frontend="waveform", input_layout="waveform", normalization="none", reverb_p=1.0, gain_p=1.0,
                 time_mask_p=1.0)
    fe = Waveform(SR)
    aug = build_augment(cfg, fe, 4000)
    transform = build_features(cfg, augment=aug)[1].train()
    assert transform.augment is aug
    w = torch.randn(2, 1, 1, 4000) * 0.1
    torch.manual_seed(0)
    out = transform(w)
    assert out.shape == w.shape and not torch.equal(out, w) and torch.equal(transform.eval()(w), w)


def test_power_round_trips():
    db = torch.randn(3, 5) * 20 - 50
    assert torch.allclose(from_power(to_power(db, "db"), "db"), db, atol=1e-4)
    ln = torch.randn(3, 5) * 4 - 8  # Kaldi fbank values
    assert torch.allclose(from_power(to_power(ln, "ln"), "ln"), ln, atol=1e-4)
