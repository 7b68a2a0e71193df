"""Fine-tuning controls on the model side: linear probe, frozen wav2vec2 feature encoder, per-group learning rates.

Call them on the bare model (before ``torch.compile`` or DistributedDataParallel wrap it: those prefix the
parameter names). The head's parameter names come from the registry (``Backbone.head``).
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import BACKBONES, get_backbone
from models.weights import in_modules


def head_parameter_names(model: nn.Module, arch: str) -> list[str]:
    """Names of ``model``'s new-head parameters (e.g. ``fc.weight``, ``fc.bias``).

    Raises ValueError when ``model`` has none (it is not an ``arch`` model, or it is wrapped).
    """
    head = get_backbone(arch).head
    names = [n for n, _ in model.named_parameters() if in_modules(n, head)]
    if not names:
        raise ValueError(f"the model has no parameters under {', '.join(head)} (the {arch} head): pass the "
                         f"bare {arch} model, not a wrapped one or another arch")
    return names


def _keep_eval(module: nn.Module, args) -> None:
    module.train(False)


def freeze_backbone(model: nn.Module, arch: str) -> list[str]:
    """Linear probe: every parameter except the new head gets ``requires_grad=False``; returns the trainable names.

    BatchNorm layers outside the head also keep their running statistics fixed: a forward pre-hook puts them in
    eval mode before every call, so even in ``model.train()`` they normalise with the pretrained statistics and
    do not update them (the frozen body is a fixed feature extractor). Dropout in the body stays as the mode says.
    Raises ValueError (see :func:`head_parameter_names`).
    """
    head = get_backbone(arch).head
    trainable = head_parameter_names(model, arch)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not in_modules(name, head):
            module.register_forward_pre_hook(_keep_eval)
    return trainable


def freeze_feature_encoder(model: nn.Module) -> None:
    """Freeze the convolutional feature encoder of a wav2vec2-family model (transformers'
    ``freeze_feature_encoder()``: the seed guides' default when fine-tuning on little data).

    Raises ValueError for a model without one, naming the backbones that have it.
    """
    inner = getattr(model, "transformer", None)
    if not callable(getattr(inner, "freeze_feature_encoder", None)):
        family = [b.name for b in BACKBONES.values() if b.family == "waveform_transformer"]
        raise ValueError(f"freeze_feature_encoder applies to the wav2vec2 family ({', '.join(family)}), "
                         f"not to a {type(model).__name__}")
    inner.freeze_feature_encoder()


def param_groups(model: nn.Module, arch: str, lr: float, head_lr_multiplier: float = 1.0) -> list[dict]:
    """Optimiser parameter groups: the pretrained body at ``lr``, the new head at ``lr * head_lr_multiplier``.

    Only parameters with ``requires_grad`` are included; a group left empty (a frozen body) is dropped. Each group
    carries ``name`` ("body" or "head") for logging. Raises ValueError (see :func:`head_parameter_names`).
    """
    head = set(head_parameter_names(model, arch))
    body_params: list[torch.nn.Parameter] = []
    head_params: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head_params if name in head else body_params).append(param)
    groups = [dict(params=body_params, lr=lr, name="body"),
              dict(params=head_params, lr=lr * head_lr_multiplier, name="head")]
    return [g for g in groups if g["params"]]
