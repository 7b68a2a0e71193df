"""Weight averaging, class-balanced sampling and label smoothing (issue 18), and a run with the new
augmentations end to end: what it records, and that resume restores the average exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_tree, swanlab_metrics, tiny_overrides
from data.dataset import EpochSampler, class_balance_weights
from experiment.checkpoint import load_checkpoint
from experiment.ema import build_ema, ema_checkpoint, restore_ema

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_the_ema_equals_its_formula_over_a_few_steps_buffers_included():
    net = small_net()
    ema = build_ema(net, 0.9)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    expected = None
    for step in range(4):
        x = torch.randn(8, 4)
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
        ema.update_parameters(net)
        now = {k: v.detach().clone().float() for k, v in net.state_dict().items()}
        expected = now if expected is None else {k: 0.9 * expected[k] + 0.1 * now[k] for k in now}
    averaged = ema.module.state_dict()
    for key in ("0.weight", "3.bias", "1.running_mean", "1.running_var"):  # weights and BatchNorm statistics
        torch.testing.assert_close(averaged[key], expected[key], rtol=0, atol=1e-6)
    assert int(ema.n_averaged) == 4
    assert not torch.allclose(averaged["0.weight"], net.state_dict()["0.weight"])
    assert build_ema(net, 0.0) is None
    with pytest.raises(ValueError, match="ema_decay"):
        build_ema(net, 1.0)

    # a checkpoint holds the average as "model" and the trained weights beside it; restoring gives both back
    weights, saved = ema_checkpoint(ema, net)
    fresh, fresh_ema = small_net(), None
    fresh_ema = build_ema(fresh, 0.9)
    restore_ema(fresh_ema, fresh, dict(model=weights, ema=saved))
    assert int(fresh_ema.n_averaged) == 4
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
        assert torch.equal(fresh_ema.module.state_dict()[key], averaged[key])


def test_the_balanced_sampler_draws_classes_uniformly_and_reproducibly():
    labels = [0] * 80 + [1] * 15 + [2] * 5  # imbalanced 16:3:1
    weights = class_balance_weights(labels)
    assert weights[0] == pytest.approx(1 / 80) and weights[-1] == pytest.approx(1 / 5)
    sampler = EpochSampler(len(labels), seed=3, weights=weights)
    drawn = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        order = [i for i, _ in sampler]
        assert len(order) == len(labels)
        drawn += [labels[i] for i in order]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.03)
    sampler.set_epoch(4)
    again = [i for i, _ in sampler]
    sampler.set_epoch(4, start=10)
    assert [i for i, _ in sampler] == again[10:]  # resume mid-epoch: the same draws, minus those done
    ranks = [EpochSampler(len(labels), 3, rank, 2, weights) for rank in (0, 1)]
    for r in ranks:
        r.set_epoch(4)
    halves = [[i for i, _ in r] for r in ranks]
    assert len(halves[0]) == len(halves[1]) == 50 and sorted(halves[0] + halves[1]) != list(range(100))


def test_label_smoothing_is_torchs_smoothed_cross_entropy():
    from experiment.engine import Runtime, backward
    from experiment.distributed import Dist
    runtime = Runtime(Dist(), None, False)  # rank 0 of 1 on the CPU
    net = nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    logits, loss = backward(net, scaler, x, y, y, 1.0, runtime, label_smoothing=0.1)
    log_p = logits.detach().log_softmax(1)
    by_hand = -(0.9 * log_p[torch.arange(5), y] + 0.1 * log_p.mean(1)).mean()
    assert float(loss) == pytest.approx(float(by_hand), abs=1e-6)


def test_a_run_with_every_new_lever_trains_records_its_keys_and_resumes_the_average_exactly(tmp_path):
    import pandas as pd
    import train
    root = make_tree(tmp_path / "audio", per_class=6)
    levers = dict(speed_p=0.5, time_stretch_p=0.5, vtlp_p=0.5, pitch_shift_p=0.3, reverb_p=0.3, background_p=0.3,
                  band_gain_p=0.5, ema_decay=0.8, label_smoothing=0.1, balanced_sampler=True, batch_size=4,
                  confusion_every=0)
    whole = tmp_path / "whole"
    summary = train.main(tiny_overrides(whole, root, num_epochs=2, **levers))
    run = whole / "runs" / "tiny"
    state = load_checkpoint(run / "last.pt")
    assert {k: state["config"][k] for k in levers} == levers  # every new key is in the checkpoint
    assert state["ema"]["n_averaged"] == 2 * 3 and set(state["ema"]["online"]) == set(state["model"])
    assert not torch.equal(state["ema"]["online"]["fc.weight"], state["model"]["fc.weight"])
    # the speed copies were cached: three entries per training clip
    assert len(list((whole / "cache" / "features").rglob("*.npy"))) == 18 + 2 * 12
    card = (run / "README.md").read_text()
    assert "| `ema_decay` | `0.8` |" in card and "vtlp (vtlp_p=0.5, vtlp_warp=0.1)" in card
    assert "speed (speed_p=0.5, speed_factor=0.1)" in card
    logged = swanlab_metrics(whole / "swanlog")["tiny"]
    assert len(logged["val/acc"]) == 2
    # evaluation reads best.pt's "model": the average, and evaluate.py gives training's number
    import evaluate
    report = evaluate.main([str(run), "--split=val"])
    assert report["metrics"]["top1"] * 100 == pytest.approx(summary["summary/val_acc"], abs=1e-6)

    parts = tmp_path / "parts"
    train.main(tiny_overrides(parts, root, num_epochs=1, **levers))
    train.main([f"--resume={parts / 'runs' / 'tiny'}", "--num_epochs=2"])
    resumed = load_checkpoint(parts / "runs" / "tiny" / "last.pt")
    for key, value in state["model"].items():  # the average, to 1e-6
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
    for key, value in state["ema"]["online"].items():
        torch.testing.assert_close(resumed["ema"]["online"][key], value, rtol=0, atol=1e-6, msg=key)
    assert resumed["ema"]["n_averaged"] == state["ema"]["n_averaged"]
    expected = pd.read_csv(run / "history.csv")["val/acc"]
    assert pd.read_csv(parts / "runs" / "tiny" / "history.csv")["val/acc"].tolist() == pytest.approx(expected.tolist())


def test_bad_new_keys_fail_before_any_training(tmp_path):
    import train
    from experiment.config import ConfigError
    for bad, pattern in (("--ema_decay=1.5", "ema_decay"), ("--label_smoothing=-0.1", "label_smoothing"),
                         ("--speed_p=2", "speed_p"), ("--speed_factor=1.5", "speed_factor")):
        with pytest.raises(ConfigError, match=pattern):
            train.read_config([bad])
    assert math.isfinite(0.0)
