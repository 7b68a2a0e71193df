"""export.py (ONNX, TorchScript) and the run folder's model card, on the session's tiny trained run: the
exported network gives the checkpoint's logits at any batch size, the exported folder alone classifies a
file like the checkpoint, and the card states metrics.json's numbers with a front matter that parses."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import GTZAN_MINI, write_wav
from evaluation.classifier import Classifier
from evaluation.export import ExportError, formats_for, read_export
from experiment.model_card import class_counts, input_of, write_model_card

import export  # the scripts at the repository root (conftest puts it on sys.path)
import predict


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """A copy of the trained run's files (not last.pt), so exports and cards do not touch the shared run."""
    src, out = Path(trained_run[0]["run_dir"]), tmp_path_factory.mktemp("exportrun") / "tiny"
    out.mkdir()
    for f in ("best.pt", "metrics.json", "history.csv", "confusion_matrix_val.png"):
        shutil.copy(src / f, out / f)
    return out


@pytest.fixture(scope="module")
def clf(run):
    return Classifier.from_checkpoint(run, "cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A real GTZAN clip (30 s, 22.05 kHz) and a synthetic one-second tone at 8 kHz."""
    tone = write_wav(tmp_path_factory.mktemp("clips") / "tone.wav", 1.0, 8000, kind="tone")
    return [GTZAN_MINI / "jazz" / "jazz.00001.wav", tone]


def run_network(fmt: str, folder: Path, x: torch.Tensor) -> np.ndarray:
    """Logits of the exported file itself, with onnxruntime or torch.jit (not through our wrappers)."""
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch"  # a symbolic, dynamic batch axis
        return session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(folder / "model.torchscript"))(x).numpy()


@pytest.mark.parametrize("fmt", sorted(formats_for("imagenet_cnn")))  # the session's run is a resnet18
def test_export_matches_the_checkpoint_and_runs_alone(fmt, run, clf, clips, tmp_path, capsys, one_thread):
    out = tmp_path / "export"
    assert export.main([str(run), f"--format={fmt}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    spec = json.loads((out / "export.json").read_text())
    assert spec["parity"]["batch_size"] == 3 and spec["parity"]["max_abs_logit_diff"] < 1e-4
    assert f"max |logit difference| {spec['parity']['max_abs_logit_diff']:.2e}" in printed
    assert spec["label_names"] == clf.label_names and spec["backbone"] == "resnet18"
    assert spec["features"]["norm"] == clf.meta["features"]["norm"] and spec["config"] == clf.config
    assert spec["splits"] == clf.meta["splits"]  # the demo on an export folder still shows the training data
    assert (spec["window_frames"], spec["hop_frames"]) == (clf.window, clf.hop)
    assert spec["metrics"]["val"]["top1"] == json.loads((run / "metrics.json").read_text())["val"]["top1"]
    assert spec["calibration"] == clf.meta["calibration"]  # the temperature travels with the export

    # the network file itself, at a batch size other than the export's (2) and the check's (3)
    windows = torch.randn(5, 1, clf.frontend.n_mels, clf.window, generator=torch.Generator().manual_seed(3)) * 10 - 40
    x = clf.input_transform(windows)
    with torch.no_grad():
        reference = clf.model(x).numpy()
    got = run_network(fmt, out, x)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)

    # the folder alone (copied elsewhere, the original removed) classifies files like the checkpoint
    alone = shutil.copytree(out, tmp_path / "elsewhere" / "model")
    shutil.rmtree(out)
    exported = Classifier.load(alone, "cpu")
    assert exported.label_names == clf.label_names and exported.meta["format"] == fmt
    assert exported.temperature == clf.temperature
    for clip in clips:
        ours, theirs = exported.classify(clip), clf.classify(clip)
        assert ours.top_k(1)[0][0] == theirs.top_k(1)[0][0]
        torch.testing.assert_close(ours.probabilities, theirs.probabilities, atol=1e-5, rtol=0)
    assert predict.main([str(alone), str(clips[0]), "--json", "--top_k=1"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["top_k"][0]["label"] == clf.predict(clips[0])[0][0]


def test_export_with_the_dynamo_exporter(run, clf, tmp_path, one_thread):
    pytest.importorskip("onnxscript")
    assert export.main([str(run), "--format=onnx", "--dynamo", f"--out={tmp_path}"]) == 0
    spec = json.loads((tmp_path / "export.json").read_text())
    assert spec["exported_with"]["exporter"] == "torch.export (dynamo)"
    assert spec["parity"]["max_abs_logit_diff"] < 1e-4


def test_broken_export_folders_say_what_is_wrong(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="export.py"):
        read_export(tmp_path, torch.device("cpu"))
    (tmp_path / "export.json").write_text("{not json")
    with pytest.raises(ExportError, match="not readable JSON"):
        Classifier.from_export(tmp_path, "cpu")
    (tmp_path / "export.json").write_text(json.dumps(dict(format="onnx", label_names=["a", "b"])))
    with pytest.raises(ExportError, match="missing config, features"):
        Classifier.from_export(tmp_path, "cpu")
    spec = dict(format="tflite", label_names=["a", "b"], config={}, features={})
    (tmp_path / "export.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="onnx, torchscript"):
        Classifier.from_export(tmp_path, "cpu")
    (tmp_path / "export.json").write_text(json.dumps(spec | {"format": "onnx", "file": "../best.pt"}))
    with pytest.raises(ExportError, match="model.onnx is missing"):  # the file name never comes from the JSON
        Classifier.from_export(tmp_path, "cpu")
    (tmp_path / "model.onnx").write_bytes(b"not a network")
    with pytest.raises(ExportError, match="onnxruntime cannot read it"):
        Classifier.from_export(tmp_path, "cpu")
    (tmp_path / "export.json").write_text(json.dumps(spec | {"format": "torchscript"}))
    (tmp_path / "model.torchscript").write_bytes(b"not a network")
    with pytest.raises(ExportError, match="torch.jit cannot read it"):
        Classifier.from_export(tmp_path, "cpu")
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / "model.torchscript"))
    with pytest.raises(ExportError, match="config or features are incomplete"):  # config={}, features={}
        Classifier.from_export(tmp_path, "cpu")
    with pytest.raises(SystemExit):
        export.parse_args([str(run), "--format=torchscript", "--dynamo"])


def test_model_card_tells_the_runs_story(run, clf):
    val = json.loads((run / "metrics.json").read_text())["val"]  # with the bootstrap intervals evaluation recorded
    path = write_model_card(run)
    assert path == run / "README.md" and not list(run.glob(".README.md*"))
    text = path.read_text()
    front, body = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S).groups()
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "pytorch" and "audio-classification" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "tiny" and result["dataset"]["split"] == "val"
    by_type = {m["type"]: m["value"] for m in result["metrics"]}
    assert by_type == {"accuracy": round(100 * val["top1"], 2), "f1": round(100 * val["macro_f1"], 2)}
    (a_lo, a_hi), (f_lo, f_hi) = val["top1_ci"], val["macro_f1_ci"]
    assert (f"| val | {100 * val['top1']:.1f}% (95% CI {100 * a_lo:.1f}-{100 * a_hi:.1f}%) | {100 * val['macro_f1']:.1f}% "
            f"(95% CI {100 * f_lo:.1f}-{100 * f_hi:.1f}%) | {val['n']} |") in body
    assert val["protocol"] in body
    assert f"**{clf.meta['best']['val_acc']:.1f}%** at epoch {clf.meta['best']['epoch']}" in body
    images = re.findall(r"!\[[^]]*]\(([^)]+)\)", body)
    assert images == ["confusion_matrix_val.png"] and all((run / i).is_file() for i in images)
    for name in clf.label_names:  # 8 clips per class: 6 train, 2 val (the tutorial split, 20% per label)
        assert f"| {name} | 6 | 2 |" in body
    assert "| **total** | 18 | 6 |" in body and "| `arch` | `resnet18` |" in body
    for command in ("evaluate.py", "predict.py", "app.py", "export.py"):
        assert f"python {command} {run.as_posix()}" in body
    assert f"torch {torch.__version__}" in body and '"n_mels": 32' in body  # environment, full config
    assert body.count("\n| 1 |") + body.count("\n| 2 |") == 2  # history.csv: one row per epoch


def test_model_card_counts_classes_from_the_split_record_when_paths_do_not_name_them():
    splits = {"train": ["0_george_1.wav", "1_george_2.wav", "1_lucas_3.wav"], "test": ["0_jackson_4.wav"]}
    names = ["0", "1"]
    assert class_counts(splits, names) == {"train": {"?": 3}, "test": {"?": 1}}  # a flat folder indexed by a CSV
    record = {"train": {"tracks": splits["train"], "groups": ["george", "lucas"], "class_counts": {"0": 1, "1": 2}},
              "test": {"tracks": splits["test"], "groups": ["jackson"], "class_counts": {"0": 1, "1": 0}}}
    assert class_counts(splits, names, record) == {"train": {"0": 1, "1": 2}, "test": {"0": 1}}


def test_model_card_names_the_input_of_each_front_end():
    assert input_of({"arch": "resnet18"}) == ("log-mel spectrogram images", ["log-mel", "spectrogram"])  # older config
    assert input_of({"frontend": "panns_logmel"})[0] == "PANNs log-mel spectrograms"
    assert input_of({"frontend": "kaldi_fbank"})[0] == "Kaldi fbank spectrograms"
    assert input_of({"frontend": "waveform"}) == ("raw waveforms", ["waveform"])
