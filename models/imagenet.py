"""ImageNet ResNet / ResNeXt classifiers from torchvision with a new classification head.

The tutorial fine-tunes ``resnet18`` and ``resnext101_32x8d`` from their IMAGENET1K_V1 weights; every
architecture here uses its IMAGENET1K_V1 weights (the one set all of them have) so results compare.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm

from models.weights import PretrainedWeightsError, hub_file, offline_message

ARCHS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1),
    "resnext50_32x4d": (tvm.resnext50_32x4d, tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
    "resnext101_32x8d": (tvm.resnext101_32x8d, tvm.ResNeXt101_32X8D_Weights.IMAGENET1K_V1),
    "resnext101_64x4d": (tvm.resnext101_64x4d, tvm.ResNeXt101_64X4D_Weights.IMAGENET1K_V1),
}


def file_name(arch: str) -> str:
    """The weights file torchvision downloads for ``arch`` (its name ends in the sha256 prefix torchvision checks)."""
    return os.path.basename(urlparse(ARCHS[arch][1].url).path)


def weights_file(arch: str) -> str:
    """Where torchvision caches the ImageNet weights of ``arch`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return hub_file(file_name(arch))


def _error(arch: str, err: Exception, weights) -> PretrainedWeightsError:
    what = f"the ImageNet weights for {arch}" + (f" from --weights={weights}" if weights else "")
    return PretrainedWeightsError(offline_message(
        what, err, f"torchvision downloads {ARCHS[arch][1].url}", weights_file(arch),
        "set $TORCH_HOME to use another folder", f"the file {file_name(arch)} anywhere"))


def build(entry, num_classes: int, pretrained: bool, weights=None, record=None) -> nn.Module:
    """The torchvision ResNet/ResNeXt ``entry.name`` whose ``fc`` is replaced by ``Linear(in_features, num_classes)``.

    Input: float32 [B, 3, H, W] (any H, W >= 32); output: logits float32 [B, num_classes].
    ``weights``: a local copy of the torchvision file (a state dict), loaded strictly instead of downloading.
    ``record`` holds nothing for this family (the name is the whole architecture).
    Raises PretrainedWeightsError: ``pretrained`` and the weights cannot be downloaded (offline) or read.
    """
    arch = entry.name
    factory, imagenet = ARCHS[arch]
    pretrained = pretrained and record is None
    try:
        if pretrained and weights:
            model = factory(weights=None)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        else:
            model = factory(weights=imagenet if pretrained else None)
    except Exception as err:  # URLError / HTTPError / truncated file / hash mismatch / wrong keys
        if not pretrained:
            raise
        raise _error(arch, err, weights) from None
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
