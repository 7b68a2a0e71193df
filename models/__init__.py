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


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be downloaded or loaded; the message says where to put the file."""


def weights_path(arch: str) -> str:
    """Where torchvision caches the ImageNet weights of ``arch`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    url = ARCHS[arch][1].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def build_model(arch: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """A torchvision ResNet/ResNeXt whose ``fc`` is replaced by ``Linear(in_features, num_classes)``.

    Input: float32 [B, 3, H, W] (any H, W >= 32); output: logits float32 [B, num_classes].
    Raises:
        ValueError: unknown ``arch`` (the message lists the valid names) or ``num_classes < 2``.
        PretrainedWeightsError: ``pretrained`` and the weights cannot be downloaded (offline) or read.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is unknown; choose one of: {', '.join(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    factory, weights = ARCHS[arch]
    try:
        model = factory(weights=weights if pretrained else None)
    except Exception as err:  # URLError / HTTPError / truncated file (RuntimeError) / hash mismatch
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"could not get the ImageNet weights for {arch} ({type(err).__name__}: {err}).\n"
            f"  torchvision downloads {weights.url}\n"
            f"  into {weights_path(arch)}\n"
            f"  Offline: copy that file there (set $TORCH_HOME to use another folder), "
            f"or train from scratch with --pretrained=False.") from None
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
