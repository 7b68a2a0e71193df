"""Backbone registry: every backbone builds tiny and trains, CNN14 loads the official checkpoint layout strictly,
transformers checkpoints load with only a new head, offline messages, front-end resolution, freezing, records.

Everything is offline and tiny: ``pretrained=False`` networks a few thousand parameters wide, checkpoints
written in tmp_path, downloads monkeypatched to fail.
"""
from __future__ import annotations

import math
import json
import os
import time
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchaudio
import transformers
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

import models.hf
import models.weights
from experiment.config import ConfigError, parse_config
from models import (ARCHS, BACKBONES, FAMILIES, PretrainedWeightsError, backbone_record, build_model,
                    freeze_backbone, freeze_feature_encoder, get_backbone, head_parameter_names, param_groups,
                    resolve_frontend, weights_path)
from models.cnn14 import Cnn14, load_official_state, read_checkpoint

_TRANSFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_WAVEFORM = dict(_TRANSFORMER, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=2, classifier_proj_size=16)
# arch -> (architecture overrides for a tiny pretrained=False network, an input batch of its layout)
TINY = {
    "cnn14": (dict(base_channels=4), (2, 1, 64, 32)),
    "cnn14_16k": (dict(base_channels=4), (2, 1, 64, 32)),
    "ast": (dict(_TRANSFORMER, max_length=64, num_mel_bins=32, patch_size=16, frequency_stride=16, time_stride=16),
            (2, 1, 32, 64)),
    "wav2vec2_base": (_WAVEFORM, (2, 1, 1, 1600)),
    "hubert_base": (_WAVEFORM, (2, 1, 1, 1600)),
    "distilhubert": (_WAVEFORM, (2, 1, 1, 1600)),
    "resnet18": ({}, (2, 3, 32, 32)),
}
HF_ARCHS = [name for name, b in BACKBONES.items() if b.family in ("spectrogram_transformer", "waveform_transformer")]
# The front-end vocabulary of the config (helper brief, "Front-end vocabulary").
FRONTEND_KEYS = {"frontend", "sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "scale", "top_db",
                 "input_layout", "normalization", "norm_mean", "norm_std", "clip_seconds"}


def tiny(arch: str, num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    overrides, shape = TINY[arch]
    return build_model(arch, num_classes, pretrained=False, **overrides), torch.randn(*shape)


# ---- registry and every backbone ----

def test_every_registry_entry_is_complete_and_has_a_tiny_test_size():
    for name, entry in BACKBONES.items():
        assert entry.name == name and entry.family in FAMILIES
        assert entry.source and entry.licence and entry.weights and entry.reference and entry.head
        assert name in TINY or name in ARCHS, f"{name}: add a tiny size to TINY"
        if entry.family == "imagenet_cnn":
            assert entry.frontend is None and entry.head == ("fc",)
        else:
            assert set(entry.frontend) <= FRONTEND_KEYS, set(entry.frontend) - FRONTEND_KEYS
            assert entry.frontend["input_layout"] == ("waveform" if entry.family == "waveform_transformer"
                                                      else "spectrogram")


def test_parameter_counts_are_those_of_the_networks():
    for name, entry in BACKBONES.items():
        with torch.device("meta"):
            model = build_model(name, 10, pretrained=False)
        head = set(head_parameter_names(model, name))
        body = sum(p.numel() for n, p in model.named_parameters() if n not in head)
        assert body == entry.params, (name, body)
    with torch.device("meta"):  # with its 527 AudioSet classes, CNN14 is the paper's 80.8 M parameters
        assert sum(p.numel() for p in build_model("cnn14", 527, pretrained=False).parameters()) == 80_753_615


@pytest.mark.parametrize("arch", list(TINY))
def test_every_backbone_builds_tiny_and_trains_on_its_layout(arch, one_thread):
    model, x = tiny(arch)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    heads = dict(model.named_parameters())
    grads = [heads[n].grad for n in head_parameter_names(model, arch)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_a_wrong_input_layout_or_too_short_an_input_is_a_clear_error(one_thread):
    for arch, bad in (("cnn14", (2, 1, 32, 64)), ("cnn14", (2, 1, 64, 31)), ("ast", (2, 3, 32, 64)),
                      ("distilhubert", (2, 1600)), ("distilhubert", (2, 1, 1, 20))):
        model, _ = tiny(arch)
        with pytest.raises(ValueError, match=r"takes \[batch, 1"):
            model(torch.randn(*bad))
    with torch.device("meta"):  # the base models' receptive field: 25 ms at 16 kHz
        with pytest.raises(ValueError, match=r">= 400 samples"):
            build_model("hubert_base", 3, pretrained=False)(torch.zeros(2, 1, 1, 399))


def test_ast_input_is_cut_or_padded_to_its_frames_with_the_normalised_padding(one_thread):
    model, x = tiny("ast")
    model.eval()
    pad = -get_backbone("ast").frontend["norm_mean"] / get_backbone("ast").frontend["norm_std"]
    assert model.pad_value == pytest.approx(0.46703, abs=1e-5)  # (0 + 4.2677393) / (4.5689974 * 2)
    short, padded = x[..., :50], torch.cat([x[..., :50], torch.full((2, 1, 32, 14), pad)], dim=3)
    longer = torch.cat([x, torch.randn(2, 1, 32, 30)], dim=3)
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(padded))
        torch.testing.assert_close(model(longer), model(x))


# ---- CNN14 and the official checkpoint layout ----

def official_cnn14_shapes(base: int = 64, classes: int = 527, n_fft: int = 1024, n_mels: int = 64) -> dict:
    """Every key of ``torch.load('Cnn14_mAP=0.431.pth')['model']`` with its shape, written from the official
    definition (audioset_tagging_cnn pytorch/models.py: Cnn14 with torchlibrosa's Spectrogram and
    LogmelFilterBank; ConvBlock(in, out): conv1, conv2 3x3 without bias, bn1, bn2)."""
    def bn(prefix, n):
        return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
                f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}
    n_freqs = n_fft // 2 + 1
    shapes = {"spectrogram_extractor.stft.conv_real.weight": (n_freqs, 1, n_fft),
              "spectrogram_extractor.stft.conv_imag.weight": (n_freqs, 1, n_fft),
              "logmel_extractor.melW": (n_freqs, n_mels), **bn("bn0", n_mels)}
    channels = [1, base, 2 * base, 4 * base, 8 * base, 16 * base, 32 * base]
    for i in range(1, 7):
        cin, cout = channels[i - 1], channels[i]
        shapes.update({f"conv_block{i}.conv1.weight": (cout, cin, 3, 3),
                       f"conv_block{i}.conv2.weight": (cout, cout, 3, 3),
                       **bn(f"conv_block{i}.bn1", cout), **bn(f"conv_block{i}.bn2", cout)})
    shapes.update({"fc1.weight": (32 * base, 32 * base), "fc1.bias": (32 * base,),
                   "fc_audioset.weight": (classes, 32 * base), "fc_audioset.bias": (classes,)})
    return shapes


def official_frontend(sample_rate=32000, n_fft=1024, n_mels=64, f_min=50.0, f_max=14000.0) -> dict:
    """The front-end tensors the official file holds, as torchlibrosa computes them: the DFT matrix
    ``omega ** (x * y)`` times the periodic Hann window, and librosa's Slaney mel matrix (= torchaudio's
    melscale_fbanks with Slaney scale and norm)."""
    x, y = np.meshgrid(np.arange(n_fft), np.arange(n_fft))
    dft = np.power(np.exp(-2j * np.pi / n_fft), x * y)[:, : n_fft // 2 + 1]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    mel = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney",
                                                mel_scale="slaney")
    return {"spectrogram_extractor.stft.conv_real.weight": torch.tensor(np.real(dft * window[:, None]).T[:, None, :],
                                                                        dtype=torch.float32),
            "spectrogram_extractor.stft.conv_imag.weight": torch.tensor(np.imag(dft * window[:, None]).T[:, None, :],
                                                                        dtype=torch.float32),
            "logmel_extractor.melW": mel}


def random_official_state(base: int, classes: int = 527, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen).abs() + 0.1)
             for k, s in official_cnn14_shapes(base, classes).items()}
    return {**state, **official_frontend()}


def test_our_cnn14_has_exactly_the_official_parameter_names_and_shapes():
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_model("cnn14", 527, pretrained=False).state_dict().items()}
    official = official_cnn14_shapes()
    network = {k: v for k, v in official.items() if not k.startswith(("spectrogram_extractor", "logmel_extractor"))}
    assert ours == network
    assert len(official) - len(network) == 3


def test_an_official_state_dict_loads_strictly_and_the_527_class_head_becomes_a_fresh_k_class_head():
    torch.manual_seed(0)
    model = Cnn14(10, base_channels=4)
    fresh_head = model.fc_audioset.weight.detach().clone()
    state = random_official_state(base=4)
    assert load_official_state(model, {"model": state, "iteration": 100}, get_backbone("cnn14").frontend,
                               "Cnn14.pth") == ["fc_audioset.weight", "fc_audioset.bias"]
    loaded = model.state_dict()
    for key in ("bn0.running_var", "conv_block3.conv2.weight", "conv_block6.bn2.bias", "fc1.weight"):
        assert torch.equal(loaded[key], state[key])
    assert model.fc_audioset.weight.shape == (10, 128) and torch.equal(model.fc_audioset.weight, fresh_head)


def test_a_k_class_official_head_of_the_same_size_is_loaded():
    model = Cnn14(527, base_channels=4)
    state = random_official_state(base=4)
    assert load_official_state(model, state, get_backbone("cnn14").frontend, "Cnn14.pth") == []
    assert torch.equal(model.fc_audioset.weight, state["fc_audioset.weight"])


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update({"conv_block3.bn_1.weight": s.pop("conv_block3.bn1.weight")}),
     ["conv_block3.bn1.weight", "conv_block3.bn_1.weight"]),
    (lambda s: s.update({"spec_augmenter.mask": torch.zeros(1)}), ["spec_augmenter.mask"]),
    (lambda s: s.pop("fc1.bias"), ["fc1.bias"]),
])
def test_a_renamed_extra_or_missing_key_is_an_error_naming_it(change, named):
    state = random_official_state(base=4)
    change(state)
    with pytest.raises(PretrainedWeightsError) as err:
        load_official_state(Cnn14(10, base_channels=4), state, get_backbone("cnn14").frontend, "Cnn14.pth")
    assert "Cnn14.pth" in str(err.value) and all(key in str(err.value) for key in named)


def test_a_checkpoint_of_another_front_end_or_width_is_an_error():
    state = {**random_official_state(base=4), **official_frontend(16000, 512, 64, 50.0, 8000.0)}
    with pytest.raises(PretrainedWeightsError, match=r"conv_real.weight has shape \(257, 1, 512\).*another --arch"):
        load_official_state(Cnn14(10, base_channels=4), state, get_backbone("cnn14").frontend, "Cnn14_16k.pth")
    htk = {**random_official_state(base=4), "logmel_extractor.melW": torch.rand(513, 64) * 0.01}
    with pytest.raises(PretrainedWeightsError, match="melW differs"):
        load_official_state(Cnn14(10, base_channels=4), htk, get_backbone("cnn14").frontend, "Cnn14.pth")
    with pytest.raises(PretrainedWeightsError, match=r"conv_block1.conv1.weight \(8, 1, 3, 3\)"):
        load_official_state(Cnn14(10, base_channels=4), random_official_state(base=8),
                            get_backbone("cnn14").frontend, "Cnn14.pth")


def test_the_16k_variant_checks_its_own_front_end():
    state = {**random_official_state(base=4), **official_frontend(16000, 512, 64, 50.0, 8000.0)}
    load_official_state(Cnn14(10, base_channels=4), state, get_backbone("cnn14_16k").frontend, "Cnn14_16k.pth")


def test_an_official_file_with_numpy_entries_reads_with_weights_only(tmp_path):
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    state = random_official_state(base=4)
    torch.save({"model": state, "iteration": np.int64(5), "statistics": np.arange(3.0)}, path)
    read = read_checkpoint(str(path))
    assert read["iteration"] == 5 and torch.equal(read["model"]["fc1.weight"], state["fc1.weight"])


# ---- transformers checkpoints ----

def save_tiny_checkpoint(arch: str, folder) -> dict:
    """A tiny checkpoint folder shaped like the real one: AST fine-tuned with its own head (7 classes here,
    527 in the real one), wav2vec2-base with its pretraining heads, HuBERT / DistilHuBERT as bare models."""
    torch.manual_seed(1)
    overrides = {k: v for k, v in TINY[arch][0].items()}
    spec = get_backbone(arch).spec
    config = getattr(transformers, spec.config_class)(**{**spec.config_kwargs, **overrides})
    if arch == "ast":
        config.num_labels = 7
        model = transformers.ASTForAudioClassification(config)
    elif arch == "wav2vec2_base":
        config.codevector_dim = config.proj_codevector_dim = 16
        config.num_codevectors_per_group = 8
        model = transformers.Wav2Vec2ForPreTraining(config)
    else:
        model = transformers.HubertModel(config)
    model.save_pretrained(folder)
    return model.state_dict()


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_a_saved_transformers_checkpoint_loads_with_a_fresh_head_of_k_classes(arch, tmp_path, one_thread):
    saved = save_tiny_checkpoint(arch, tmp_path)
    model = build_model(arch, 3, pretrained=True, weights=tmp_path)
    assert model.training
    ours = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    body = [k for k in saved if "layers.1." in k or "layer.1." in k]  # the last transformer layer
    assert body and all(torch.equal(saved[k], ours[k if k in ours else f"hubert.{k}"]) for k in body)
    head = dict(model.named_parameters())[head_parameter_names(model, arch)[-2]]
    assert head.shape[0] == 3
    _, x = tiny(arch)
    assert model(x).shape == (2, 3)


def test_legacy_weight_norm_names_of_older_uploads_load(tmp_path, one_thread):
    """Checkpoints uploaded before torch's weight-norm parametrizations store the positional convolution as
    ``weight_g`` / ``weight_v``; transformers renames them on load, and nothing is reported new but the head."""
    save_tiny_checkpoint("hubert_base", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    prefix = "encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = build_model("hubert_base", 3, pretrained=True, weights=tmp_path)
    loaded = model.state_dict()["transformer.hubert." + prefix + "parametrizations.weight.original1"]
    assert torch.equal(loaded, state[prefix + "weight_v"])


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.update({"extra.weight": torch.zeros(2)}), "extra.weight"),
    (lambda s: s.pop("encoder.layer_norm.weight"), "encoder.layer_norm.weight"),
])
def test_a_checkpoint_folder_with_other_keys_is_an_error_naming_them(edit, named, tmp_path, one_thread):
    save_tiny_checkpoint("distilhubert", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("distilhubert", 3, pretrained=True, weights=tmp_path)
    assert named in str(err.value) and "only the classification head" in str(err.value)


# ---- offline messages ----

def assert_offline_message(text: str, names: tuple[str, ...]) -> None:
    for part in names + ("--weights=PATH", "--pretrained=False"):
        assert part in text, (part, text)


def test_imagenet_offline_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("offline")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("resnet18", 10, pretrained=True)
    assert_offline_message(str(err.value), (os.path.basename(ARCHS["resnet18"][1].url),
                                            str(tmp_path / "hub" / "checkpoints") + os.sep, "$TORCH_HOME"))
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("resnet18", 10, pretrained=True, weights=tmp_path / "nothing.pth")
    assert_offline_message(str(err.value), ("nothing.pth", "resnet18-f37072fd.pth"))


@pytest.mark.parametrize("arch, file_name", [("cnn14", "Cnn14_mAP=0.431.pth"),
                                             ("cnn14_16k", "Cnn14_16k_mAP=0.438.pth")])
def test_cnn14_offline_message(arch, file_name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models.weights, "reachable", lambda *args, **kwargs: False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(arch, 10, pretrained=True)
    assert time.monotonic() - start < 10
    assert weights_path(arch) == str(tmp_path / "hub" / "checkpoints" / file_name)
    assert_offline_message(str(err.value), (file_name, weights_path(arch), "zenodo.org", "$TORCH_HOME"))


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_transformers_offline_message_fails_fast(arch, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models.hf, "reachable", lambda *args, **kwargs: False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(arch, 10, pretrained=True)
    assert time.monotonic() - start < 10
    model_id = get_backbone(arch).weights
    folder = str(tmp_path / ("models--" + model_id.replace("/", "--")))
    assert weights_path(arch) == folder
    assert_offline_message(str(err.value), (model_id, folder, "$HF_HUB_CACHE"))


# ---- front end from the backbone ----

CONFIG = dict(arch="resnet18", sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, f_min=0.0, f_max=0.0,
              clip_seconds=10.0, frontend="logmel", input_layout="image", normalization="auto", norm_mean=0.0,
              norm_std=1.0, resize=224, preset="")
PRESETS = {"demo": dict(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, clip_seconds=2.0, resize=64)}


def resolved(argv: list[str]) -> dict:
    explicit = {a[2:].split("=", 1)[0] for a in argv if not a.startswith("--preset=")}
    return resolve_frontend(parse_config(argv, CONFIG, PRESETS), explicit)


def test_a_pretrained_front_end_overrides_a_preset():
    cfg = resolved(["--preset=demo", "--arch=cnn14"])
    assert cfg | dict(get_backbone("cnn14").frontend) == cfg
    assert (cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["f_max"]) == (32000, 1024, 320, 14000.0)
    assert cfg["clip_seconds"] == 2.0 and cfg["resize"] == 64  # not part of CNN14's front end: the preset's
    ast = resolved(["--preset=demo", "--arch=ast"])
    assert (ast["frontend"], ast["n_mels"], ast["clip_seconds"], ast["normalization"]) == ("kaldi_fbank", 128, 10.24,
                                                                                           "fixed")
    assert ast["norm_mean"] == -4.2677393 and ast["norm_std"] == pytest.approx(9.1379948)
    wave = resolved(["--arch=distilhubert"])
    assert (wave["frontend"], wave["sample_rate"], wave["input_layout"]) == ("waveform", 16000, "waveform")


def test_an_explicit_conflicting_front_end_key_is_an_error_with_the_fix():
    with pytest.raises(ConfigError) as err:
        resolved(["--preset=demo", "--arch=cnn14", "--sample_rate=16000", "--n_mels=128"])
    text = str(err.value)
    for part in ("--sample_rate=16000", "sample_rate=32000", "--n_mels=128", "n_mels=64", "Drop these flags",
                 "--arch=cnn14", "another --arch"):
        assert part in text, part


def test_an_explicit_equal_key_is_fine_and_imagenet_keeps_the_config():
    assert resolved(["--arch=cnn14", "--sample_rate=32000", "--f_max=14000"])["sample_rate"] == 32000
    cfg = parse_config(["--preset=demo", "--sample_rate=8000"], CONFIG, PRESETS)
    assert resolve_frontend(cfg, {"sample_rate"}) == cfg


# ---- fine-tuning controls ----

def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_step(model, x, optimizer) -> None:
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    optimizer.step()


@pytest.mark.parametrize("arch", ["cnn14", "distilhubert", "resnet18"])
def test_a_linear_probe_changes_only_the_head(arch, one_thread):
    model, x = tiny(arch)
    trainable = freeze_backbone(model, arch)
    assert trainable == head_parameter_names(model, arch)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    before = snapshot(model)
    train_step(model, x, torch.optim.AdamW(param_groups(model, arch, 1e-2), lr=1e-2))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(trainable)  # BatchNorm running statistics of the body included: unchanged


def test_freeze_feature_encoder_keeps_the_conv_encoder(one_thread):
    model, x = tiny("wav2vec2_base")
    freeze_feature_encoder(model)
    encoder = [n for n, _ in model.named_parameters() if ".feature_extractor." in n]
    assert encoder and all(not p.requires_grad for n, p in model.named_parameters() if n in encoder)
    before = snapshot(model)
    train_step(model, x, torch.optim.SGD(param_groups(model, "wav2vec2_base", 0.1), lr=0.1))
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in encoder)
    assert not torch.equal(before["transformer.wav2vec2.encoder.layers.0.attention.q_proj.weight"],
                           after["transformer.wav2vec2.encoder.layers.0.attention.q_proj.weight"])
    with pytest.raises(ValueError, match="wav2vec2_base, hubert_base, distilhubert"):
        freeze_feature_encoder(tiny("cnn14")[0])


def test_param_groups_put_the_head_at_its_multiplied_learning_rate(one_thread):
    model, _ = tiny("ast")
    groups = param_groups(model, "ast", 1e-5, head_lr_multiplier=10.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("body", 1e-5), ("head", pytest.approx(1e-4))]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups[1]["params"]) == sorted(head_parameter_names(model, "ast"))
    assert all(names[id(p)].startswith("transformer.classifier.") for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(names)
    model.transformer.audio_spectrogram_transformer.embeddings.cls_token.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, "ast", 1e-5)) == len(names) - 1
    with pytest.raises(ValueError, match="fc"):
        param_groups(model, "resnet18", 1e-3)


# ---- rebuilding from a checkpoint ----

@pytest.mark.parametrize("arch", list(TINY))
def test_a_record_rebuilds_the_same_architecture(arch, one_thread):
    model, x = tiny(arch, seed=3)
    record = json.loads(json.dumps(backbone_record(arch, model)))
    assert record["name"] == arch
    rebuilt = build_model(arch, 3, pretrained=True, record=record)  # a record never downloads
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_old_resnet_checkpoints_without_a_record_rebuild_and_records_check_their_arch():
    model = build_model("resnet18", 4, pretrained=False)
    build_model("resnet18", 4, pretrained=False).load_state_dict(model.state_dict(), strict=True)
    assert backbone_record("resnet18", model) == {"name": "resnet18"}
    with pytest.raises(ValueError, match="'cnn14', not arch='resnet18'"):
        build_model("resnet18", 4, pretrained=False, record={"name": "cnn14"})
    with pytest.raises(ValueError, match="need pretrained=False"):
        build_model("cnn14", 4, pretrained=True, base_channels=4)


def test_cnn14s_new_head_starts_at_chance_loss():
    """The new head is initialised near zero (MAE's fine-tuning recipe), so a fresh CNN14's first loss is
    ln(K) whatever its body outputs; the official Xavier head started FSDD training at 4.3 for ln 10 = 2.3."""
    torch.manual_seed(0)
    model = build_model("cnn14", 10, pretrained=False, base_channels=8).train()
    x, y = torch.randn(6, 1, 64, 64) * 20 - 40, torch.arange(6)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert abs(float(loss) - math.log(10)) < 1e-3
    assert float(model.fc_audioset.weight.std()) < 1e-4 and not model.fc_audioset.bias.any()
