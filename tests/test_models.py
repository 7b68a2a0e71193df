"""Model factory: every architecture gives [B, num_classes] logits; clear errors for a wrong name and for
ImageNet weights that cannot be had offline."""
from __future__ import annotations

import os
import time

import pytest
import torch

from models import ARCHS, PretrainedWeightsError, build_model, weights_path


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_gives_logits_of_num_classes(arch, one_thread):
    torch.manual_seed(0)
    model = build_model(arch, 7, pretrained=False)
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == 7
    model.eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_train_mode_backward_reaches_the_new_head(one_thread):
    model = build_model("resnet18", 3, pretrained=False)
    logits = model(torch.randn(2, 3, 64, 48))  # any H, W >= 32
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_unknown_arch_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet9000", 10, pretrained=False)
    text = str(err.value)
    assert "resnet9000" in text
    for name in ARCHS:
        assert name in text


def test_fewer_than_two_classes_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        build_model("resnet18", 1, pretrained=False)


def test_pretrained_offline_fails_fast_and_says_where_the_weights_go(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached there
    file_name = os.path.basename(ARCHS["resnet18"][1].url)
    assert weights_path("resnet18") == str(tmp_path / "hub" / "checkpoints" / file_name)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("resnet18", 10, pretrained=True)
    assert time.monotonic() - start < 60  # offline: no long hang
    text = str(err.value)
    assert file_name in text
    assert str(tmp_path / "hub" / "checkpoints") + os.sep in text
    assert "$TORCH_HOME" in text
    assert "--pretrained=False" in text


def test_a_corrupt_cached_weights_file_is_a_pretrained_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(ARCHS["resnet18"][1].url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("resnet18", 10, pretrained=True)
    assert str(path) in str(err.value)
