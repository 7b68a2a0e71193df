"""The mixed-precision and torch.compile code paths, on the CPU: no machine here has a GPU, so the autocast
branches of the training step and of evaluation run with CPU bfloat16 autocast (a test-only setting: train.py
turns autocast on for CUDA only), for the image, spectrogram and waveform layouts. This finds dtype and graph
bugs before a GPU user does; it does not replace the GPU checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

import train
from conftest import tiny_overrides, write_wav
from data.dataset import TrackDataset, collate_tracks
from data.features import build_features, normalisation_for, window_frames
from data.windows import cut_windows
from evaluation import forward_windows, predict_tracks
from evaluation.classifier import Classifier
from experiment import distributed
from experiment.engine import Runtime, backward, optimizer_step
from models import build_model, get_backbone
from test_backbones import TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, results do not depend on it

BF16 = torch.bfloat16
# bfloat16 keeps 8 significant bits (a relative step of 2^-8 = 0.4%); after a network of bf16 matmuls and
# convolutions (and, in training, BatchNorm over a batch of 6) logits differ from float32 by up to 6% of their
# largest magnitude here (resnet18 in training mode; 3% in evaluation, under 1% for CNN14 and DistilHuBERT).
# The stated tolerance: |bf16 - float32| <= 10% of max |float32 logit|; the loss within 0.01.
LOGIT_RTOL_OF_MAX = 0.1
LAYOUTS = {"image": "resnet18", "spectrogram": "cnn14", "waveform": "distilhubert"}


def runtime(amp_dtype) -> Runtime:
    return Runtime(distributed.Dist(), amp_dtype, channels_last=False)


def layout_setup(tmp_path, arch: str):
    """(front end, input transform, tiny model, a batch of front-end windows float32 [6, 1, rows, W]) for
    ``arch`` with the front end it was pretrained on and its normalisation (statistics of the clips where it
    takes the training split's), from three 1.5 s clips of different kinds."""
    fixed = get_backbone(arch).frontend or {}  # set by the backbone: not to be overridden
    args = [a for a in tiny_overrides(tmp_path, tmp_path, arch=arch, clip_seconds=1.0, eval_hop_seconds=0.5)
            if a.split("=")[0][2:] not in fixed]
    cfg, _ = train.read_config(args)
    frontend, _ = build_features(cfg)
    width, hop = window_frames(cfg, frontend)
    features = []
    for i, kind in enumerate(("chirp", "pulses", "tone")):
        x, _ = sf.read(write_wav(tmp_path / f"{kind}.wav", 1.5, cfg["sample_rate"], kind=kind, seed=i), dtype="float32")
        with torch.no_grad():
            features.append(frontend(torch.from_numpy(x)).numpy())
    norm = normalisation_for(cfg, features, frontend)
    _, transform = build_features(cfg, norm["mean"], norm["std"])
    windows = torch.cat([cut_windows(f, width, hop, frontend.pad_value)[:2] for f in features])
    torch.manual_seed(0)
    return frontend, transform, build_model(arch, 3, pretrained=False, **TINY[arch][0]), windows


def assert_close_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=LOGIT_RTOL_OF_MAX * expected.abs().max().item())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_bf16_autocast_training_step_and_evaluation_match_float32(tmp_path, layout):
    """The same weights, batch, augmentation and dropout: engine.backward + optimizer_step (train.py's step)
    and evaluation.forward_windows (evaluation's) under CPU bf16 autocast against float32."""
    frontend, transform, model, windows = layout_setup(tmp_path, LAYOUTS[layout])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    steps = {}
    for amp in (None, BF16):
        model.load_state_dict(start)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling (engine: fp16 only)
        model.train()
        transform.train()
        torch.manual_seed(1)
        with torch.no_grad():
            x = transform(windows)
        logits, loss = backward(model, scaler, x, y, y, 1.0, runtime(amp))
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        optimizer_step(optimizer, scaler)
        steps[amp] = dict(logits=logits.detach(), loss=float(loss.detach()), grads=grads,
                          weights={k: v.clone() for k, v in model.state_dict().items()})
    f32, bf16 = steps[None], steps[BF16]
    assert np.isfinite(bf16["loss"]) and bf16["loss"] == pytest.approx(f32["loss"], abs=0.01)
    assert len(bf16["grads"]) == len(f32["grads"]) and all(torch.isfinite(g).all() for g in bf16["grads"])
    assert all(torch.isfinite(w).all() for w in bf16["weights"].values() if w.is_floating_point())
    assert bf16["logits"].dtype == BF16  # the model's output under autocast; the loss is computed in float32
    assert_close_logits(bf16["logits"], f32["logits"])

    model.load_state_dict(f32["weights"])  # one model, evaluated both ways (as predict_tracks: in eval mode)
    model.eval()
    transform.eval()
    evaluated = {amp: forward_windows(model, transform, windows, torch.device("cpu"), amp) for amp in (None, BF16)}
    assert evaluated[BF16].dtype == torch.float32  # evaluation casts back before averaging windows
    assert_close_logits(evaluated[BF16], evaluated[None])
    assert torch.equal(evaluated[BF16].argmax(1), evaluated[None].argmax(1))


def test_bf16_autocast_evaluation_gives_evaluate_py_top1(trained_run):
    """The trained run's best.pt on its val split: predict_tracks under CPU bf16 autocast against
    evaluate.py's float32 evaluation, track by track."""
    import evaluate
    from data import prepare_data
    clf = Classifier.from_checkpoint(trained_run[0]["run_dir"], "cpu")
    data = prepare_data(clf.config, clf.frontend, label_names=clf.label_names, show_progress=False)
    reference = evaluate.evaluate_split(clf, data, "val", batch_size=4, show_progress=False)
    part = data.splits["val"]
    loader = DataLoader(TrackDataset(part.path, part.y, data.cache, clf.window, clf.hop, entries=part.entry),
                        batch_size=4, collate_fn=collate_tracks)
    amp = predict_tracks(clf.model, clf.input_transform, loader, torch.device("cpu"), BF16)
    assert torch.equal(amp["labels"], reference["labels"]) and len(amp["labels"]) == 6
    assert torch.equal(amp["logits"].argmax(1), reference["logits"].argmax(1))
    correct = int((amp["logits"].argmax(1) == amp["labels"]).sum())
    assert correct / len(amp["labels"]) == pytest.approx(reference["metrics"]["top1"], abs=1e-12)
    assert_close_logits(amp["logits"], reference["logits"])


@pytest.mark.slow
def test_compile_trains_an_epoch_of_the_demo_and_evaluates_as_eager(tmp_path):
    """--compile=True on the CPU (inductor, which needs a C++ compiler) trains one epoch of the demo preset.

    Its own validation (through the compiled model) equals evaluate.py's eager evaluation of its best.pt: the
    compiled graph computes what the eager one does. Against the uncompiled run, the training loss agrees to
    1%, but val top-1 need not be equal: compiled kernels round differently (a first step's loss differs by
    1e-7, its gradients by 1e-5 relative), and an epoch from scratch amplifies that (README, Reliability)."""
    import evaluate
    from torch._inductor import cpp_builder
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as err:
        pytest.skip(f"the inductor cannot build C++ here: {err}")
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        summary = train.main(["--preset=demo", "--num_epochs=1", f"--compile={compiled}", f"--out_dir={out / 'runs'}",
                              f"--cache_dir={tmp_path / 'cache'}", f"--data_root={tmp_path / 'demo'}",
                              f"--csv_path={tmp_path / 'demo.csv'}", "--swanlab_mode=disabled",
                              "--experiment_name=demo"])
        runs[compiled] = pd.read_csv(Path(summary["run_dir"]) / "history.csv").iloc[0]
    assert runs[True]["train/loss"] == pytest.approx(runs[False]["train/loss"], rel=0.01)
    eager = evaluate.main([str(tmp_path / "True" / "runs" / "demo"), "--split=val", "--device=cpu"])
    assert 100 * eager["metrics"]["top1"] == pytest.approx(runs[True]["val/acc"], abs=1e-9)
    assert eager["loss"] == pytest.approx(runs[True]["val/loss"], rel=1e-4)
