"""Fine-tuning pretrained weights the fastai way: the classifier alone first, then the whole network with
layer-wise learning rates (timm's ``param_groups_layer_decay``, through ``steps.make_optimizer``).

The phase is a function of the epoch (``epoch < train.freeze_epochs``: head only), and the
learning-rate schedule a function of the optimizer step, so a resumed fold replays exactly.
The config keys are in :class:`pipeline.config.TrainConfig`; the README's "Fine-tuning" says why.
"""

from __future__ import annotations

import torch

from pipeline.config import ConfigError, TrainConfig


def classifier_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model's classifier (timm's ``get_classifier()``, else the module ``pretrained_cfg["classifier"]`` names)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, torch.nn.Module) and any(True for _ in head.parameters()):
            return head
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if name:
        return model.get_submodule(name)
    raise ConfigError(f"train.freeze_epochs: {type(model).__name__} names no classifier (no get_classifier() and no "
                      "pretrained_cfg['classifier']); set train.freeze_epochs: 0 for this model")


def head_only(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) trains the classifier alone."""
    return epoch < cfg.freeze_epochs


def set_body_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """``requires_grad`` off (``frozen``) or on for every parameter outside the classifier.

    A parameter without a gradient is skipped by AdamW (no update, no weight decay), so the
    one optimizer built before freezing serves both phases.
    """
    head = {id(p) for p in classifier_module(model).parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(not frozen)


def body_norms_to_eval(model: torch.nn.Module) -> None:
    """Put the frozen body's normalisation layers in eval mode (called after ``model.train()``).

    Why eval: the frozen body is then a fixed feature extractor, its BatchNorm running
    statistics those it was pretrained with, so the head learns on exactly the features it
    sees at validation, and a head-only epoch leaves every body tensor unchanged. (fastai
    trains BatchNorm in its frozen phase, ``train_bn=True``; Keras' transfer-learning guide
    keeps it in inference mode, as here.)
    """
    head = set(classifier_module(model).modules())
    for module in model.modules():
        if module not in head and isinstance(module, torch.nn.modules.batchnorm._NormBase):
            module.eval()
