"""evaluate.py on data the run never saw (--split=all on a folder or CSV, --errors) and predict.py on clips
shorter than the training crop, on the session's tiny trained run (trained with 0.5 s crops)."""
from __future__ import annotations

import csv
import json
import shutil
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_wav
from data import DataError
from evaluation.classifier import Classifier

import evaluate  # the scripts at the repository root (conftest puts it on sys.path)
import predict


@pytest.fixture(scope="module")
def ckpt_dir(trained_run, tmp_path_factory):
    """A copy of the trained run's best.pt in its own folder (evaluate.py writes next to it)."""
    out = tmp_path_factory.mktemp("extrun")
    shutil.copy(f"{trained_run[0]['run_dir']}/best.pt", out / "best.pt")
    return out


@pytest.fixture(scope="module")
def external(trained_run, tmp_path_factory):
    """A folder the run never indexed: copies of its chirp and tone clips, two pulses clips relabelled as tone
    (so some recordings are misclassified), a 0.3 s tone clip; no pulses folder."""
    src, ext = trained_run[1] / "audio", tmp_path_factory.mktemp("ext") / "other"
    for label in ("chirp", "tone"):
        shutil.copytree(src / label, ext / label)
    for i in (0, 1):
        shutil.copy(src / "pulses" / f"pulses_{i:02d}.wav", ext / "tone" / f"relabelled_{i}.wav")
    write_wav(ext / "tone" / "short.wav", 0.3, 8000, kind="tone", seed=77)
    return ext


@pytest.fixture(scope="module")
def scored(ckpt_dir, external, tmp_path_factory):
    """One ``evaluate.py RUN --data_root=<external> --split=all --errors=FILE`` -> (result, stdout, errors file)."""
    errors = tmp_path_factory.mktemp("errors") / "wrong.csv"
    buf = StringIO()
    with redirect_stdout(buf):
        out = evaluate.main([str(ckpt_dir), f"--data_root={external}", "--split=all", f"--errors={errors}",
                             "--device=cpu", f"--cache_dir={external.parent / 'cache'}"])
    return out, buf.getvalue(), errors


def test_split_all_scores_a_folder_it_never_saw(scored, ckpt_dir, external):
    out, stdout, _ = scored
    m = out["metrics"]
    assert out["split"] == "all" and m["n"] == len(list(external.rglob("*.wav"))) == 8 + 8 + 2 + 1
    assert out["labels"].tolist() == [0] * 8 + [2] * 11  # ids of the checkpoint's label names, matched by name
    assert m["top1"] == pytest.approx(float((out["logits"].argmax(1) == out["labels"]).float().mean()))
    assert m["per_class"]["pulses"]["support"] == 0 and m["per_class"]["tone"]["support"] == 11
    lo, hi = m["top1_ci"]
    assert 0 <= lo <= m["top1"] <= hi <= 1
    # the per-class table, the intervals and the absent class are printed
    assert "precision" in stdout and "chirp" in stdout and "95% CI: top-1" in stdout
    assert f"all top-1 {100 * m['top1']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f}%" in stdout
    assert "1 of the model's 3 classes are absent from this data: pulses" in stdout
    # results in <run>/eval_other/, the run's own metrics.json untouched
    out_dir = ckpt_dir / "eval_other"
    assert out["out_dir"] == str(out_dir) and (out_dir / "confusion_matrix_all.png").is_file()
    assert (out_dir / "index.csv").is_file() and not (ckpt_dir / "metrics.json").exists()
    saved = json.loads((out_dir / "metrics.json").read_text())["all"]
    assert saved["top1_ci"] == pytest.approx(m["top1_ci"]) and saved["macro_f1_ci"] == pytest.approx(m["macro_f1_ci"])
    assert saved["absent_classes"] == ["pulses"] and saved["seen_in_training"] == 0
    assert saved["data"] == str(external.resolve()) and "none of them in training" in saved["protocol"]
    assert saved["splits"]["all"]["class_counts"] == {"chirp": 8, "pulses": 0, "tone": 11}


def test_errors_file_lists_the_misclassified_recordings_with_their_top3(scored, ckpt_dir):
    out, stdout, errors = scored
    names = ["chirp", "pulses", "tone"]
    wrong = [i for i, (p, y) in enumerate(zip(out["logits"].argmax(1), out["labels"])) if p != y]
    assert wrong, "the relabelled pulses clips should be misclassified"
    with open(errors, newline="") as f:
        rows = list(csv.DictReader(f))
    assert f"{len(wrong)} misclassified recording(s) written to {errors}" in stdout
    assert [r["path"] for r in rows] == [out["paths"][i] for i in wrong]
    probs = (out["logits"] / Classifier.from_checkpoint(ckpt_dir, "cpu").temperature).softmax(1)  # calibrated
    for row, i in zip(rows, wrong):
        assert row["true_label"] == names[out["labels"][i]]
        order = probs[i].argsort(descending=True).tolist()
        assert [row[f"top{j}_label"] for j in (1, 2, 3)] == [names[c] for c in order]
        assert [float(row[f"top{j}_probability"]) for j in (1, 2, 3)] == pytest.approx(probs[i][order].tolist(),
                                                                                      abs=1e-4)


def test_split_all_from_a_csv_and_an_unknown_label(ckpt_dir, external, tmp_path):
    listing = tmp_path / "listing.csv"
    rows = [f"{external / 'chirp' / f'chirp_{i:02d}.wav'},chirp\n" for i in range(3)]
    listing.write_text("path,label\n" + "".join(rows))
    out = evaluate.main([str(ckpt_dir), f"--csv={listing}", "--device=cpu", f"--cache_dir={tmp_path / 'cache'}"])
    assert out["split"] == "all" and out["metrics"]["n"] == 3 and out["out_dir"] == str(ckpt_dir / "eval_listing")
    violin = shutil.copytree(external / "chirp", tmp_path / "strings" / "violin")
    shutil.copytree(external / "tone", tmp_path / "strings" / "tone")
    with pytest.raises(DataError) as err:
        evaluate.main([str(ckpt_dir), f"--data_root={violin.parent}", "--split=all", "--device=cpu",
                       f"--cache_dir={tmp_path / 'cache'}"])
    text = str(err.value)
    assert "['violin']" in text and "['chirp', 'pulses', 'tone']" in text and "['tone', 'violin']" in text
    with pytest.raises(SystemExit):
        evaluate.parse_args([str(ckpt_dir), f"--csv={listing}", "--split=val"])


def test_predict_on_a_short_clip_equals_its_evaluation(scored, ckpt_dir, external, tmp_path, capsys):
    out = scored[0]
    clf = Classifier.from_checkpoint(ckpt_dir, "cpu")
    assert clf.min_seconds == 0.05 and clf.config["clip_seconds"] == 0.5
    short = str(external / "tone" / "short.wav")
    evaluated = (out["logits"][out["paths"].index(short)] / clf.temperature).softmax(0)  # calibrated, as predict.py
    assert predict.main([str(ckpt_dir), short, "--json", "--top_k=3", "--device=cpu"]) == 0
    entry = json.loads(capsys.readouterr().out)["predictions"][0]
    assert entry["seconds"] == pytest.approx(0.3) and entry["windows"] == 1  # one padded window
    by_label = {t["label"]: t["probability"] for t in entry["top_k"]}
    np.testing.assert_allclose([by_label[n] for n in clf.label_names], evaluated.numpy(), atol=1e-5, rtol=0)
    torch.testing.assert_close(clf.classify(short, min_seconds=clf.min_seconds).probabilities, evaluated,
                               atol=1e-5, rtol=0)
    # still clear per-file errors: below training's minimum, no samples at all
    tiny = write_wav(tmp_path / "tiny.wav", 0.03, 8000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 8000)
    assert predict.main([str(ckpt_dir), str(tiny), str(tmp_path / "empty.wav"), short, "--device=cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{tiny}: is only 0.030 s long (at least 0.05 s needed)" in err
    assert f"{tmp_path / 'empty.wav'}: contains no audio samples" in err
