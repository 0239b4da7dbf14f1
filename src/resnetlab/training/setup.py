"""What a run builds before its first step: the network, class balancing, the losses (and mixup), the optimizer,
AMP, EMA and the module the steps call (DDP, torch.compile). Plain functions with explicit inputs.

    model, spec = build_network(cfg, num_classes=10, img_size=32)
    optimizer = build_optimizer(model, cfg)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace

import timm
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2, get_optimizer_class, get_optimizer_info
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data.sources import open_configured
from ..data.splits import DataSource
from ..distributed import DistInfo
from ..errors import ConfigError
from ..log import logger
from ..models import (
    ModelSpec,
    build_model,
    check_arch,
    hub_state_dict,
    load_pretrained,
    read_state_dict,
    resolve_stem,
    set_backbone_trainable,
)
from ..multilabel.training import label_balance
from ..task import task_of


def build_network(cfg: TrainConfig, num_classes: int, img_size: int, *, pretrained: bool = True,
                  weights: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model a run trains: architecture, stem, head, width, pretrained weights (``weights``: the --pretrained
    file's tensors, already read by check_inputs), frozen backbone."""
    spec = ModelSpec(cfg.model, num_classes, cfg.head, cfg.hidden, cfg.dropout, resolve_stem(cfg.stem, img_size),
                     cfg.width, cfg.pool)
    model = build_model(spec)
    if cfg.pretrained and pretrained:
        for note in load_pretrained(model, cfg.pretrained, spec, weights):
            logger.info(f"pretrained: {note}")
    if cfg.freeze_backbone:
        set_backbone_trainable(model, False)
    return model, spec


@dataclass
class Inputs:
    """What a fresh run checked before it created its run folder: the settings with the data's task settled, the
    data source and the pretrained weights."""

    cfg: TrainConfig
    source: DataSource
    weights: dict[str, torch.Tensor] | None = None


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Every input of a fresh run, checked before the run folder exists: the architecture, the --pretrained file
    (read once, here) and the data's layout; a mistake leaves nothing behind that would refuse the same --out."""
    check_arch(cfg.model, cfg.width)  # an architecture outside the family, or a --width it cannot take
    source = open_configured(cfg)
    cfg = replace(cfg, **task_of(source.task).settings(cfg, source))  # --task auto -> the data's, recorded
    if cfg.best_metric == "top5" and len(source.classes) < 5:
        raise ConfigError(f"--best-metric top5 needs at least 5 classes; this data has {len(source.classes)}")
    return Inputs(cfg, source, read_weights(cfg))


def read_weights(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The --pretrained weights, read before anything is decoded: a missing file or an offline hub fails in a
    second."""
    if not cfg.pretrained:
        return None
    return hub_state_dict(cfg.model) if cfg.pretrained == "hub" else read_state_dict(cfg.pretrained)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.opt`` (create_optimizer_v2) over two groups: weight decay on conv/linear weights only,
    none on norm scales and biases (decaying them only hurts; timm's filter_bias_and_bn rule). The groups hold every
    parameter, frozen ones too, so --unfreeze-at trains the backbone with the same optimizer. sgd is Nesterov's when
    momentum > 0; a momentum other than 0.9 also sets beta1 where the optimizer has betas (adam: betas=(m, 0.999))."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        info = get_optimizer_info(cfg.opt)
    except ValueError as err:  # a name this timm release does not have (the list is timm 1.0.31's)
        raise ConfigError(f"optimizer {cfg.opt}: {err} (installed timm {timm.__version__})") from None
    extra: dict = {"nesterov": cfg.momentum > 0} if cfg.opt == "sgd" else {}
    if info.has_betas and cfg.momentum != 0.9:
        betas = inspect.signature(get_optimizer_class(cfg.opt, bind_defaults=False)).parameters["betas"].default
        if isinstance(betas, tuple):  # adafactor's None: its own schedule, left alone
            extra["betas"] = (cfg.momentum, *betas[1:])
    try:
        return create_optimizer_v2(groups, cfg.opt, lr=cfg.peak_lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, **extra)
    except ValueError as err:  # e.g. nesterov without momentum, a beta out of range
        raise ConfigError(f"optimizer {cfg.opt} with momentum {cfg.momentum:g}: {err}") from None


def class_balance(cfg: TrainConfig, labels: torch.Tensor, num_classes: int, device: torch.device
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """--balance: (class weights for the loss, per-image sampling weights); at most one is set.

    weights and sampler are inverse class frequencies: a class with half the images weighs (or is drawn) twice as
    much. sqrt tempers the weights to 1/sqrt(frequency), scaled so the average image still weighs 1: a 15:1 set
    weighs its rarest class 3.9x its largest, not 15x (full weights turn an under-trained network's constant
    guess into the rarest class: benchmarks/README.md, "Defaults"). Multi-label (N x K) labels: a per-label
    pos_weight (its square root for sqrt), or draws by each image's rarest label (label_balance).
    """
    if labels.ndim == 2:
        return label_balance(cfg, labels, device)
    counts = torch.bincount(labels, minlength=num_classes).float()
    if cfg.balance == "weights":
        return (counts.sum() / (len(counts) * counts.clamp_min(1))).to(device), None
    if cfg.balance == "sqrt":
        weights = counts.clamp_min(1).rsqrt()
        return (weights * counts.sum() / (weights * counts).sum()).to(device), None
    if cfg.balance == "sampler":
        return None, (1.0 / counts.clamp_min(1))[labels].double()
    return None, None


@dataclass
class Objective:
    """The losses a run uses: ``train`` (label smoothing, class weights; soft targets under mixup), ``val``
    (plain cross-entropy), ``probe`` (what the LR range test trains with), and the mixup/cutmix ``mixer``."""

    train: nn.Module
    val: nn.Module
    probe: nn.Module
    mixer: Mixup | None = None
    hits: Callable | None = None  # multi-label: images with every label right (None: argmax == target)
    epoch_metrics: Callable | None = None  # multi-label: validation mAP and F1 (None: macro F1, top-5)


def build_objective(cfg: TrainConfig, num_classes: int, class_weights: torch.Tensor | None) -> Objective:
    """The task's losses, mixer and scores (task.py; multi-label: class_weights is the per-label pos_weight)."""
    return Objective(*task_of(cfg.task).objective_parts(cfg, num_classes, class_weights))


def build_ema(cfg: TrainConfig, model: nn.Module) -> ModelEmaV3 | None:
    if not cfg.ema:
        return None
    logger.info(f"weights averaged with EMA decay {cfg.ema:g}; validation and best.pt use the averaged weights")
    return ModelEmaV3(model, decay=cfg.ema, use_warmup=True)  # warm-up: early averages are not stale


def wrap(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """The module the training steps call: DDP across processes, optionally torch.compile'd."""
    wrapped = model
    if info.enabled:
        device = info.device
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if cfg.compile else wrapped
