"""Backbones for audio classification: ImageNet ResNets/ResNeXts, PANNs CNN14, AST and the wav2vec2 family.

``build_model(arch, num_classes)`` builds any of them with a new classification head, and ``arch="hf:<model id
or folder>"`` any Hugging Face audio-classification checkpoint (``models/hub.py``); the registry
(:data:`BACKBONES`) says what each was pretrained on (:func:`resolve_frontend` applies it to a config), where its
weights come from, and how to rebuild it from a checkpoint (:func:`backbone_record`).
"""
from models.finetune import freeze_backbone, freeze_feature_encoder, head_parameter_names, param_groups
from models.imagenet import ARCHS
from models.registry import (BACKBONES, FAMILIES, Backbone, backbone_record, build_model, get_backbone,
                             resolve_frontend, weights_path)
from models.weights import PretrainedWeightsError

__all__ = ["ARCHS", "BACKBONES", "FAMILIES", "Backbone", "PretrainedWeightsError", "backbone_record", "build_model",
           "freeze_backbone", "freeze_feature_encoder", "get_backbone", "head_parameter_names", "param_groups",
           "resolve_frontend", "weights_path"]
