"""The Hugging Face round trip (issue 21), offline: a ``datasets`` copy of real FSDD clips (Audio + ClassLabel,
saved with save_to_disk and as the Hub's parquet files) trains through --hf_dataset with its own splits and label
order; a tiny transformers model saved with save_pretrained trains through --arch=hf:<folder> with the front end of
its feature extractor; export.py --format hf gives a folder whose pipeline() probabilities equal Classifier's;
offline Hub datasets, models and pushes fail fast with what to do.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import export
import train
from conftest import ROOT
from data import DataError, prepare_data
from data.hf_dataset import hf_index, open_dataset, split_map
from data.splits import make_splits
from evaluation.classifier import Classifier
from evaluation.export import fold_temperature
from experiment.checkpoint import load_checkpoint, save_checkpoint
from experiment.config import ConfigError
from models import PretrainedWeightsError, build_model, get_backbone

FSDD = ROOT.parent / "shared" / "fsdd"
# ClassLabel order on purpose not sorted: the class ids must follow it
NAMES = ["zero", "one", "two"]
# dataset split -> (speaker, first take, takes) per digit: train, validation and test hold different takes
PARTS = {"train": ("jackson", 0, 4), "validation": ("nicolas", 0, 2), "test": ("theo", 0, 2)}


def fsdd(digit: int, speaker: str, take: int) -> Path:
    return FSDD / str(digit) / f"{digit}_{speaker}_{take}.wav"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """datasets' own cache in a temporary folder for the module (load_dataset writes its Arrow files there)."""
    import datasets
    saved = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    datasets.disable_progress_bars()
    yield datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = saved
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def copies(tmp_path_factory, hf_cache):
    """The same dataset twice: a save_to_disk folder and a folder of parquet files in the Hub's layout
    (data/<split>-00000-of-00001.parquet). 3 digits x (4 train, 2 validation, 2 test) real FSDD clips."""
    import datasets
    if not FSDD.is_dir():
        pytest.skip(f"{FSDD} is missing")
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"audio": datasets.Audio(decode=False), "label": datasets.ClassLabel(names=NAMES),
                                  "speaker": datasets.Value("string")})
    splits = {}
    for split, (speaker, first, takes) in PARTS.items():
        files = [(digit, fsdd(digit, speaker, take)) for digit in range(3) for take in range(first, first + takes)]
        table = dict(audio=[{"bytes": f.read_bytes(), "path": f.name} for _, f in files],
                     label=[d for d, _ in files], speaker=[speaker] * len(files))
        # Audio(decode=False) storage is {"bytes", "path"}: casting needs no torchcodec (encoding examples would)
        plain = datasets.Dataset.from_dict(table)
        splits[split] = plain.cast(features)
    dd = datasets.DatasetDict(splits)
    dd.save_to_disk(root / "disk")
    (root / "parquet" / "data").mkdir(parents=True)
    for split, part in dd.items():
        part.to_parquet(root / "parquet" / "data" / f"{split}-00000-of-00001.parquet")
    return root / "disk", root / "parquet"


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    """A tiny Wav2Vec2ForSequenceClassification (hidden 32, 1 layer, 5 labels) and its feature extractor
    (16 kHz, do_normalize), saved with save_pretrained."""
    import transformers
    folder = tmp_path_factory.mktemp("tiny_wav2vec2")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                         conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=5)
    transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


def run_args(tmp_path, **extra) -> list[str]:
    cfg = dict(cache_dir=tmp_path / "cache", out_dir=tmp_path / "runs", swanlab_mode="disabled", batch_size=4,
               num_epochs=1, warmup_epochs=0, lr_step_size=0, num_workers=0, learning_rate=1e-3,
               clip_seconds=0.5, eval_hop_seconds=0.25, experiment_name="hf")
    cfg.update(extra)
    return [f"--{k}={v}" for k, v in cfg.items()]


# ---------------------------------------------------------------- datasets in


def test_both_copies_give_the_datasets_splits_label_order_and_a_keyed_folder(copies, tmp_path, capsys):
    disk, parquet = copies
    indexes = [hf_index(dict(hf_dataset=str(c), cache_dir=tmp_path)) for c in copies]
    for index in indexes:
        assert index.label_names == NAMES  # the ClassLabel's order, not sorted
        counts = index.df.groupby(["split", "label"]).size()
        assert dict(counts["train"]) == {n: 4 for n in NAMES}
        assert dict(counts["val"]) == dict(counts["test"]) == {n: 2 for n in NAMES}
        assert index.csv_path.parent.name in (disk.name, parquet.name)
        assert index.csv_path.parent.parent.parent == (tmp_path / "hf_datasets").resolve()
        row = index.df[index.df.path.str.endswith("0_jackson_1.wav")].iloc[0]  # the stored file name is kept
        audio, rate = sf.read(row.path)
        np.testing.assert_array_equal(audio, sf.read(fsdd(0, "jackson", 1))[0])
        assert rate == 8000 and row.label == "zero" and row.split == "train"
    assert indexes[0].csv_path != indexes[1].csv_path
    parts = make_splits(indexes[1].df, "predefined")
    assert {k: len(v) for k, v in parts.items()} == {"train": 12, "val": 6, "test": 6}
    assert "split" not in parts["train"].columns
    # a second read reuses the extraction (same files, same modification times: the feature cache hits)
    again = hf_index(dict(hf_dataset=str(disk), cache_dir=tmp_path))
    assert again.csv_path == indexes[0].csv_path
    assert Path(again.df.path[0]).stat().st_mtime_ns == Path(indexes[0].df.path[0]).stat().st_mtime_ns
    # another revision of the data (here: the test split changed) is another folder
    import datasets
    changed = datasets.load_from_disk(str(disk))
    changed["test"] = changed["test"].select(range(5))
    changed.save_to_disk(tmp_path / "revised")
    revised = hf_index(dict(hf_dataset=str(tmp_path / "revised"), cache_dir=tmp_path))
    assert revised.csv_path.parent.parent != indexes[0].csv_path.parent.parent and len(revised.df) == 23


def test_split_mapping_columns_and_a_missing_val_part(copies, tmp_path):
    assert split_map(["train", "dev", "test"]) == {"train": "train", "val": "dev", "test": "test"}
    assert split_map(["train", "validation", "test"], "train=test,val=train") == {"train": "test", "val": "train"}
    with pytest.raises(DataError, match="no training split"):
        split_map(["validation", "test"])
    with pytest.raises(DataError, match="no split 'dev'"):
        split_map(["train"], "val=dev")
    index = hf_index(dict(hf_dataset=str(copies[0]), cache_dir=tmp_path, hf_splits="train=train,test=test",
                          hf_label_column="speaker"))
    assert index.label_names == ["jackson", "theo"]  # a string column: its sorted values
    with pytest.raises(DataError, match="class\\(es\\) \\['theo'\\] have no training clip"):
        make_splits(index.df, "predefined")
    index = hf_index(dict(hf_dataset=str(copies[0]), cache_dir=tmp_path, hf_splits="train=train,test=test"))
    parts = make_splits(index.df, "predefined", val_size=0.25)  # no val split: a quarter of train, per class
    assert {k: len(v) for k, v in parts.items()} == {"train": 9, "val": 3, "test": 6}
    assert sorted(parts["val"].label) == sorted(NAMES)
    with pytest.raises(DataError, match="--hf_audio_column=nothing: no such column"):
        hf_index(dict(hf_dataset=str(copies[0]), cache_dir=tmp_path, hf_audio_column="nothing"))
    with pytest.raises(DataError, match="split=predefined needs a 'split' column"):
        make_splits(index.df.drop(columns="split"), "predefined")


def test_an_unreachable_hub_dataset_fails_fast_with_what_to_do(hf_cache, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: refused at once
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        open_dataset("someone/not-cached-dataset")
    assert time.monotonic() - start < 10
    text = str(err.value)
    for part in ("'someone/not-cached-dataset'", "HF_DATASETS_OFFLINE", "--hf_dataset=PATH", "save_to_disk",
                 "--data_root=", "Kaggle", "not reachable", hf_cache):
        assert part in text, part
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="offline mode is on"):
        train.main(["--hf_dataset=someone/not-cached-dataset", "--pretrained=True", "--swanlab_mode=disabled"])


# ---------------------------------------------------------------- a Hub model as backbone, and back out


@pytest.fixture(scope="module")
def hf_run(copies, tiny_wav2vec2, tmp_path_factory):
    """1 epoch of the tiny wav2vec2 (--arch=hf:<folder>, its weights, a new 3-class head) on the parquet copy
    (the save_to_disk copy gives the same index: see the first test)."""
    tmp = tmp_path_factory.mktemp("hf_run")
    torch.manual_seed(0)
    summary = train.main(run_args(tmp, hf_dataset=copies[1], arch=f"hf:{tiny_wav2vec2}"))
    return Path(summary["run_dir"])


def test_one_epoch_on_the_dataset_keeps_its_splits_and_label_order(hf_run, copies):
    state = load_checkpoint(hf_run / "best.pt")
    assert state["config"]["split"] == "predefined" and state["label_names"] == NAMES
    record = state["split_record"]
    assert [record[p]["class_counts"] for p in ("train", "val", "test")] == [
        {n: 4 for n in NAMES}, {n: 2 for n in NAMES}, {n: 2 for n in NAMES}]
    assert {p.split("/")[0] for p in state["splits"]["test"]} == {"test"}
    report = json.loads((hf_run / "metrics.json").read_text())
    assert report["test"]["n"] == 6 and "held-out test" in report["test"]["protocol"]  # the dataset's own test
    card = (hf_run / "README.md").read_text()
    assert f"Hugging Face dataset `{copies[1]}`" in card and "the data's own train/validation/test splits" in card


def test_a_saved_transformers_model_trains_with_the_front_end_of_its_feature_extractor(hf_run, tiny_wav2vec2):
    state = load_checkpoint(hf_run / "best.pt")
    cfg = state["config"]
    assert (cfg["frontend"], cfg["sample_rate"], cfg["input_layout"], cfg["normalization"]) == (
        "waveform", 16000, "waveform", "per_clip")  # from preprocessor_config.json, not the CONFIG defaults
    assert state["label_names"] == NAMES and len(state["backbone"]["config"]["id2label"]) == 3
    assert state["backbone"]["frontend"]["sample_rate"] == 16000
    entry = get_backbone(cfg["arch"])
    assert entry.head == ("transformer.projector", "transformer.classifier") and entry.family == "waveform_transformer"
    # the pretrained body was loaded from the folder: one body tensor equals the saved one before training moved it
    from safetensors.torch import load_file
    saved = load_file(tiny_wav2vec2 / "model.safetensors")
    fresh = build_model(cfg["arch"], 3, pretrained=True)
    key = "wav2vec2.feature_projection.projection.weight"
    assert torch.equal(fresh.state_dict()["transformer." + key], saved[key])


def test_export_hf_gives_pipelines_probabilities_equal_to_the_classifiers(hf_run, tmp_path, capsys):
    from transformers import pipeline
    out = tmp_path / "export"
    assert export.main([str(hf_run), "--format=hf", f"--out={out}"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "export.json"} <= files
    assert not list(tmp_path.glob(".export*"))  # the staging folder is gone
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)} and config["label2id"]["two"] == 2
    spec = json.loads((out / "export.json").read_text())
    clf = Classifier.from_checkpoint(hf_run, "cpu")  # calibrated by default: the run fitted a temperature on val
    assert spec["parity"]["max_abs_logit_diff"] < 1e-4
    assert spec["exported_with"]["temperature"] == pytest.approx(clf.temperature)  # folded into the head
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and 'pipeline("audio-classification"' in card

    audio, rate = sf.read(fsdd(2, "george", 1), dtype="float32")  # a real clip, cut to exactly one 0.5 s window
    clip = audio[:rate // 2]
    ours = clf.classify(clip, rate)
    assert ours.num_windows == 1
    classifier = pipeline("audio-classification", model=str(out))
    theirs = {r["label"]: r["score"] for r in classifier({"raw": clip, "sampling_rate": rate}, top_k=None)}
    np.testing.assert_allclose([theirs[n] for n in NAMES], ours.probabilities.numpy(), atol=1e-4, rtol=0)
    assert max(theirs, key=theirs.get) == ours.top_k(1)[0][0]
    # the folder alone also serves predict.py and Classifier.load (through its export.json)
    exported = Classifier.load(out, "cpu")
    torch.testing.assert_close(exported.classify(clip, rate).probabilities, ours.probabilities, atol=1e-5, rtol=0)


def test_a_calibration_temperature_is_folded_into_the_exported_head(hf_run, tmp_path):
    state = load_checkpoint(hf_run / "best.pt")
    state["calibration"] = {"temperature": 2.5}
    save_checkpoint(state, tmp_path / "calibrated.pt")
    for f in ("metrics.json", "history.csv"):
        (tmp_path / f).write_bytes((hf_run / f).read_bytes())
    out = tmp_path / "export"
    assert export.main([str(tmp_path / "calibrated.pt"), "--format=hf", f"--out={out}"]) == 0
    spec = json.loads((out / "export.json").read_text())
    assert spec["exported_with"]["temperature"] == 2.5
    assert spec["calibration"] == {"temperature": 1.0, "folded_into_network": 2.5}  # never divided twice
    assert spec["parity"]["max_abs_logit_diff"] < 1e-4  # against the checkpoint's logits / 2.5
    clf, exported = Classifier.from_checkpoint(tmp_path / "calibrated.pt", "cpu"), Classifier.load(out, "cpu")
    windows = torch.randn(3, 1, 1, clf.window, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        reference = clf.model(clf.input_transform(windows)) / 2.5
        folded = exported.model(exported.input_transform(windows))
    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=0)


def test_fold_temperature_divides_the_last_classification_layer():
    import transformers
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    max_length=64, num_mel_bins=32, patch_size=16, frequency_stride=16,
                                    time_stride=16, num_labels=4)
    model = transformers.ASTForAudioClassification(config).eval()
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        before = model(input_values=x).logits
        assert fold_temperature(model, 4.0) is model.classifier.dense
        torch.testing.assert_close(model(input_values=x).logits, before / 4.0)


def test_resnets_and_cnn14_say_which_formats_they_export_to(trained_run, tmp_path, capsys):
    assert export.main([trained_run[0]["run_dir"], "--format=hf", f"--out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err
    assert "resnet18 (imagenet cnn) cannot be exported as --format hf" in err and "onnx, torchscript" in err
    assert not (tmp_path / "x").exists()


def test_push_to_hub_offline_or_without_a_token_fails_fast_and_writes_nothing(hf_run, tmp_path, monkeypatch,
                                                                              capsys):
    from huggingface_hub import constants
    out = tmp_path / "export"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert export.main([str(hf_run), "--format=hf", f"--out={out}", "--push_to_hub=me/tiny"]) == 1
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert export.main([str(hf_run), "--format=hf", f"--out={out}", "--push_to_hub=me/tiny"]) == 1
    assert "no Hugging Face token" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert export.main([str(hf_run), "--format=hf", f"--out={out}", "--push_to_hub=me/tiny"]) == 1
    assert time.monotonic() - start < 10
    assert "http://127.0.0.1:9 is not reachable" in capsys.readouterr().err and not out.exists()


def test_push_to_hub_uploads_the_finished_folder_in_one_commit(hf_run, tmp_path, monkeypatch):
    """The real push code against a stand-in for the Hub's API (no network): the complete folder, one commit."""
    import evaluation.hub
    calls = []

    class FakeApi:
        def __init__(self, endpoint, token):
            calls.append(("init", token))

        def repo_exists(self, repo_id, repo_type):
            return False

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir())))
            return type("Commit", (), {"commit_url": f"https://hub.test/{repo_id}/commit/1"})()

    monkeypatch.setattr(evaluation.hub, "HfApi", FakeApi)
    monkeypatch.setattr(evaluation.hub, "reachable", lambda url: True)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    out = tmp_path / "export"
    assert export.main([str(hf_run), "--format=hf", f"--out={out}", "--push_to_hub=me/tiny", "--private"]) == 0
    assert calls[0] == ("init", "hf_test") and calls[1] == ("create", "me/tiny", True)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "export.json"} <= set(
        calls[2][1])
    assert 'model="me/tiny"' in (out / "README.md").read_text()


def test_an_unreachable_hub_model_fails_fast_and_a_folder_without_a_feature_extractor_is_named(tmp_path,
                                                                                               monkeypatch):
    import models.hub
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(models.hub, "reachable", lambda *args, **kwargs: False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        get_backbone("hf:someone/not-cached-model")
    assert time.monotonic() - start < 10
    for part in ("someone/not-cached-model", str(tmp_path / "hub" / "models--someone--not-cached-model"),
                 "--arch=hf:PATH", "--pretrained=False", "$HF_HUB_CACHE"):
        assert part in str(err.value), part
    import transformers
    bare = tmp_path / "bare"
    transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(bare)
    with pytest.raises(PretrainedWeightsError, match="preprocessor_config.json"):
        get_backbone(f"hf:{bare}")
    whisper = tmp_path / "whisper"
    transformers.WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1).save_pretrained(whisper)
    transformers.WhisperFeatureExtractor().save_pretrained(whisper)
    with pytest.raises(ConfigError, match="WhisperFeatureExtractor; the front ends .* ASTFeatureExtractor"):
        get_backbone(f"hf:{whisper}")


@pytest.fixture(scope="module")
def tiny_ast(tmp_path_factory):
    """A tiny ASTForAudioClassification (32 mel bins x 64 frames, 5 labels) and its ASTFeatureExtractor
    (mean -5, std 3), saved with save_pretrained."""
    import transformers
    folder = tmp_path_factory.mktemp("tiny_ast")
    torch.manual_seed(0)
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    max_length=64, num_mel_bins=32, patch_size=16, frequency_stride=16,
                                    time_stride=16, num_labels=5)
    transformers.ASTForAudioClassification(config).save_pretrained(folder)
    transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=64, mean=-5.0, std=3.0).save_pretrained(folder)
    return folder


def test_an_ast_checkpoint_reads_its_fbank_front_end_and_a_wrong_explicit_key_is_an_error(tiny_ast):
    tmp_path = tiny_ast
    entry = get_backbone(f"hf:{tmp_path}")
    assert dict(entry.frontend) == dict(frontend="kaldi_fbank", sample_rate=16000, n_fft=400, hop_length=160,
                                        n_mels=32, f_min=20.0, f_max=8000.0, input_layout="spectrogram",
                                        clip_seconds=0.64, normalization="fixed", norm_mean=-5.0, norm_std=6.0)
    assert entry.head == ("transformer.classifier",) and entry.family == "spectrogram_transformer"
    cfg, _ = train.read_config([f"--arch=hf:{tmp_path}"])
    assert (cfg["n_mels"], cfg["clip_seconds"], cfg["norm_std"]) == (32, 0.64, 6.0)
    with pytest.raises(ConfigError, match="--n_mels=64, but hf:.* was pretrained on n_mels=32"):
        train.read_config([f"--arch=hf:{tmp_path}", "--n_mels=64"])
    model = build_model(f"hf:{tmp_path}", 3, pretrained=True)
    assert model.pad_value == pytest.approx(5.0 / 6.0) and model(torch.randn(2, 1, 32, 64)).shape == (2, 3)


def test_an_ast_export_matches_the_classifier_through_pipeline_on_one_window_of_fbank(tiny_ast, tmp_path):
    """AST's path (Kaldi fbank, fixed normalisation, padding to max_length frames) without training: a checkpoint
    of the pretrained tiny model with a new head, exported; a clip of exactly one window of frames."""
    from transformers import pipeline
    from data.features import build_features, normalisation_for
    from evaluation.export import window_samples
    from models import backbone_record
    cfg, _ = train.read_config([f"--arch=hf:{tiny_ast}", f"--out_dir={tmp_path}"])
    torch.manual_seed(0)
    model = build_model(cfg["arch"], 3, pretrained=True)
    frontend, _ = build_features(cfg)
    save_checkpoint(dict(model=model.state_dict(), config=cfg, label_names=NAMES, backbone=backbone_record(
        cfg["arch"], model), features=dict(params=frontend.params(), norm=normalisation_for(cfg, (), frontend))),
        tmp_path / "best.pt")
    assert export.main([str(tmp_path), "--format=hf", f"--out={tmp_path / 'export'}"]) == 0
    clf = Classifier.from_checkpoint(tmp_path, "cpu")
    samples = window_samples(clf.frontend, clf.window)  # 400 + 63 x 160 at 16 kHz: the model's 64 frames
    assert (clf.window, samples) == (64, 10480)
    audio, rate = sf.read(fsdd(0, "george", 10), dtype="float32")
    clip = audio[:samples // 2]  # 8 kHz
    theirs = pipeline("audio-classification", model=str(tmp_path / "export"))({"raw": clip, "sampling_rate": rate},
                                                                              top_k=None)
    ours = clf.classify(clip, rate).probabilities.numpy()
    np.testing.assert_allclose([{r["label"]: r["score"] for r in theirs}[n] for n in NAMES], ours, atol=1e-4, rtol=0)


def test_a_dataset_of_loose_audio_files_says_it_needs_torchcodec_or_the_folder_route(hf_cache, tmp_path):
    import importlib.util
    if importlib.util.find_spec("torchcodec"):
        pytest.skip("torchcodec is installed: datasets builds audio-file datasets itself")
    for digit, name in enumerate(NAMES[:2]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.wav").write_bytes(fsdd(digit, "george", 1).read_bytes())
    with pytest.raises(DataError, match="through torchcodec .* --data_root=<folder>/<label>/<audio files>"):
        open_dataset(str(tmp_path))


def test_predefined_split_from_a_csv_column_and_the_card_on_groups_it_shares(tmp_path):
    from experiment.model_card import group_lines
    df = pd.DataFrame(dict(path=[f"/x/{i}.wav" for i in range(12)], label=["a", "b"] * 6,
                           split=["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["extra"] * 2))
    with pytest.warns(UserWarning, match="part\\(s\\) \\['extra'\\] left out"):
        parts = make_splits(df, "predefined")
    assert {k: len(v) for k, v in parts.items()} == {"train": 6, "val": 2, "test": 2}
    state = dict(config=dict(group_pattern="x"), split_record=dict(train=dict(groups=["ann", "bob"]),
                                                                   test=dict(groups=["bob"])))
    assert "1 of them are in more than one split (bob)" in group_lines(state)[0]


def test_evaluate_rebuilds_the_hf_runs_test_split(hf_run, capsys):
    import evaluate
    out = evaluate.main([str(hf_run), "--device=cpu"])
    assert out["split"] == "test" and len(out["paths"]) == 6
    state = load_checkpoint(hf_run / "best.pt")
    data = prepare_data(state["config"], Classifier.from_checkpoint(hf_run, "cpu").frontend,
                        label_names=state["label_names"], show_progress=False)
    assert data.track_lists() == state["splits"]
