"""Audio backbones in the training loop and the fine-tuning controls (issue 11): one 1-epoch run per family on
real GTZAN clips whose checkpoints predict.py and evaluate.py agree on, frozen parameters stay put, accumulated
micro-batches equal one big batch, the cosine schedule follows its formula, early stopping, front-end conflicts.

Tiny variants of the backbones are registered in-process (the registry entry with a smaller builder), so the
runs take seconds on a CPU; everything is offline (``pretrained=False``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

import evaluate
import predict
import train
from conftest import GTZAN_MINI, make_tree
from evaluation.classifier import Classifier
from experiment.checkpoint import load_checkpoint, save_checkpoint
from experiment.config import ConfigError
from experiment.engine import Runtime, backward, build_model_and_optimizer, optimizer_step, train_step
from experiment.distributed import Dist
from experiment.schedules import get_schedule
from models import BACKBONES
from models import cnn14, hf

_TRANSFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
_WAVEFORM = dict(_TRANSFORMER, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=2, classifier_proj_size=16)


class Flat(nn.Module):
    """A BatchNorm-free image classifier (flatten, a linear body, the linear head ``fc``): micro-batches are
    independent."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body, self.fc = nn.Linear(3 * 8 * 8, 16), nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.body(x.flatten(1))))


def _flat_builder(entry, num_classes, pretrained, weights=None, record=None, **overrides):
    return Flat(num_classes)


def tiny_entries() -> dict:
    """Tiny registry entries, one per family: the real front ends (AST's window cut to 64 frames)."""
    ast = BACKBONES["ast"]
    return {
        "cnn14_tiny": dataclasses.replace(BACKBONES["cnn14"], name="cnn14_tiny",
                                          builder=functools.partial(cnn14.build, base_channels=4)),
        "ast_tiny": dataclasses.replace(
            ast, name="ast_tiny", frontend={**ast.frontend, "clip_seconds": 0.64},
            builder=functools.partial(hf.build, **_TRANSFORMER, max_length=64, num_mel_bins=128, patch_size=16,
                                      frequency_stride=16, time_stride=16)),
        "distilhubert_tiny": dataclasses.replace(BACKBONES["distilhubert"], name="distilhubert_tiny",
                                                 builder=functools.partial(hf.build, **_WAVEFORM)),
        "flat_tiny": dataclasses.replace(BACKBONES["resnet18"], name="flat_tiny", builder=_flat_builder),
    }


@pytest.fixture(scope="module", autouse=True)
def tiny_backbones():
    entries = tiny_entries()
    BACKBONES.update(entries)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for name in entries:
        del BACKBONES[name]


@pytest.fixture(scope="module")
def gtzan_clips(tmp_path_factory):
    """2 genres x 3 GTZAN tracks cut to their first 2 s (22050 Hz)."""
    if not GTZAN_MINI.is_dir():
        pytest.skip(f"{GTZAN_MINI} is missing")
    root = tmp_path_factory.mktemp("gtzan") / "genres"
    for genre in ("blues", "classical"):
        (root / genre).mkdir(parents=True)
        for path in sorted((GTZAN_MINI / genre).glob("*.wav"))[:3]:
            audio, rate = sf.read(path, frames=2 * 22050, dtype="float32")
            sf.write(root / genre / path.name, audio, rate)
    return root


def run_args(tmp_path, data_root, name, **extra) -> list[str]:
    """A 1-epoch run of batches of 2 written under ``tmp_path``; no feature key unless ``extra`` sets it."""
    cfg = dict(data_root=data_root, csv_path=tmp_path / f"{name}.csv", cache_dir=tmp_path / "cache",
               out_dir=tmp_path / "runs", swanlab_mode="disabled", pretrained=False, batch_size=2, num_epochs=1,
               warmup_epochs=0, lr_step_size=0, num_workers=0, experiment_name=name, learning_rate=1e-3,
               time_mask=5, freq_mask=4, eval_hop_seconds=1.0, arch=name)
    cfg.update(extra)
    return [f"--{k}={v}" for k, v in cfg.items()]


# The config keys added by issue 11: checkpoints written before it lack them.
NEW_KEYS = ("frontend", "input_layout", "normalization", "norm_mean", "norm_std", "weights", "freeze_backbone",
            "freeze_feature_encoder", "grad_accum_steps", "head_lr_multiplier", "lr_schedule", "warmup_ratio",
            "early_stopping_patience", "early_stopping_min_delta")
IMAGE = dict(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32, resize=32, clip_seconds=1.0)
FAMILIES = {"resnet18": IMAGE, "cnn14_tiny": dict(clip_seconds=1.0), "ast_tiny": {},
            "distilhubert_tiny": dict(clip_seconds=1.0)}


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_one_epoch_per_family_gives_checkpoints_that_predict_and_evaluate_agree_on(arch, gtzan_clips, tmp_path,
                                                                                    capsys):
    summary = train.main(run_args(tmp_path, gtzan_clips, arch, **FAMILIES[arch]))
    run = tmp_path / "runs" / arch
    state = load_checkpoint(run / "best.pt")
    entry = BACKBONES[arch]
    assert state["backbone"]["name"] == arch
    for key, value in (entry.frontend or {}).items():  # the backbone's front end decided the features
        assert state["config"][key] == pytest.approx(value), key
    clf = Classifier.from_checkpoint(run, "cpu")
    assert state["features"]["params"] == clf.frontend.params()
    out = evaluate.main([str(run), "--device=cpu"])
    assert out["split"] == "val" and len(out["paths"]) == 2  # 1 of 3 clips per genre
    assert 100 * out["metrics"]["top1"] == pytest.approx(summary["summary/val_acc"])
    capsys.readouterr()
    assert predict.main([str(run), *out["paths"], "--json", "--top_k=2", "--device=cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    calibrated = (out["logits"] / clf.temperature).softmax(1)  # the run's temperature, fitted on val
    for entry_out, p in zip(doc["predictions"], calibrated):
        by_label = {t["label"]: t["probability"] for t in entry_out["top_k"]}
        np.testing.assert_allclose([by_label[n] for n in clf.label_names], p.numpy(), atol=1e-5, rtol=0)
    if arch == "resnet18":  # a checkpoint written before backbone records existed still loads
        old = {k: v for k, v in state.items() if k != "backbone"}
        old["config"] = {k: v for k, v in state["config"].items() if k not in NEW_KEYS}
        save_checkpoint(old, tmp_path / "old.pt")
        probs = Classifier.from_checkpoint(tmp_path / "old.pt", "cpu").classify(out["paths"][0]).probabilities
        torch.testing.assert_close(probs, calibrated[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- freezing
def cpu_runtime() -> Runtime:
    return Runtime(Dist(), None, False)


@pytest.mark.parametrize("arch, key, frozen_prefix", [("cnn14_tiny", "freeze_backbone", ""),
                                                      ("distilhubert_tiny", "freeze_feature_encoder",
                                                       "transformer.hubert.feature_extractor.")])
def test_frozen_parameters_do_not_change(arch, key, frozen_prefix):
    cfg = dict(train.CONFIG, arch=arch, learning_rate=1e-2, **{key: True})
    torch.manual_seed(0)
    model, optimizer, scaler = build_model_and_optimizer(cfg, 3, cpu_runtime(), pretrained=False)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    head = BACKBONES[arch].head
    x = torch.randn(4, 1, 64, 100) if arch == "cnn14_tiny" else torch.randn(4, 1, 1, 1600)
    y = torch.tensor([0, 1, 2, 0])
    model.train()
    for _ in range(2):
        train_step(model, optimizer, scaler, x, y, y, 1.0, cpu_runtime())
    after = model.state_dict()
    frozen = [n for n in before if n.startswith(frozen_prefix) and not any(n.startswith(h + ".") for h in head)]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)  # BatchNorm statistics included
    trained = [n for n in before if n not in frozen and before[n].is_floating_point()]
    assert any(not torch.equal(before[n], after[n]) for n in trained)


# ---------------------------------------------------------------- gradient accumulation
def test_accumulated_micro_batches_equal_one_big_batch_in_float64():
    torch.manual_seed(0)
    model = Flat(3).double()
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    backward(model, scaler, x, y, y, 1.0, cpu_runtime())
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(4), y.chunk(4)):
        backward(model, scaler, xs, ys, ys, 1.0, cpu_runtime(), loss_scale=1 / 4)
    for a, b in zip(big, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    optimizer_step(optimizer, scaler)
    assert all(p.grad is None for p in model.parameters())


def test_the_training_loop_accumulates_as_one_big_batch_and_steps_the_cosine_schedule(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("chirp", "tone"), per_class=5)  # 8 train clips
    common = dict(augment=False, mixup_alpha=0.0, weight_decay=0.0, lr_schedule="cosine", warmup_ratio=0.5,
                  **{**IMAGE, "resize": 8})
    states = {}
    for name, batch, accum in (("big", 6, 1), ("micro", 2, 3)):  # optimiser steps of 6 and 2 clips both times
        train.main(run_args(tmp_path, root, "flat_tiny", experiment_name=name, batch_size=batch,
                            grad_accum_steps=accum, **common))
        states[name] = load_checkpoint(tmp_path / "runs" / name / "last.pt")
    for key, value in states["big"]["model"].items():
        torch.testing.assert_close(states["micro"]["model"][key], value, atol=1e-5, rtol=0)
    assert states["micro"]["scheduler"]["last_epoch"] == states["big"]["scheduler"]["last_epoch"] == 2
    assert states["micro"]["optimizer"]["state"][0]["step"] == 2  # one optimiser step per group of 3 micro-batches


def test_an_interrupt_under_accumulation_lands_on_an_optimiser_step_and_resumes_exactly(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "audio", classes=("chirp", "tone"), per_class=5)  # 4 micro-batches of 2 per epoch
    common = dict(augment=False, grad_accum_steps=2, lr_schedule="cosine", warmup_ratio=0.25, head_lr_multiplier=10.0,
                  num_epochs=2, **{**IMAGE, "resize": 8})
    train.main(run_args(tmp_path / "whole", root, "flat_tiny", **common))
    real_step_seed = train.step_seed

    def interrupt(seed, rank, epoch, step):
        if (epoch, step) == (1, 0):  # Ctrl-C during the first micro-batch of an optimiser step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step_seed(seed, rank, epoch, step)

    monkeypatch.setattr(train, "step_seed", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.main(run_args(tmp_path / "parts", root, "flat_tiny", **common))
    monkeypatch.setattr(train, "step_seed", real_step_seed)
    run = tmp_path / "parts" / "runs" / "flat_tiny"
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"], state["scheduler"]["last_epoch"]) == (1, 2, 3)  # the group finished
    train.main([f"--resume={run}"])
    whole = load_checkpoint(tmp_path / "whole" / "runs" / "flat_tiny" / "last.pt")
    resumed = load_checkpoint(run / "last.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, atol=1e-6, rtol=0)
    groups = resumed["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["body", "head"] and resumed["scheduler"]["last_epoch"] == 4
    assert (groups[0]["initial_lr"], groups[1]["initial_lr"]) == pytest.approx((1e-3, 1e-2))
    # after 3 of 4 optimiser steps (1 of warmup): cosine factor 0.5 * (1 + cos(pi * 2 / 3)) = 0.25 on both groups
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([2.5e-4, 2.5e-3])


def test_cosine_schedule_matches_its_formula_and_transformers():
    from transformers import get_cosine_schedule_with_warmup
    cfg = dict(train.CONFIG, lr_schedule="cosine", num_epochs=3, warmup_ratio=0.1, learning_rate=2e-3)
    lrs = {}
    for name in ("ours", "hf"):
        optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg["learning_rate"])
        scheduler = (get_schedule("cosine").build(optimizer, cfg, 5) if name == "ours" else
                     get_cosine_schedule_with_warmup(optimizer, 2, 15))
        lrs[name] = []
        for _ in range(15):
            lrs[name].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    total, warmup = 15, math.ceil(0.1 * 15)  # 2 warmup steps
    formula = [2e-3 * (s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
               for s in range(total)]
    assert lrs["ours"] == pytest.approx(formula, rel=1e-12, abs=1e-15)
    assert lrs["ours"] == pytest.approx(lrs["hf"], rel=1e-12, abs=1e-15)
    assert get_schedule("cosine").per == "step" and get_schedule("step").per == "epoch"


# ---------------------------------------------------------------- early stopping
def test_stalled_reads_the_history():
    rows = [{"train/epoch": e + 1, "val/acc": a} for e, a in enumerate([50.0, 60.0, 60.4, 60.3])]
    assert train.stalled(rows[:3], patience=2, min_delta=0.5) is None
    reason = train.stalled(rows, patience=2, min_delta=0.5)
    assert "last improvement: 60.0% at epoch 2" in reason and "for 2 epoch(s)" in reason
    assert train.stalled(rows, patience=2, min_delta=0.0) is None  # 60.4 counts without a min_delta


def test_early_stopping_stops_at_the_right_epoch_and_reports_the_best_checkpoint(tmp_path, capsys):
    root = make_tree(tmp_path / "audio", classes=("chirp", "tone"), per_class=5)
    summary = train.main(run_args(tmp_path, root, "flat_tiny", num_epochs=6, early_stopping_patience=2,
                                  early_stopping_min_delta=100.0, **{**IMAGE, "resize": 8}))
    out = capsys.readouterr().out
    assert "early stopping after epoch 3: val top-1 has not improved by more than 100 points for 2 epoch(s)" in out
    state = load_checkpoint(tmp_path / "runs" / "flat_tiny" / "last.pt")
    assert state["epoch"] == 3 and [int(r["train/epoch"]) for r in state["history"]] == [1, 2, 3]
    best = load_checkpoint(tmp_path / "runs" / "flat_tiny" / "best.pt")
    metrics = json.loads((tmp_path / "runs" / "flat_tiny" / "metrics.json").read_text())["val"]
    assert metrics["epoch"] == best["best"]["epoch"] == summary["summary/best_epoch"]
    assert f"best val top-1 {summary['summary/best_val_acc']:.1f}% at epoch {summary['summary/best_epoch']}" in out


# ---------------------------------------------------------------- front end and presets
def test_a_pretrained_front_end_applies_under_a_preset_and_an_explicit_conflict_errors(tmp_path):
    cfg, _ = train.read_config(["--preset=demo", "--arch=cnn14"])
    assert (cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"]) == (32000, 1024, 320, 64)
    assert (cfg["data_root"], cfg["batch_size"]) == (".cache/demo", 16)  # demo's data and recipe
    cfg, _ = train.read_config(["--preset=demo,cnn14"])  # demo's data, CNN14's recipe
    assert (cfg["data_root"], cfg["batch_size"], cfg["mixup_alpha"], cfg["time_mask"]) == (".cache/demo", 32, 1.0, 64)
    assert train.read_config(["--arch=ast", "--sample_rate=16000"])[0]["frontend"] == "kaldi_fbank"  # same value
    with pytest.raises(ConfigError, match=r"--sample_rate=22050.*cnn14 was pretrained on sample_rate=32000"):
        train.main(["--arch=cnn14", "--sample_rate=22050", f"--out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="--lr_schedule=linear: choose one of step, cosine"):
        train.read_config(["--lr_schedule=linear"])


def test_bench_prints_one_line_per_backbone_at_its_own_input(tmp_path, capsys):
    import bench
    root = make_tree(tmp_path / "audio", classes=("chirp", "tone"), per_class=3)
    rates = bench.main([f"--data_root={root}", f"--cache_dir={tmp_path / 'cache'}", "--backbones=cnn14_tiny,flat_tiny",
                        "--batch_size=2", "--steps=1", "--rounds=1", "--warmup=0", "--resize=8"])
    assert list(rates) == ["cnn14_tiny", "flat_tiny"] and all(b > 0 and c > 0 for b, c in rates.values())
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("cnn14_tiny") and "1x64x1001" in line for line in lines)  # 10 s at 32 kHz, hop 320
    assert any(line.startswith("flat_tiny") and "3x8x8" in line for line in lines)
