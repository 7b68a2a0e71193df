"""evaluate.py, predict.py and the Classifier API on the session's tiny trained run: the same numbers as
training and scikit-learn, one prediction per clip whatever the code path, format, rate, channels or length."""
from __future__ import annotations

import json
import shutil
import warnings
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from sklearn.metrics import f1_score

from conftest import swanlab_metrics, write_wav
from data import DataError
from data.windows import window_starts
from evaluation.classifier import Classifier
from evaluation.metrics import classification_metrics, close, save_report

import evaluate  # the scripts at the repository root (conftest puts it on sys.path)
import predict


@pytest.fixture(scope="module")
def ckpt_dir(trained_run, tmp_path_factory):
    """A copy of the trained run's best.pt in its own folder, so evaluate.py writes its PNG and metrics.json
    there and not into the run other tests read."""
    out = tmp_path_factory.mktemp("evalrun")
    shutil.copy(f"{trained_run[0]['run_dir']}/best.pt", out / "best.pt")
    return out


@pytest.fixture(scope="module")
def clf(ckpt_dir):
    return Classifier.from_checkpoint(ckpt_dir, device="cpu")


@pytest.fixture(scope="module")
def evaluated(ckpt_dir, tmp_path_factory):
    """One ``evaluate.py RUN`` (default split, SwanLab local) -> (its result dict, stdout, SwanLab folder)."""
    logdir = tmp_path_factory.mktemp("evalswanlog")
    buf = StringIO()
    with redirect_stdout(buf), warnings.catch_warnings():
        warnings.filterwarnings("error", "the (rebuilt|checkpoint records)")  # the split must equal training's
        out = evaluate.main([str(ckpt_dir), "--device=cpu", "--swanlab_mode=local", f"--swanlab_logdir={logdir}"])
    return out, buf.getvalue(), logdir


def clip(seconds=1.0, sample_rate=8000, kind="tone", seed=0):
    from data.demo import _clip
    return _clip(kind, np.random.default_rng(seed), sample_rate, seconds).astype(np.float32)


def expected_windows(clf, seconds):
    """Windows a recording of ``seconds`` gets: what window_starts predicts at the model's rate."""
    return len(window_starts(clf.frontend.num_frames(int(round(seconds * clf.sample_rate))), clf.window, clf.hop))


# ---------------------------------------------------------------- metrics and report

def test_classification_metrics_by_hand_and_sklearn():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])  # d: no track, no prediction
    assert m["n"] == 7 and m["top1"] == pytest.approx(5 / 7)
    # per class: a p=1/2 r=1/2 f1=1/2; b p=2/3 r=1 f1=0.8; c p=1 r=2/3 f1=0.8; d 0 (zero_division=0)
    assert m["per_class"]["a"]["f1-score"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1-score"] == pytest.approx(0.8) and m["per_class"]["d"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.8 + 0) / 4)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2, 3], average="macro",
                                                   zero_division=0))
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert "precision" in m["report"] and "macro avg" in m["report"]


def test_save_report_writes_a_png_and_merges_metrics_json(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"kept": {"top1": 0.1}}))
    names = ["a", "b", "c"]
    for split, pred in (("val", [0, 1, 1]), ("test", [0, 1, 2])):
        png, fig = save_report(tmp_path, split, classification_metrics([0, 1, 2], pred, names), names, split,
                               extra=dict(checkpoint="best.pt"))
        close(fig)
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data) == {"kept", "val", "test"}
    assert data["val"]["top1"] == pytest.approx(2 / 3) and data["test"]["top1"] == 1.0
    assert data["test"]["label_names"] == names and data["test"]["checkpoint"] == "best.pt"
    assert "report" not in data["val"]


# ---------------------------------------------------------------- evaluate.py

def test_evaluate_reproduces_the_training_report(evaluated, trained_run, ckpt_dir):
    out, stdout, _ = evaluated
    trained = json.loads((trained_run[1] / "runs" / "tiny" / "metrics.json").read_text())["val"]
    assert out["split"] == "val"  # the tutorial split has no test: the default falls back to val
    m = out["metrics"]
    assert m["n"] == trained["n"] == 6  # 20% of 8 clips x 3 classes, rounded up per class
    assert m["confusion"] == trained["confusion"] and m["top1"] == pytest.approx(trained["top1"])
    assert m["macro_f1"] == pytest.approx(trained["macro_f1"])
    assert out["logits"].shape == (6, 3) and out["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert f"val top-1 {100 * m['top1']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f}%" in stdout
    assert "precision" in stdout and "chirp" in stdout  # scikit-learn's per-class table
    with Image.open(ckpt_dir / "confusion_matrix_val.png") as im:
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
    saved = json.loads((ckpt_dir / "metrics.json").read_text())["val"]
    assert saved["evaluated_by"] == "evaluate.py" and saved["confusion"] == trained["confusion"]
    assert saved["label_names"] == ["chirp", "pulses", "tone"]


def test_evaluate_logs_to_swanlab_when_asked(evaluated):
    out, _, logdir = evaluated
    runs = swanlab_metrics(logdir)
    assert list(runs) == ["tiny-eval-val"]
    assert runs["tiny-eval-val"]["val/acc"][0][1] == pytest.approx(100 * out["metrics"]["top1"])


def test_evaluate_missing_split_says_which_exist(ckpt_dir):
    with pytest.raises(DataError) as err:
        evaluate.main([str(ckpt_dir / "best.pt"), "--split=test", "--device=cpu"])
    assert "split=tutorial" in str(err.value) and "train/val" in str(err.value)
    assert "--split=stratified" in str(err.value)


def test_evaluate_after_the_data_moved(ckpt_dir, trained_run, tmp_path):
    moved = shutil.copytree(trained_run[1] / "audio", tmp_path / "elsewhere")
    cfg = dict(Classifier.from_checkpoint(ckpt_dir, "cpu").config, data_root=str(tmp_path / "gone"))
    args = evaluate.parse_args([str(ckpt_dir)])
    with pytest.raises(DataError, match="--data_root"):
        evaluate.data_config(cfg, args, ckpt_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the (rebuilt|checkpoint records)")  # the split must equal training's
        out = evaluate.main([str(ckpt_dir), f"--data_root={moved}", f"--cache_dir={tmp_path / 'cache'}",
                             "--device=cpu", "--batch_size=2"])
    assert (ckpt_dir / "eval_index.csv").exists()
    trained = json.loads((trained_run[1] / "runs" / "tiny" / "metrics.json").read_text())["val"]
    assert out["metrics"]["confusion"] == trained["confusion"]
    assert all(p.startswith(str(moved)) for p in out["paths"])
    with pytest.warns(UserWarning, match=r"1 track\(s\) missing, 1 new"):
        evaluate.check_same_split({"val": ["a/1.wav", "b/2.wav"]}, ["a/1.wav", "b/3.wav"], "val")
    # --swanlab_mode defaults to disabled: no experiment was added to the run's SwanLab folder
    assert not any("-eval-" in name for name in swanlab_metrics(trained_run[1] / "swanlog"))


# ---------------------------------------------------------------- one prediction per clip

def test_predict_equals_evaluation_code_on_the_same_clips(evaluated, clf, ckpt_dir, capsys):
    out = evaluated[0]
    probs = (out["logits"] / clf.temperature).softmax(1)  # calibrated by the run's temperature, as evaluation says
    for path, p in zip(out["paths"], probs):
        torch.testing.assert_close(clf.classify(path).probabilities, p, atol=1e-5, rtol=0)
    assert predict.main([str(ckpt_dir), *out["paths"], "--json", "--top_k=3", "--device=cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for entry, p in zip(doc["predictions"], probs):
        by_label = {t["label"]: t["probability"] for t in entry["top_k"]}
        np.testing.assert_allclose([by_label[n] for n in clf.label_names], p.numpy(), atol=1e-5, rtol=0)


def test_formats_rates_and_channels(clf, tmp_path):
    assert {"WAV", "FLAC", "OGG", "MP3"} <= set(sf.available_formats())
    x8, x44 = clip(1.0, 8000), clip(1.0, 44100)
    x8_16 = np.round(x8 * 32767).astype(np.int16)  # integer samples: WAV and FLAC store exactly the same values
    files = {}
    for name, data, rate in (("a.wav", x8_16, 8000), ("a.flac", x8_16, 8000), ("a.ogg", x8, 8000),
                             ("a.mp3", x8, 8000), ("b.wav", x44, 44100), ("b.mp3", np.stack([x44, x44 / 2], 1), 44100),
                             ("mono.wav", x44[:, None], 44100), ("stereo.wav", np.stack([x44, x44], 1), 44100)):
        sf.write(tmp_path / name, data, rate)
        info = sf.info(tmp_path / name)
        assert info.samplerate == rate and info.channels == (data.shape[1] if data.ndim == 2 else 1)
        files[name] = clf.classify(tmp_path / name, min_seconds=0.5)
    for name, pred in files.items():
        p = pred.probabilities
        assert p.shape == (3,) and torch.isfinite(p).all() and float(p.sum()) == pytest.approx(1, abs=1e-5)
        assert pred.seconds == pytest.approx(1.0, abs=0.1)  # mp3 encoders add a few ms of padding
        assert pred.num_windows == expected_windows(clf, pred.seconds)
    # lossless and identical-channel copies give the same prediction as the plain mono file
    torch.testing.assert_close(files["a.flac"].probabilities, files["a.wav"].probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(files["stereo.wav"].probabilities, files["mono.wav"].probabilities, atol=1e-5, rtol=0)


def test_a_three_minute_song_is_windowed_not_truncated(clf, tmp_path):
    # A cheap stand-in network (the real one costs ~10 s for 700+ windows on 2 busy cores): the windows,
    # features and averaging are the Classifier's own; only the CNN is smaller.
    torch.manual_seed(0)
    cheap = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 3))
    fast = Classifier(cheap, clf.frontend, clf.input_transform, clf.label_names, clf.window, clf.hop, torch.device("cpu"))
    path = tmp_path / "song.wav"
    song = np.tile(clip(2.0, 8000, "pulses"), 90)
    song[-8000:] = clip(1.0, 8000, "chirp")  # the last second differs: a truncating classifier would miss it
    sf.write(path, song, 8000)  # 3:00 at 8 kHz
    pred = fast.classify(path)
    mel = fast.spectrogram(path)
    starts = window_starts(mel.shape[1], clf.window, clf.hop)
    assert mel.shape[1] == clf.frontend.num_frames(180 * 8000)
    assert pred.seconds == pytest.approx(180.0) and pred.num_windows == len(starts) > 700
    assert starts[-1] + clf.window == mel.shape[1]  # the last window ends at the last frame
    with torch.no_grad():
        each = cheap(clf.input_transform(torch.from_numpy(np.stack([mel[:, s:s + clf.window] for s in starts]))[:, None]))
    torch.testing.assert_close(pred.probabilities, each.mean(0).softmax(0), atol=1e-6, rtol=0)
    with torch.no_grad():
        without_tail = each[:-1].mean(0).softmax(0)
    assert not torch.allclose(pred.probabilities, without_tail, atol=1e-7, rtol=0)


def test_classifier_takes_waveforms_in_any_layout(clf, tmp_path):
    x = clip(1.0, 16000, "chirp")
    path = write_wav(tmp_path / "c.wav", 1.0, 16000, kind="chirp", subtype="FLOAT")
    ref = clf.classify(path).probabilities
    for audio in (torch.from_numpy(x), np.stack([x, x]), np.stack([x, x], 1)):  # [T], [channels, T], [T, channels]
        torch.testing.assert_close(clf.classify(audio, sample_rate=16000).probabilities, ref, atol=1e-5, rtol=0)
    top = clf.predict(x, sample_rate=16000, top_k=10)
    assert [n for n, _ in top] == [clf.label_names[i] for i in ref.argsort(descending=True)]
    assert [p for _, p in top] == sorted([p for _, p in top], reverse=True) and len(top) == 3
    with pytest.raises(ValueError, match="sample_rate"):
        clf.predict(x)


# ---------------------------------------------------------------- predict.py

@pytest.fixture
def music(tmp_path):
    """A folder: two good clips (one nested, flac), a corrupt wav and a text file that is not audio."""
    root = tmp_path / "music"
    write_wav(root / "tone.wav", 1.0, 8000, kind="tone")
    write_wav(root / "sub" / "pulses.flac", 1.2, 22050, channels=2, kind="pulses", format="FLAC")
    (root / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (root / "notes.txt").write_text("not audio")
    return root


def test_predict_table_with_a_corrupt_file_among_good_ones(ckpt_dir, clf, music, capsys):
    assert predict.main([str(ckpt_dir), str(music), "--top_k=2", "--device=cpu"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("file"))
    rows = lines[header + 1:]
    assert [r.split()[0] for r in rows] == [str(music / "sub" / "pulses.flac"), str(music / "tone.wav")]
    assert "top-1" in lines[header] and "top-2" in lines[header] and "top-3" not in lines[header]
    assert rows[1].split()[1:3] == ["0:01", str(expected_windows(clf, 1.0))]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(music / "broken.wav") in errors[0]


def test_predict_all_bad_or_too_short_fails(ckpt_dir, tmp_path, capsys):
    short = write_wav(tmp_path / "short.wav", 0.03, 8000)  # below training's minimum, data.audio.MIN_SECONDS
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3\x03\x00garbage" * 100)
    assert predict.main([str(ckpt_dir), str(short), str(broken), str(tmp_path / "missing.wav")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 4  # one per file, then the summary
    assert any(str(short) in e and "0.030 s" in e for e in err)
    assert any(str(broken) in e for e in err) and any("missing.wav" in e and "no such file" in e for e in err)


def test_predict_json_is_one_parseable_document(ckpt_dir, music, capsys):
    assert predict.main([str(ckpt_dir / "best.pt"), str(music), "--json", "--top_k=2", "--device=cpu"]) == 0
    out, err = capsys.readouterr()  # stdout: the document only; the progress bar and error lines: stderr
    doc = json.loads(out)
    assert doc["checkpoint"] == str(ckpt_dir / "best.pt") and doc["label_names"] == ["chirp", "pulses", "tone"]
    assert [p["path"] for p in doc["predictions"]] == [str(music / "sub" / "pulses.flac"), str(music / "tone.wav")]
    for p in doc["predictions"]:
        probs = [t["probability"] for t in p["top_k"]]
        assert len(probs) == 2 and probs[0] >= probs[1] > 0 and sum(probs) <= 1 + 1e-6
    assert [e["path"] for e in doc["errors"]] == [str(music / "broken.wav")]
    assert str(music / "broken.wav") in err


def test_predict_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(["--help"])
    assert exit_.value.code == 0 and "--top_k" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(["ckpt", "x.wav", "--top_k=0"])
    assert exit_.value.code == 2
