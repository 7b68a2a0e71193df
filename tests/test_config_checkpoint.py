"""Command-line config overrides, --help, atomic checkpoints and the tutorial's learning-rate schedule."""
from __future__ import annotations

import pytest
import torch

import train
from experiment.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from experiment.config import ConfigError, parse_config, parse_value


def parse(*argv: str) -> dict:
    """train.py's config after the given overrides."""
    return parse_config(list(argv), train.CONFIG, train.PRESETS)


# ---------------------------------------------------------------- overrides
def test_defaults_are_returned_unchanged_as_a_copy():
    cfg = parse()
    assert cfg == train.CONFIG and cfg is not train.CONFIG


def test_values_are_parsed_to_the_type_of_the_default():
    cfg = parse("--num_epochs=3", "--learning_rate=3e-4", "--weight_decay=0", "--arch=resnet50",
                "--experiment_name=", "--pretrained=False", "--augment=false", "--amp=0", "--compile=True",
                "--channels_last=yes", "--f_max=8000", "--data-root=/data/x")
    assert cfg["num_epochs"] == 3 and type(cfg["num_epochs"]) is int
    assert cfg["learning_rate"] == 3e-4 and type(cfg["learning_rate"]) is float
    assert cfg["weight_decay"] == 0.0 and type(cfg["weight_decay"]) is float
    assert cfg["f_max"] == 8000.0 and type(cfg["f_max"]) is float
    assert cfg["arch"] == "resnet50"
    assert cfg["experiment_name"] == ""
    assert cfg["pretrained"] is False and cfg["augment"] is False and cfg["amp"] is False
    assert cfg["compile"] is True and cfg["channels_last"] is True
    assert cfg["data_root"] == "/data/x"  # dashes work like underscores
    assert cfg["swanlab_mode"] == "" and cfg["batch_size"] == 16  # untouched keys keep their defaults


def test_a_value_may_contain_equals_signs():
    assert parse("--experiment_name=a=b")["experiment_name"] == "a=b"


def test_preset_is_applied_first_then_overrides_win_wherever_they_stand():
    cfg = parse("--learning_rate=5e-3", "--preset=demo", "--resize=48")
    demo = train.PRESETS["demo"]
    assert cfg["preset"] == "demo"
    assert cfg["learning_rate"] == 5e-3  # override beats the preset's 1e-3, even written before it
    assert cfg["resize"] == 48
    assert cfg["n_mels"] == demo["n_mels"] and cfg["sample_rate"] == demo["sample_rate"]
    assert cfg["swanlab_mode"] == "local"
    tutorial = parse("--preset=resnext101_32x8d")
    assert (tutorial["scale"], tutorial["resize"], tutorial["warmup_epochs"], tutorial["lr_step_size"],
            tutorial["lr_gamma"], tutorial["hop_length"]) == ("power", 512, 5, 10, 0.1, 640)


def test_unknown_key_hints_the_close_one_and_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse("--learning_rat=1e-3")
    text = str(err.value)
    assert "--learning_rat" in text and "Did you mean --learning_rate" in text
    assert "Valid keys:" in text and "batch_size" in text and "swanlab_mode" in text


@pytest.mark.parametrize("arg, key", [("--num_epochs=3.5", "num_epochs"), ("--learning_rate=fast", "learning_rate"),
                                      ("--pretrained=maybe", "pretrained"), ("--batch_size=", "batch_size")])
def test_bad_values_name_the_key_and_the_expected_type(arg, key):
    with pytest.raises(ConfigError, match=f"--{key}=.*expected"):
        parse(arg)


@pytest.mark.parametrize("arg", ["--num_epochs", "num_epochs=3", "-x"])
def test_malformed_arguments_and_unknown_presets(arg):
    with pytest.raises(ConfigError, match="--key=value"):
        parse(arg)
    with pytest.raises(ConfigError, match="unknown preset.*demo"):
        parse("--preset=nope")


def test_parse_value_booleans():
    assert [parse_value("k", t, False) for t in ("True", "true", "1", "on", "False", "no", "OFF")] == \
        [True, True, True, True, False, False, False]


def test_main_help_prints_every_key_and_returns_an_empty_dict(capsys):
    assert train.main(["--help"]) == {}
    out = capsys.readouterr().out
    for key in train.CONFIG:
        assert f"--{key}=" in out
    assert "--learning_rate=0.0001" in out and "peak learning rate" in out  # defaults with their comments
    assert "--preset=demo" in out and "--preset=resnext101_32x8d" in out
    assert train.main(["-h"]) == {}


def test_main_rejects_an_unknown_key_and_a_bad_swanlab_mode():
    with pytest.raises(ConfigError):
        train.main(["--no_such_key=1"])
    with pytest.raises(ConfigError, match="swanlab_mode"):
        train.main(["--swanlab_mode=cloudy"])


# ---------------------------------------------------------------- checkpoints
def checkpoint_state() -> dict:
    """A small state dict shaped like train.py's checkpoints."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return dict(model=model.state_dict(), optimizer=torch.optim.AdamW(model.parameters()).state_dict(),
                epoch=2, step=0, config=dict(train.CONFIG, arch="resnet34"), label_names=["b", "a", "c"],
                features=dict(norm=dict(mean=-40.0, std=12.5)), history=[{"train/epoch": 1, "train/loss": 1.5}])


def test_checkpoint_round_trip_is_exact_and_leaves_no_temp_files(tmp_path):
    state = checkpoint_state()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    loaded = load_checkpoint(path)
    assert loaded["label_names"] == ["b", "a", "c"]  # order kept: it is the class id mapping
    assert loaded["config"] == state["config"]
    assert loaded["epoch"] == 2 and loaded["history"] == state["history"]
    assert loaded["features"]["norm"] == {"mean": -40.0, "std": 12.5}
    assert loaded["model"].keys() == state["model"].keys()
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)


def test_overwriting_keeps_one_file_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(checkpoint_state(), path)
    save_checkpoint(dict(checkpoint_state(), epoch=3), path)
    assert load_checkpoint(path)["epoch"] == 3
    with pytest.raises(CheckpointError, match="best.pt"):
        save_checkpoint(dict(checkpoint_state(), epoch=4, bad=lambda: 0), path)  # lambdas do not pickle
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_foreign_or_missing_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_a_run_folder_loads_its_best_checkpoint(tmp_path):
    save_checkpoint(dict(checkpoint_state(), epoch=1), tmp_path / "best.pt")
    save_checkpoint(dict(checkpoint_state(), epoch=5), tmp_path / "last.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 1


# ---------------------------------------------------------------- learning-rate schedule
def epoch_lrs(epochs: int, **cfg) -> list[float]:
    """The learning rate read at the start of each epoch with train.make_scheduler stepped once per epoch."""
    cfg = dict(train.CONFIG, **cfg)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg["learning_rate"])
    scheduler = train.make_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedule_reproduces_the_tutorial_warmup_then_step():
    lr = 1e-4
    got = epoch_lrs(30, learning_rate=lr, warmup_epochs=5, lr_step_size=10, lr_gamma=0.1)
    expected = [lr * (e + 1) / 5 if e < 5 else lr * 0.1 ** ((e - 5) // 10) for e in range(30)]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[:6] == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 1e-4])
    assert got[14] == pytest.approx(1e-4) and got[15] == pytest.approx(1e-5) and got[25] == pytest.approx(1e-6)


def test_schedule_with_one_warmup_epoch_is_stepped_from_epoch_one():
    got = epoch_lrs(25, learning_rate=1e-3, warmup_epochs=1, lr_step_size=10, lr_gamma=0.1)
    expected = [1e-3 * 0.1 ** ((e - 1) // 10) if e >= 1 else 1e-3 for e in range(25)]
    assert got == pytest.approx(expected, rel=1e-9)


def test_schedule_without_warmup_is_plain_steplr():
    got = epoch_lrs(25, learning_rate=1e-3, warmup_epochs=0, lr_step_size=10, lr_gamma=0.5)
    assert got == pytest.approx([1e-3 * 0.5 ** (e // 10) for e in range(25)], rel=1e-9)


def test_schedule_constant_and_warmup_then_constant():
    assert epoch_lrs(12, learning_rate=1e-3, warmup_epochs=0, lr_step_size=0) == pytest.approx([1e-3] * 12)
    got = epoch_lrs(8, learning_rate=1e-3, warmup_epochs=3, lr_step_size=0)
    assert got == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3] + [1e-3] * 5)


def test_schedule_state_round_trips_mid_run():
    cfg = dict(train.CONFIG, learning_rate=1e-4, warmup_epochs=5, lr_step_size=10, lr_gamma=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    scheduler = train.make_scheduler(optimizer, cfg)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
    param2 = torch.nn.Parameter(torch.zeros(1))
    optimizer2 = torch.optim.AdamW([param2], lr=1e-4)
    scheduler2 = train.make_scheduler(optimizer2, cfg)
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    lrs = []
    for _ in range(23):
        lrs.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert lrs == pytest.approx(epoch_lrs(30, **{k: cfg[k] for k in ("learning_rate", "warmup_epochs",
                                                                       "lr_step_size", "lr_gamma")})[7:], rel=1e-9)


def test_train_py_config_reads_back_from_its_source_as_bench_py_reads_it():
    from pathlib import Path

    from experiment.config import literal_config
    assert literal_config(Path(train.__file__).read_text()) == train.CONFIG
    assert literal_config("X = {'a': 1, 'b': (2, 3)}", "X") == {"a": 1, "b": (2, 3)}
    with pytest.raises(ValueError, match="no `CONFIG = dict"):
        literal_config("CONFIGS = dict(a=1)")
