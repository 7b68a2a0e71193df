"""Predictions a user can act on, end to end: training stores a temperature fitted on val and reports ECE and
the coverage table; checkpoints without one predict exactly as before; evaluate.py fits one for such a run;
``unknown`` below --min_confidence in predict.py and Classifier; the timeline of a joined recording of known
parts has the right windows, segment times and labels, from Python, predict.py's CSV and its JSON."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_tree, swanlab_metrics, tiny_overrides
from data.demo import _clip
from evaluation.calibration import fit_calibration, store_calibration
from evaluation.classifier import Classifier
from evaluation.selective import UNKNOWN
from experiment.checkpoint import load_checkpoint, save_checkpoint

import evaluate  # the scripts at the repository root (conftest puts it on sys.path)
import predict

PARTS = ("chirp", "pulses", "tone")  # the joined recording: 2 s of each, in this order
CALIBRATION_KEYS = {"temperature", "ece_before", "ece_after", "fitted_on", "tracks"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model that labels 1 s windows of chirp/pulses/tone right (30 one-second clips per class, 2 epochs,
    no augmentation: 120 of 120 windows right on 20 joined recordings when this was written), with evaluation
    windows of 1 s every 0.5 s. Returns its run folder."""
    import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster for a model this small
    try:
        tmp = tmp_path_factory.mktemp("predictions")
        root = make_tree(tmp / "audio", PARTS, per_class=30, seconds=1.0)
        summary = train.main(tiny_overrides(tmp, root, clip_seconds=1.0, eval_hop_seconds=0.5, num_epochs=2,
                                            augment=False, mixup_alpha=0.0, swanlab_mode="disabled",
                                            experiment_name="parts"))
    finally:
        torch.set_num_threads(threads)
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def joined(tmp_path_factory) -> Path:
    """6 s at 8 kHz: chirp 0-2 s, pulses 2-4 s, tone 4-6 s (two fresh one-second clips each)."""
    rng = np.random.default_rng(2024)
    path = tmp_path_factory.mktemp("joined") / "joined.wav"
    sf.write(path, np.concatenate([_clip(kind, rng, 8000, 1.0) for kind in PARTS for _ in range(2)]), 8000)
    return path


def without_calibration(run: Path, folder: Path) -> Path:
    """A copy of ``run``'s best.pt without its ``calibration`` entry: a checkpoint from before calibration."""
    folder.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(run)
    del state["calibration"]
    save_checkpoint(state, folder / "best.pt")
    return folder / "best.pt"


# ---------------------------------------------------------------- training's report (the session's tiny run)

def test_training_stores_the_temperature_and_reports_ece_and_coverage(trained_run):
    summary, tmp = trained_run
    run = Path(summary["run_dir"])
    record = load_checkpoint(run)["calibration"]
    assert CALIBRATION_KEYS <= set(record) and record["fitted_on"] == "val" and record["tracks"] == 6
    val = json.loads((run / "metrics.json").read_text())["val"]
    c = val["calibration"]
    assert c["temperature"] == record["temperature"] and c["bins"] == 15 and c["fit_tracks"] == 6
    assert 0 <= c["ece_after"] <= 1 and c["ece_before"] == pytest.approx(record["ece_before"])  # val is the split
    assert [r["coverage"] for r in val["selective"]] == [0.5, 0.8, 0.9, 1.0]
    assert [r["tracks"] for r in val["selective"]] == [3, 5, 6, 6]
    assert val["selective"][-1]["top1"] == pytest.approx(val["top1"])  # full coverage: the plain top-1
    assert (run / "reliability_val.png").stat().st_size > 0
    keys = swanlab_metrics(tmp / "swanlog")["tiny"]
    assert keys["summary/temperature"][-1][1] == pytest.approx(record["temperature"])
    assert keys["summary/val_ece_after"][-1][1] == pytest.approx(100 * c["ece_after"])
    assert summary["summary/val_acc_at_coverage100"] == pytest.approx(summary["summary/val_acc"])
    card = (run / "README.md").read_text()
    assert "## Calibration and \"unknown\"" in card and "![reliability diagram, val](reliability_val.png)" in card
    assert f"{100 * c['ece_before']:.1f}% raw -> {100 * c['ece_after']:.1f}% calibrated" in card
    assert "--min_confidence" in card


# ---------------------------------------------------------------- old checkpoints, evaluate.py

def test_a_checkpoint_without_a_temperature_predicts_as_before(model, joined, tmp_path, capsys, one_thread):
    old = Classifier.from_checkpoint(without_calibration(model, tmp_path / "old"), "cpu")
    assert old.temperature == 1.0 and "calibration" not in old.meta
    with torch.no_grad():
        mel = old.spectrogram(joined)
        logits = old.model(old.input_transform(old.windows(mel)))
    raw = logits.mean(0).softmax(0)
    torch.testing.assert_close(old.classify(joined).probabilities, raw, atol=1e-6, rtol=0)  # the raw softmax
    # the same weights with a temperature of 2: softer probabilities, the same top-1; --uncalibrated: as before
    store_calibration(tmp_path / "old", dict(temperature=2.0, ece_before=0.2, ece_after=0.05, fitted_on="val",
                                             tracks=18))
    new = Classifier.from_checkpoint(tmp_path / "old", "cpu")
    assert new.temperature == 2.0
    torch.testing.assert_close(new.classify(joined).probabilities, (logits.mean(0) / 2).softmax(0), atol=1e-6, rtol=0)
    assert new.classify(joined).top_k(1)[0][0] == old.classify(joined).top_k(1)[0][0]
    raw_again = Classifier.from_checkpoint(tmp_path / "old", "cpu", calibrated=False)
    torch.testing.assert_close(raw_again.classify(joined).probabilities, raw, atol=1e-6, rtol=0)
    for flags, temperature in (([], 2.0), (["--uncalibrated"], 1.0)):
        assert predict.main([str(tmp_path / "old"), str(joined), "--json", *flags]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["temperature"] == temperature and doc["calibrated"] is (temperature == 2.0)


def test_evaluate_fits_and_stores_a_temperature_for_a_run_without_one(model, tmp_path, capsys, one_thread):
    ckpt = without_calibration(model, tmp_path / "old")
    out = evaluate.main([str(ckpt.parent), "--device=cpu"])
    record = load_checkpoint(ckpt)["calibration"]
    assert record == fit_calibration(out["logits"], out["labels"])  # fitted on the val split's track logits
    assert out["calibration"]["temperature"] == record["temperature"] and len(out["selective"]) == 4
    saved = json.loads((tmp_path / "old" / "metrics.json").read_text())["val"]
    assert saved["calibration"]["ece_after"] == pytest.approx(out["calibration"]["ece_after"])
    assert Path(out["reliability_png"]).stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"temperature {record['temperature']:.3f} fitted on {record['tracks']} val tracks, stored in" in printed
    assert "ECE (15 bins)" in printed and "coverage" in printed
    evaluate.main([str(ckpt.parent), "--device=cpu"])  # a second run keeps the stored record
    assert "stored in" not in capsys.readouterr().out and load_checkpoint(ckpt)["calibration"] == record


# ---------------------------------------------------------------- unknown

def test_unknown_exactly_below_min_confidence(model, joined, tmp_path, capsys, one_thread):
    noise = tmp_path / "noise.wav"  # out of set: none of the three sounds
    sf.write(noise, np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.3, 8000)
    tone = tmp_path / "tone.wav"
    sf.write(tone, _clip("tone", np.random.default_rng(1), 8000, 1.0), 8000)
    clf = Classifier.from_checkpoint(model, "cpu")
    conf = {p: clf.classify(p).confidence for p in (noise, tone)}
    assert conf[noise] < conf[tone]
    for p_min, answers in ((conf[noise], [clf.classify(noise).top_k(1)[0][0], "tone"]),  # at the threshold: answered
                           (np.nextafter(conf[noise], 1), [UNKNOWN, "tone"])):        # just above it: unknown
        strict = Classifier.from_checkpoint(model, "cpu", min_confidence=float(p_min))
        assert [strict.classify(p).label for p in (noise, tone)] == answers
        assert predict.main([str(model), str(noise), str(tone), "--json", f"--min_confidence={float(p_min)!r}"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [p["label"] for p in doc["predictions"]] == answers and doc["min_confidence"] == float(p_min)
        assert doc["predictions"][0]["confidence"] == pytest.approx(conf[noise], abs=1e-6)
    assert strict.predict(noise) == [(UNKNOWN, pytest.approx(conf[noise]))]
    assert strict.predict(tone, top_k=2)[0][0] == "tone"
    assert predict.main([str(model), str(noise), f"--min_confidence={(conf[noise] + conf[tone]) / 2}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "answer" in table[3] and table[4].split()[3] == UNKNOWN  # file, length, windows, answer


# ---------------------------------------------------------------- timeline

def test_timeline_of_a_joined_recording(model, joined, one_thread):
    clf = Classifier.from_checkpoint(model, "cpu")
    frame = clf.frontend.hop_length / clf.sample_rate  # 10 ms; a 1 s window is 101 frames
    window = clf.window * frame
    assert window == pytest.approx(1.01)
    # the run's windows: 1 s every 0.5 s -> 11 windows over 6 s
    t = clf.timeline(joined)
    assert t.seconds == pytest.approx(6.0) and t.hop_seconds == pytest.approx(0.5)
    assert [w.start for w in t.windows] == pytest.approx([0.5 * i for i in range(11)])
    assert [w.end for w in t.windows] == pytest.approx([min(0.5 * i + window, 6.0) for i in range(11)])
    assert len(t.windows[0].top_k) == 3 and t.segments[0].start == 0 and t.segments[-1].end == pytest.approx(6.0)
    # windows on the parts' grid: 1 s every 1 s, each inside one part; boundaries half-way between centres
    t = clf.timeline(joined, hop_seconds=1.0, top_k=1)
    np.testing.assert_allclose([(w.start, w.end) for w in t.windows], [(s, min(s + window, 6.0)) for s in range(6)])
    assert [w.top_k[0][0] for w in t.windows] == [kind for kind in PARTS for _ in range(2)]
    assert [s.label for s in t.segments] == list(PARTS) and [s.windows for s in t.segments] == [2, 2, 2]
    np.testing.assert_allclose([(s.start, s.end) for s in t.segments], [(0, 2.005), (2.005, 4.005), (4.005, 6.0)])
    for s in t.segments:
        assert 0.5 < s.probability <= 1
    with pytest.raises(ValueError, match="image layout resizes every window"):
        clf.timeline(joined, window_seconds=2.0)


def test_predict_timeline_csv_and_json(model, joined, tmp_path, capsys, one_thread):
    clf = Classifier.from_checkpoint(model, "cpu")
    expected = clf.timeline(joined, hop_seconds=1.0, top_k=2)
    out = tmp_path / "timeline"
    args = [str(model), str(joined), "--timeline", "--hop_seconds=1", "--top_k=2", f"--timeline_dir={out}"]
    assert predict.main(args) == 0
    printed = capsys.readouterr().out
    assert "3 segment(s) from 6 windows of 1.01 s every 1.00 s" in printed
    with open(out / "segments.csv", newline="") as f:
        segments = list(csv.DictReader(f))
    assert [(float(r["start"]), float(r["end"]), r["label"], int(r["windows"])) for r in segments] == [
        (round(s.start, 3), round(s.end, 3), s.label, s.windows) for s in expected.segments]
    assert {r["path"] for r in segments} == {str(joined)}
    with open(out / "windows.csv", newline="") as f:
        windows = list(csv.DictReader(f))
    assert list(windows[0]) == ["path", "start", "end", "top1_label", "top1_probability", "top2_label",
                                "top2_probability"]
    assert [(float(r["start"]), r["top1_label"]) for r in windows] == [(w.start, w.top_k[0][0])
                                                                        for w in expected.windows]
    assert predict.main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["predictions"][0]["timeline"]
    assert [s["label"] for s in doc["segments"]] == list(PARTS) and len(doc["windows"]) == 6
    top = expected.windows[3].top_k[0]
    assert doc["windows"][3]["top_k"][0] == dict(label="pulses", probability=pytest.approx(top[1]))
    assert predict.main([str(model), str(joined), "--timeline", "--window_seconds=2"]) == 1  # image layout: refused
    assert "Change hop_seconds instead" in capsys.readouterr().err


def test_window_length_changes_only_where_the_network_takes_it(one_thread):
    import train
    from evaluation.classifier import front_end
    from models import build_model, resolve_frontend

    def classifier(arch, model, **meta):
        cfg = resolve_frontend({**train.CONFIG, "arch": arch, "clip_seconds": 1.0, "eval_hop_seconds": 0.5})
        frontend, transform, window, hop = front_end(cfg, dict(mean=0.0, std=1.0))
        return Classifier(model, frontend, transform, list(PARTS), window, hop, torch.device("cpu"), cfg, meta)

    torch.manual_seed(0)
    cnn14 = classifier("cnn14", build_model("cnn14", 3, pretrained=False, base_channels=4))  # global pooling
    wave = _clip("tone", np.random.default_rng(0), 32000, 4.0)
    t = cnn14.timeline(wave, sample_rate=32000, window_seconds=2.0, hop_seconds=1.0)
    frame = cnn14.frontend.hop_length / cnn14.sample_rate  # 10 ms at 32 kHz
    assert [w.start for w in t.windows] == pytest.approx([0, 1, 2]) and t.window_seconds == pytest.approx(2.0 + frame)
    assert t.segments[0].start == 0 and t.segments[-1].end == pytest.approx(4.0)
    assert cnn14.classify(wave, sample_rate=32000).num_windows == 7  # the run's own 1 s every 0.5 s
    with pytest.raises(ValueError, match="ast takes only its pretrained window length"):
        classifier("ast", torch.nn.Identity()).window_frames(window_seconds=5.0)
    with pytest.raises(ValueError, match="an exported network"):
        classifier("cnn14", torch.nn.Identity(), format="onnx").window_frames(window_seconds=2.0)
    assert classifier("ast", torch.nn.Identity()).window_frames(hop_seconds=1.0)[1] == 100  # the hop may change
