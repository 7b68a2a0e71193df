"""Front ends of the pretrained backbones (issue 11) and the input transform: values against the reference
extractors (transformers' ASTFeatureExtractor and Wav2Vec2FeatureExtractor, librosa's Slaney filter bank
written out from its formulas), frame counts, crops and windows, normalisation modes, the cache, and
checkpoints written before front ends existed giving the same predictions bit for bit."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data.cache
import evaluation.classifier
from augment import SpectrogramAugment
from conftest import write_wav
from data.audio import MIN_SECONDS, load_audio
from data.cache import FeatureCache
from data.dataset import ClipDataset, TrackDataset
from data.features import (LogMel, MelImage, SpectrogramInput, WaveformInput, build_features, normalisation_for,
                           normalisation_stats, window_frames)
from data.frontends import FRONTENDS, KaldiFbank, PannsLogMel, Waveform, build_frontend
from data.windows import cut_windows, random_crop
from evaluation.classifier import Classifier
from experiment.config import ConfigError
from models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

AST_MEAN, AST_STD = -4.2677393, 4.5689974  # ASTFeatureExtractor defaults = the official AudioSet statistics
OLD_CFG = dict(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32, f_min=0.0, f_max=0.0, scale="db", top_db=80.0,
               clip_seconds=0.5, eval_hop_seconds=0.25, resize=32, arch="resnet18")  # a config from before issue 11
CFGS = {  # one small config per front end
    "logmel": OLD_CFG,
    "panns_logmel": dict(OLD_CFG, frontend="panns_logmel", f_min=50.0, f_max=3800.0, input_layout="spectrogram"),
    "kaldi_fbank": dict(OLD_CFG, frontend="kaldi_fbank", sample_rate=16000, n_fft=400, hop_length=160, n_mels=128,
                        f_min=20.0, input_layout="spectrogram", normalization="fixed", norm_mean=AST_MEAN,
                        norm_std=AST_STD * 2, clip_seconds=0.3, eval_hop_seconds=0.1),
    "waveform": dict(OLD_CFG, frontend="waveform", input_layout="waveform", normalization="per_clip"),
}


def signal(seconds: float, sample_rate: int, seed: int = 0, offset: float = 0.05) -> np.ndarray:
    """A tone, a softer tone, noise and a DC offset: energy in every band, float32 [T]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1700 * t) + 0.02 * rng.standard_normal(t.size)
    return (x + offset).astype(np.float32)


# ---------------------------------------------------------------- the reference extractors

def test_kaldi_fbank_with_fixed_normalisation_equals_ast_feature_extractor():
    transformers = pytest.importorskip("transformers")
    cfg = CFGS["kaldi_fbank"]
    x = signal(1.0, 16000)
    frontend, transform = build_features(cfg)
    fbank = frontend(torch.from_numpy(x))
    assert fbank.shape == (128, 98) == (128, 1 + (16000 - 400) // 160) and fbank.dtype == torch.float32
    ours = transform.eval()(fbank[None])[0]
    extractor = transformers.ASTFeatureExtractor(sampling_rate=16000, num_mel_bins=128, max_length=98)
    theirs = extractor(x, sampling_rate=16000, return_tensors="np")["input_values"][0]  # [frames, n_mels]
    np.testing.assert_allclose(ours.numpy(), theirs.T, atol=1e-4, rtol=0)
    assert transform.mean == AST_MEAN and transform.std == AST_STD * 2


def test_waveform_with_per_clip_normalisation_equals_wav2vec2_feature_extractor():
    transformers = pytest.importorskip("transformers")
    frontend, transform = build_features(dict(CFGS["waveform"], sample_rate=16000))
    x, y = signal(0.5, 16000, seed=1), 3.0 * signal(0.5, 16000, seed=2, offset=-0.2)
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=False)
    crops = torch.stack([frontend(torch.from_numpy(x)), frontend(torch.from_numpy(y))])  # [2, 1, T]
    assert crops.shape == (2, 1, 8000)
    batch = transform.eval()(crops[:, None])  # [2, 1, 1, T]: each clip normalised on its own
    assert batch.shape == (2, 1, 1, 8000) and batch.dtype == torch.float32
    for ours, clip in zip(batch, (x, y)):
        theirs = extractor(clip, sampling_rate=16000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(ours[0, 0].numpy(), theirs, atol=1e-5, rtol=0)
    assert torch.equal(transform(crops[0][None]), batch[0])  # the item path: [1, 1, T]


def _hz_to_mel(f):  # Slaney's Auditory Toolbox mel scale, as librosa (htk=False)
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27), f / (200 / 3))


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27 * (m - 15.0)), m * 200 / 3)


def slaney_filterbank(sample_rate, n_fft, n_mels, f_min, f_max) -> np.ndarray:
    """librosa.filters.mel defaults (Slaney scale, area normalisation) in float64: [n_mels, n_fft // 2 + 1]."""
    fft_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    ramps = mel_hz[:, None] - fft_hz[None]
    lower = -ramps[:-2] / np.diff(mel_hz)[:-1, None]
    upper = ramps[2:] / np.diff(mel_hz)[1:, None]
    return np.maximum(0, np.minimum(lower, upper)) * (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]


def test_panns_logmel_is_slaney_mel_in_db_of_a_centred_hann_stft():
    frontend = build_frontend(dict(OLD_CFG, frontend="panns_logmel", sample_rate=32000, n_fft=1024, hop_length=320,
                                   n_mels=64, f_min=50.0, f_max=14000.0))  # CNN14's own settings
    assert isinstance(frontend, PannsLogMel)
    reference = slaney_filterbank(32000, 1024, 64, 50.0, 14000.0)
    np.testing.assert_allclose(frontend.mel.mel_scale.fb.numpy().T, reference, rtol=0, atol=1e-7)
    x = signal(0.5, 32000)
    out = frontend(torch.from_numpy(x)).numpy()
    assert out.shape == (64, 1 + 16000 // 320) and out.dtype == np.float32
    padded = np.pad(x.astype(np.float64), 512, mode="reflect")  # center=True, pad_mode="reflect"
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic (fftbins=True)
    frames = np.stack([padded[i * 320:i * 320 + 1024] for i in range(out.shape[1])])
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    np.testing.assert_allclose(out, 10 * np.log10(np.maximum(power @ reference.T, 1e-10)).T, rtol=0, atol=1e-3)
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 32000, dtype=np.float64)
    centres = _mel_to_hz(np.linspace(_hz_to_mel(50.0), _hz_to_mel(14000.0), 66))[1:-1]
    loudest = int(frontend(torch.from_numpy(tone.astype(np.float32))).mean(1).argmax())
    assert loudest == int(np.abs(centres - 1000).argmin())  # a 1 kHz tone lands in the band centred nearest 1 kHz
    assert float(frontend(torch.zeros(3200)).max()) == pytest.approx(-100.0)  # silence: 10*log10(1e-10), no top_db


def test_logmel_parameters_and_features_are_those_of_before():
    frontend, image = build_features(OLD_CFG)
    assert type(frontend) is LogMel and type(image) is MelImage
    assert json.dumps(frontend.params()) == (
        '{"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 32, "f_min": 0.0, "f_max": null, '
        '"scale": "db", "top_db": 80.0}')  # byte for byte: the cache keys of existing caches
    x = torch.from_numpy(signal(0.4, 8000))
    import torchaudio.transforms as T
    old = T.AmplitudeToDB("power", 80.0)(T.MelSpectrogram(8000, n_fft=256, hop_length=80, n_mels=32, f_min=0.0,
                                                           power=2.0)(x))
    assert torch.equal(frontend(x), old)


# ---------------------------------------------------------------- frame counts, crops and windows

@pytest.mark.parametrize("name", list(FRONTENDS))
def test_every_front_end_output_shape_and_frame_count(name):
    frontend = build_frontend(CFGS[name])
    sr, one = frontend.sample_rate, getattr(frontend, "n_fft", 1)
    expected = {"logmel": lambda t: 1 + max(t, 256) // 80, "panns_logmel": lambda t: 1 + max(t, 256) // 80,
                "kaldi_fbank": lambda t: 1 + (max(t, 400) - 400) // 160, "waveform": lambda t: t}[name]
    rows = 1 if name == "waveform" else frontend.n_mels
    for samples in (one // 2 or 1, one, sr + 37):  # shorter than one window, exactly one, long
        out = frontend(torch.from_numpy(signal(samples / sr, sr)))
        assert out.shape == (rows, expected(samples)) == (rows, frontend.num_frames(samples))
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert frontend.frames_per_second == sr / frontend.hop_length


def test_window_widths_and_hops_per_front_end():
    ast = dict(CFGS["kaldi_fbank"], clip_seconds=10.24, eval_hop_seconds=5.0)
    assert window_frames(ast, build_frontend(ast)) == (1024, 500)  # AST's 1024-frame input
    assert KaldiFbank(16000, 400, 160, 128).num_frames(163840) == 1022  # a 10.24 s clip is 1022 frames: padded
    wav = dict(CFGS["waveform"], sample_rate=16000, clip_seconds=2.0, eval_hop_seconds=0.5)
    assert window_frames(wav, build_frontend(wav)) == (32000, 8000)
    cnn14 = dict(CFGS["panns_logmel"], sample_rate=32000, n_fft=1024, hop_length=320, clip_seconds=10.0,
                 eval_hop_seconds=5.0)
    assert window_frames(cnn14, build_frontend(cnn14)) == (1001, 500)  # PANNs: 10 s = 1001 frames
    default = dict(OLD_CFG, sample_rate=22050, n_fft=2048, hop_length=512, clip_seconds=10.0, eval_hop_seconds=5.0)
    assert window_frames(default, build_frontend(default)) == (1 + 220500 // 512, round(5.0 * 22050 / 512))


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_short_clip_crops_and_windows_are_padded_with_the_front_ends_silence(name):
    frontend = build_frontend(CFGS[name])
    features = frontend(torch.from_numpy(signal(0.15, frontend.sample_rate))).numpy()
    width, hop = window_frames(CFGS[name], frontend)
    frames = features.shape[1]
    assert frames < width
    pad = {"logmel": features.min(), "panns_logmel": -100.0, "kaldi_fbank": 0.0, "waveform": 0.0}[name]
    assert frontend.pad_value == (None if name == "logmel" else pad)
    crop = random_crop(features, width, np.random.default_rng(0), frontend.pad_value)
    assert crop.shape == (features.shape[0], width) and crop.dtype == np.float32
    start = next(s for s in range(width - frames + 1) if np.array_equal(crop[:, s:s + frames], features))
    assert (np.delete(crop, np.s_[start:start + frames], axis=1) == np.float32(pad)).all()
    windows = cut_windows(features, width, hop, frontend.pad_value)
    left = (width - frames) // 2
    assert windows.shape == (1, 1, features.shape[0], width)
    assert torch.equal(windows[0, 0, :, left:left + frames], torch.from_numpy(features))
    assert (windows[0, 0, :, :left] == np.float32(pad)).all() and (windows[0, 0, :, left + frames:] == pad).all()


def test_kaldi_frame_sizes_must_survive_kaldis_millisecond_rounding():
    with pytest.raises(ConfigError, match="n_fft=99"):
        KaldiFbank(11025, 99, 40, 23)
    with pytest.raises(ConfigError, match="unknown front end"):
        build_frontend(dict(OLD_CFG, frontend="mfcc"))


# ---------------------------------------------------------------- the input transform

def test_input_transform_layouts_shapes_and_dtypes():
    x = torch.randn(2, 1, 32, 41) - 40
    for cfg, cls, shape in ((OLD_CFG, MelImage, (2, 3, 32, 32)), (CFGS["panns_logmel"], SpectrogramInput, x.shape)):
        transform = build_features(cfg, -40.0, 2.0)[1].eval()
        assert type(transform) is cls and transform(x).shape == shape and transform(x).dtype == torch.float32
        assert transform(x[0]).shape == shape[1:]
    wave = torch.randn(2, 1, 1, 800)
    transform = build_features(CFGS["waveform"])[1].eval()
    assert type(transform) is WaveformInput and transform(wave).shape == wave.shape
    for layout, frontend in (("image", "waveform"), ("waveform", "logmel"), ("spectrogram", "waveform")):
        with pytest.raises(ConfigError, match=f"input_layout={layout}"):
            build_features(dict(OLD_CFG, input_layout=layout, frontend=frontend))
    with pytest.raises(ConfigError, match="input_layout=tokens"):
        build_features(dict(OLD_CFG, input_layout="tokens"))


def test_normalisation_modes_values():
    x = torch.randn(3, 1, 16, 20) * 7 - 30
    spec = CFGS["panns_logmel"]
    train = build_features(dict(spec, normalization="train"), -30.0, 7.0)[1].eval()
    assert torch.equal(train(x), (x - -30.0) / 7.0)
    fixed = build_features(dict(spec, normalization="fixed", norm_mean=-20.0, norm_std=4.0), 99.0, 99.0)[1].eval()
    assert torch.equal(fixed(x), (x + 20.0) / 4.0)  # the config's constants, not the statistics passed
    none = build_features(dict(spec, normalization="none"), -30.0, 7.0)[1].eval()
    assert torch.equal(none(x), x)
    per_clip = build_features(dict(spec, normalization="per_clip"), -30.0, 7.0)[1].eval()(x)
    torch.testing.assert_close(per_clip.mean((1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_clip.std((1, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="norm_std"):
        build_features(dict(spec, normalization="fixed"))
    with pytest.raises(ConfigError, match="normalization=global"):
        build_features(dict(spec, normalization="global"))


def test_per_band_normalisation_removes_a_fixed_spectral_tilt():
    """Cepstral mean normalisation: each band to zero mean over the frames, the crop to unit variance; a fixed
    gain per band (a microphone's EQ, a voice's tilt: +0 to +12 dB across the bands) changes nothing."""
    x = torch.randn(3, 1, 16, 20) * 7 - 30
    tilt = torch.linspace(0.0, 12.0, 16).view(1, 1, 16, 1)
    transform = build_features(dict(CFGS["panns_logmel"], normalization="per_band"), -30.0, 7.0)[1].eval()
    out = transform(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 1, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((1, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform(x + tilt), out, atol=1e-5, rtol=0)
    per_clip = build_features(dict(CFGS["panns_logmel"], normalization="per_clip"))[1].eval()
    assert (per_clip(x + tilt) - per_clip(x)).abs().max() > 0.1  # per clip, the tilt stays
    with pytest.raises(ConfigError, match="per_band needs frequency bands"):
        build_features(dict(CFGS["waveform"], normalization="per_band"))


def test_per_clip_training_inputs_stay_unit_scale_when_a_crop_is_all_silence():
    """With top_db a silent crop is exactly constant. Its augmentation noise used to be divided by the
    un-augmented spread (sqrt(1e-7)): values in the thousands, BatchNorm statistics hundreds of times too large
    in the EMA of the weights, and val at chance (FSDD, top_db=35)."""
    x = torch.randn(2, 1, 16, 20) * 7 - 30
    x[1] = -35.0  # a crop of pure silence, clamped at the floor
    for noise_p, gain_p in ((1.0, 0.0), (0.0, 1.0)):  # noise, or a level change, on silence
        augment = SpectrogramAugment(time_mask=0, freq_mask=0, noise_std=1.0, noise_p=noise_p, gain_p=gain_p)
        transform = build_features(dict(CFGS["panns_logmel"], normalization="per_clip"), augment=augment)[1].train()
        out = transform(x)
        assert out[0].std(correction=0) == pytest.approx(1.0, abs=1e-4) and out[0].mean().abs() < 1e-5
        assert out[1].std(correction=0) <= 1.0 + 1e-4 and out[1].abs().max() < 10  # was ~1e4 (1 / sqrt(1e-7))
    assert torch.equal(transform.eval()(x)[1], torch.zeros(1, 16, 20))  # evaluation: silence is 0


def test_normalisation_for_reads_the_training_features_only_when_it_needs_them():
    mels = [np.full((2, 3), 1.0, np.float32), np.full((2, 5), 3.0, np.float32)]
    expected = dict(zip(("mean", "std"), normalisation_stats(mels)))

    def untouchable():
        raise AssertionError("the training features were read")
        yield

    assert normalisation_for(OLD_CFG, iter(mels)) == expected  # auto + dB: training statistics
    assert normalisation_for(dict(OLD_CFG, scale="power"), untouchable()) == dict(mean=0.0, std=1.0)
    assert normalisation_for(dict(CFGS["kaldi_fbank"], normalization="auto"), iter(mels)) == expected
    assert normalisation_for(CFGS["panns_logmel"], untouchable()) == dict(mean=0.0, std=1.0)  # CNN14's bn0
    assert normalisation_for(CFGS["kaldi_fbank"], untouchable()) == dict(mean=AST_MEAN, std=AST_STD * 2)
    for cfg in (dict(CFGS["waveform"], normalization="auto"), CFGS["waveform"], dict(OLD_CFG, normalization="none")):
        assert normalisation_for(cfg, untouchable()) == dict(mean=0.0, std=1.0)


def old_mel_image(x, resize, scale, augment, mean, std):
    """MelImage.forward before issue 11, verbatim in substance: the bit-for-bit reference."""
    if augment is not None:
        x = augment(x, mask_value=mean)
    x = (x - mean) / std
    if scale == "power":
        x = F.adaptive_avg_pool2d(x.clamp(min=0), (resize, resize))
    else:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", antialias=True, align_corners=False)
    return x.repeat(1, 3, 1, 1)


@pytest.mark.parametrize("scale", ["db", "power"])
def test_image_layout_is_bit_identical_to_the_old_mel_image(scale):
    augment = SpectrogramAugment(time_mask=6, freq_mask=4, noise_std=1.0, noise_p=0.5, gain_min=0.5, gain_max=2.0,
                                 gain_p=0.5, scale=scale)
    mean, std = (-35.0, 12.0) if scale == "db" else (0.0, 1.0)
    image = build_features(dict(OLD_CFG, scale=scale), mean, std, augment)[1].train()
    x = torch.rand(4, 1, 32, 41) * 40 - 60 if scale == "db" else torch.rand(4, 1, 32, 41)
    torch.manual_seed(5)
    ours = image(x)
    torch.manual_seed(5)
    assert torch.equal(ours, old_mel_image(x, 32, scale, augment.train(), mean, std))
    assert torch.equal(image.eval()(x), old_mel_image(x, 32, scale, None, mean, std))


def test_augmentation_fills_masks_with_the_normalised_zero_and_skips_waveforms():
    masks_only = SpectrogramAugment(time_mask=10, freq_mask=1, freq_mask_p=0.0, noise_p=0.0, gain_p=0.0)
    x = torch.randn(8, 1, 16, 30) * 5 - 40
    for mode in ("train", "per_clip"):
        transform = build_features(dict(CFGS["kaldi_fbank"], normalization=mode), -40.0, 5.0, masks_only)[1].train()
        torch.manual_seed(0)
        out = transform(x)
        masked = (out == 0).all(dim=2)  # [B, 1, T]: whole masked frames are exactly 0 after normalising
        if mode == "per_clip":  # filled with the clip's mean, then the crop is normalised again: one constant
            masked = (out == out[:, :, :1]).all(dim=2)
            fills = [out[b, 0, 0][masked[b, 0]] for b in range(len(out)) if masked[b].any()]
            assert all(torch.allclose(f, f[0]) and f[0].abs() < 0.1 for f in fills)
        assert masked.any() and masked.sum() < masked.numel()
    noisy = SpectrogramAugment(time_mask=10, noise_std=1.0, noise_p=1.0, gain_p=1.0)
    wave = build_features(CFGS["waveform"], augment=noisy)[1]
    w = torch.randn(2, 1, 1, 400)
    assert wave.augment is None and torch.equal(wave.train()(w), wave.eval()(w))


def test_cnn14s_masks_are_filled_with_each_mel_bins_batch_mean_never_0_db():
    """panns_logmel is not normalised before CNN14 (its bn0 does it): a mask filled with the normalisation
    "mean" would be 0 dB, louder than any real bin. The official model masks after bn0 with 0, i.e. each
    bin's batch mean, and so do we, before bn0."""
    masks_only = SpectrogramAugment(time_mask=10, freq_mask=1, freq_mask_p=0.0, noise_p=0.0, gain_p=0.0)
    x = torch.linspace(-90.0, -30.0, 16).view(1, 1, 16, 1) + torch.randn(8, 1, 16, 30)
    transform = build_features(CFGS["panns_logmel"], augment=masks_only)[1].train()
    assert transform.mask_fill == "bin_mean"
    torch.manual_seed(0)
    out = transform(x)
    masked = (out != x).all(dim=2, keepdim=True)  # [B, 1, 1, T]: whole frames replaced
    assert masked.any() and masked.sum() < masked.numel()
    assert torch.equal(out, torch.where(masked, x.mean(dim=(0, 1, 3), keepdim=True), x))
    assert out.max() < -25.0
    assert build_features(CFGS["logmel"])[1].mask_fill == "mean"


# ---------------------------------------------------------------- the cache and the datasets

def test_cache_keys_differ_per_front_end_and_waveform_entries_round_trip(tmp_path, monkeypatch):
    path = str(write_wav(tmp_path / "a.wav", seconds=0.3, sample_rate=16000, kind="chirp"))
    cfg = dict(OLD_CFG, sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)
    caches = {name: FeatureCache(tmp_path / "cache", build_frontend(dict(cfg, frontend=name))) for name in FRONTENDS}
    assert len({cache.entry(path) for cache in caches.values()}) == len(FRONTENDS)
    decoded = []
    real = data.cache.load_audio
    monkeypatch.setattr(data.cache, "load_audio", lambda p, sr: decoded.append(p) or real(p, sr))
    wave = caches["waveform"].get(path)
    expected = load_audio(path, 16000).numpy()[None]
    assert wave.dtype == np.float32 and wave.shape == (1, 4800) and np.array_equal(wave, expected)
    assert np.array_equal(np.load(caches["waveform"].entry(path)), expected)
    again = FeatureCache(tmp_path / "cache", Waveform(16000)).get(path)  # a later run: a hit
    assert np.array_equal(again, expected) and decoded == [path]
    fbank = caches["kaldi_fbank"].get(path)
    assert fbank.dtype == np.float32 and fbank.shape == (40, 1 + (4800 - 400) // 160)
    assert np.array_equal(np.load(caches["kaldi_fbank"].entry(path)), fbank)


def test_waveform_datasets_crop_and_window_raw_samples(tmp_path):
    path = str(write_wav(tmp_path / "short.wav", seconds=0.3, sample_rate=8000, kind="tone"))
    cfg = CFGS["waveform"]
    cache = FeatureCache(tmp_path / "cache", build_frontend(cfg))
    width, hop = window_frames(cfg, cache.frontend)
    assert (width, hop) == (4000, 2000)
    wave = torch.from_numpy(cache.get(path))
    x, label = ClipDataset([path], [1], cache, width)[0]
    assert x.shape == (1, 1, 4000) and label == 1
    start = int(torch.nonzero(x[0, 0]).min())
    assert torch.equal(x[0, :, start:start + 2400], wave) and int((x == 0).sum()) >= 1600
    windows, _, _ = TrackDataset([path], [1], cache, width, hop)[0]
    assert windows.shape == (1, 1, 1, 4000) and torch.equal(windows[0, 0, :, 800:3200], wave)


# ---------------------------------------------------------------- checkpoints and the Classifier

def save_state(path, cfg, model, norm):
    frontend = build_frontend(cfg)
    torch.save(dict(model=model.state_dict(), config=cfg, label_names=["a", "b", "c"],
                    features=dict(params=frontend.params(), norm=norm)), path)


def test_checkpoint_from_before_front_ends_predicts_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 3, pretrained=False).eval()
    save_state(tmp_path / "best.pt", OLD_CFG, model, dict(mean=-42.0, std=13.0))
    clf = Classifier.from_checkpoint(tmp_path, device="cpu")
    assert clf.min_seconds == MIN_SECONDS and type(clf.frontend) is LogMel and type(clf.input_transform) is MelImage
    old_logmel = LogMel(8000, 256, 80, 32)
    for seconds in (0.2, 1.3):  # shorter than the window (padded with its minimum), several windows
        x = signal(seconds, 8000, seed=3)
        mel = old_logmel(torch.from_numpy(x)).numpy()
        width, hop = 1 + 4000 // 80, round(0.25 * 8000 / 80)
        if mel.shape[1] < width:
            padded = np.full((32, width), mel.min(), np.float32)
            left = (width - mel.shape[1]) // 2
            padded[:, left:left + mel.shape[1]] = mel
            windows = torch.from_numpy(padded)[None, None]
        else:
            starts = list(range(0, mel.shape[1] - width + 1, hop))
            starts += [mel.shape[1] - width] if starts[-1] + width < mel.shape[1] else []
            windows = torch.from_numpy(np.stack([mel[:, s:s + width] for s in starts]))[:, None]
        with torch.no_grad():
            expected = model(old_mel_image(windows, 32, "db", None, -42.0, 13.0)).mean(0).softmax(0)
        assert torch.equal(clf.classify(x, sample_rate=8000).probabilities, expected)


class TinyNet(nn.Module):
    """Stand-in for the backbones of models/: mean over the last two axes, then a linear head."""

    def __init__(self, channels: int = 1, num_classes: int = 3):
        super().__init__()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("name", ["panns_logmel", "kaldi_fbank", "waveform"])
def test_classifier_rebuilds_any_front_end_from_the_checkpoint_alone(name, tmp_path, monkeypatch):
    cfg = dict(CFGS[name], arch="tiny")
    torch.manual_seed(1)
    model = TinyNet()
    norm = normalisation_for(cfg, [np.full((2, 2), -50.0, np.float32), np.full((2, 2), -30.0, np.float32)])
    save_state(tmp_path / "best.pt", cfg, model, norm)
    monkeypatch.setattr(evaluation.classifier, "build_model", lambda arch, k, pretrained, **kw: TinyNet(1, k))
    clf = Classifier.from_checkpoint(tmp_path / "best.pt", device="cpu")
    frontend, transform = build_features(cfg, **norm)
    assert clf.frontend.params() == frontend.params() and type(clf.input_transform) is type(transform)
    assert (clf.window, clf.hop) == window_frames(cfg, frontend)
    assert (clf.input_transform.mean, clf.input_transform.std) == (transform.mean, transform.std)
    x = signal(0.15, clf.sample_rate, seed=4)  # shorter than one window: one padded window
    features = frontend(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        expected = model(transform.eval()(cut_windows(features, clf.window, clf.hop, frontend.pad_value)))
    prediction = clf.classify(x, sample_rate=clf.sample_rate)
    assert prediction.num_windows == 1 and prediction.seconds == pytest.approx(0.15)
    torch.testing.assert_close(prediction.probabilities, expected.mean(0).softmax(0), rtol=0, atol=1e-6)
    analysis = clf.analyze(x, sample_rate=clf.sample_rate)  # the web demo's path: the same padded window
    torch.testing.assert_close(analysis.prediction.probabilities, prediction.probabilities, rtol=0, atol=1e-6)
    assert math.isclose(clf.min_seconds, 0.05)
