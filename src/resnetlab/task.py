"""The task a model solves, as one object the verbs ask instead of testing its name: single-label (softmax, one class
per image) or multi-label (a sigmoid per label, several per image; its pieces live in ``resnetlab.multilabel``).

    task = task_of(meta.task)                     # the name stored in checkpoints, sidecars and config.yaml
    probabilities = task.probabilities(logits)    # softmax or sigmoid
    rows = task.predictions(logits, classes, thresholds=meta.thresholds, topk=3)
    network = task.tta(model, "flip")             # views averaged as probabilities of the task's kind

It owns the loss (``objective_parts``), the output activation, the hit rule and per-epoch scores, the race's score
and its chance floor, the prediction rows, the label text of a split.csv row and the export sidecar's output note.
The verbs that write different files per task (evaluate's metrics and figures, predict's CSV columns, explain's
per-label maps) branch once on ``task.multilabel``. Heavy imports (torch, timm, scikit-learn) happen inside the
methods: the data side and the CLI import this module and stay fast to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import DataError

MULTICLASS, MULTILABEL = "multiclass", "multilabel"


class SingleLabel:
    """One class per image: softmax outputs, cross-entropy, accuracy (macro F1 too on imbalanced classes)."""

    name = MULTICLASS
    multilabel = False
    calibratable = True  # one temperature for the softmax (calibrate.py)
    fixed_best_metric = False  # best.pt's metric may follow the validation split's size (training/settle.py)

    def __repr__(self) -> str:
        return f"task_of({self.name!r})"

    def probabilities(self, logits: Any) -> Any:
        return logits.float().softmax(dim=1)

    def tta(self, model: Any, mode: str) -> Any:
        """The model wrapped for --tta ``mode``: the views' softmax probabilities averaged."""
        from .models import TTAModel

        return TTAModel(model, mode)

    def criterion(self, label_smoothing: float) -> Any:
        """The training loss without class weights or mixing (the learning-rate finder's)."""
        from torch import nn

        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def objective_parts(self, cfg: Any, num_classes: int, class_weights: Any) -> tuple:
        """(train loss, validation loss, LR-probe loss, mixer or None, hit counter or None, per-epoch scores or None)
        for ``training.setup.Objective``: None leaves the loop's argmax hits and macro F1 / top-5."""
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        from torch import nn

        smoothed = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
        if not (cfg.mixup or cfg.cutmix):
            return smoothed, nn.CrossEntropyLoss(), smoothed, None, None, None
        # soft targets: label smoothing moves into the mixer
        mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), mixer, None, None

    def race_score(self, row: dict, imbalanced: bool) -> float:
        """A race candidate's score from its last epoch's row: accuracy, or on imbalanced classes the mean of
        accuracy and macro F1 (neither bought with the other)."""
        if imbalanced:
            return 0.5 * (float(row["val_acc"]) + float(row.get("val_f1", row["val_acc"])))
        return float(row["val_acc"])

    def chance_score(self, labels: Sequence, imbalanced: bool) -> float:
        """What always answering the most common validation class scores on ``race_score``'s scale (accuracy: its
        share; macro F1: its F1 over the number of classes)."""
        import numpy as np

        values = np.asarray(labels)
        if values.ndim != 1 or not len(values):
            return 0.0
        counts = np.bincount(values)
        share = float(counts.max() / len(values))
        f1 = 2 * share / (1 + share) / max(1, int((counts > 0).sum()))
        return 0.5 * (share + f1) if imbalanced else share

    def predictions(self, logits: Any, classes: list[str], *, thresholds: list[float] | None = None, topk: int = 3,
                    min_confidence: float = 0.0, unsure: str = "unsure") -> list[dict]:
        """Per image the fields of ``classifier.Prediction``: the top class (``unsure`` when its probability is
        under ``min_confidence``), its probability, the ``topk`` best guesses and every class's probability."""
        probabilities = self.probabilities(logits)
        k = min(topk, len(classes))
        top_p, top_i = probabilities.topk(k, dim=1)
        return [{"label": classes[int(i[0])] if p[0] >= min_confidence else unsure, "confidence": float(p[0]),
                 "top": [(classes[int(c)], float(q)) for c, q in zip(i, p)], "probabilities": row.numpy()}
                for p, i, row in zip(top_p, top_i, probabilities)]

    def settings(self, cfg: Any, source: Any) -> dict:
        """The settings that follow from the data's task (config.yaml and the checkpoint record them): ``task``;
        multi-label-only flags refused or warned about."""
        from .errors import ConfigError
        from .log import logger

        if cfg.best_metric == "map":
            raise ConfigError("--best-metric map needs multi-label data (a CSV with a 'labels' column or 0/1 columns)")
        if cfg.threshold is not None:
            logger.warning("--threshold applies to multi-label data only; this data has one class per image")
        return {"task": self.name}

    def check_min_confidence(self, min_confidence: float) -> None:
        """--min-confidence applies here (nothing to say)."""

    def store_thresholds(self, best: Any, data: Any, device: Any, cfg: Any) -> None:
        """After training: nothing (one class per image is the argmax)."""

    def label_text(self, label: Any, classes: list[str]) -> str:
        """A split.csv cell: the class name."""
        return classes[label]

    label_column = "label"

    def output_note(self, temperature: float) -> str:
        """The export sidecar's note on the graph's output."""
        if temperature == 1.0:
            return "logits in the order of 'classes'; apply softmax for probabilities"
        return (f"logits in the order of 'classes'; already divided by the calibration 'temperature' "
                f"{temperature:.4g}: apply softmax for calibrated probabilities (do not divide again)")


class MultiLabel(SingleLabel):
    """Several labels per image: a sigmoid per label, binary cross-entropy, per-label thresholds, mAP."""

    name = MULTILABEL
    multilabel = True
    calibratable = False  # one temperature per label is not built (calibrate.py says so)
    fixed_best_metric = True  # mAP, chosen by the task (settings)

    def probabilities(self, logits: Any) -> Any:
        return logits.float().sigmoid()

    def tta(self, model: Any, mode: str) -> Any:
        """The model wrapped for --tta ``mode``: each label's sigmoid probability averaged over the views."""
        from .multilabel.predictions import SigmoidTTA

        return SigmoidTTA(model, mode)

    def criterion(self, label_smoothing: float) -> Any:
        from .multilabel.training import MultiHotLoss

        return MultiHotLoss(label_smoothing)

    def objective_parts(self, cfg: Any, num_classes: int, class_weights: Any) -> tuple:
        """As SingleLabel's; ``class_weights`` is the per-label pos_weight."""
        from .multilabel.training import objective_parts

        return objective_parts(cfg, num_classes, class_weights)

    def settings(self, cfg: Any, source: Any) -> dict:
        """``task`` and best.pt by mAP unless another metric was asked for; the rule is logged."""
        from .errors import ConfigError
        from .log import logger

        if cfg.best_metric == "top5":
            raise ConfigError("--best-metric top5 is for one class per image; multi-label runs use map, macro_f1, "
                              "val_acc (exact match) or val_loss")
        best_metric = "map" if cfg.best_metric == "val_acc" else cfg.best_metric
        rule = f"--threshold {cfg.threshold:g} for every label" if cfg.threshold is not None else \
            "per label, the F1-optimal one on the validation split"
        logger.info(f"task: multilabel, {len(source.classes)} labels (sigmoid outputs, binary cross-entropy); best.pt "
                    f"by {best_metric}; train_acc/val_acc = exact-match ratio; thresholds after training: {rule}")
        return {"task": self.name, "best_metric": best_metric}

    def race_score(self, row: dict, imbalanced: bool) -> float:
        """mAP (the exact-match ratio where a row has none)."""
        return float(row.get("val_map", row["val_acc"]))

    def chance_score(self, labels: Sequence, imbalanced: bool) -> float:
        """0: mAP has no most-common-class floor here."""
        return 0.0

    def predictions(self, logits: Any, classes: list[str], *, thresholds: list[float] | None = None, topk: int = 3,
                    min_confidence: float = 0.0, unsure: str = "unsure") -> list[dict]:
        """Every label at or above its threshold (multilabel/predictions.label_sets); ``min_confidence`` does not
        apply (check_min_confidence says so)."""
        from .multilabel.predictions import label_sets

        return label_sets(logits, classes, thresholds, topk)

    def check_min_confidence(self, min_confidence: float) -> None:
        if min_confidence:
            from .log import logger

            logger.warning("--min-confidence applies to single-label models; a multi-label model's labels are those "
                           "at or above their thresholds")

    def store_thresholds(self, best: Any, data: Any, device: Any, cfg: Any) -> None:
        """After training: per-label thresholds on the validation split, into best.pt (multilabel/thresholds.py)."""
        from .multilabel.thresholds import store_thresholds

        store_thresholds(best, data, device, cfg)

    def label_text(self, label: Any, classes: list[str]) -> str:
        """A split.csv cell: the names joined by '|', as the multi-label CSV reads them."""
        return "|".join(c for c, on in zip(classes, label) if on)

    label_column = "labels"

    def output_note(self, temperature: float) -> str:
        return ("logits in the order of 'classes'; apply a sigmoid per class for probabilities; the labels are those "
                "at or above their 'thresholds' (0.5 where null)")


SINGLE_LABEL, MULTI_LABEL = SingleLabel(), MultiLabel()


def task_of(name: str | None) -> SingleLabel:
    """The task object for a task name: "multilabel", else single-label (checkpoints from before multi-label have
    none; a config's --task may still read "auto" before the data decided)."""
    return MULTI_LABEL if name == MULTILABEL else SINGLE_LABEL


def check_task(data_task: str, model_task: str, where: str) -> None:
    """A multi-label model scores multi-label data, and a one-class-per-image model the other kind."""
    if task_of(data_task) is not task_of(model_task):
        raise DataError(f"{where} is {data_task} data but the model is {model_task}; evaluate it on data of its kind")
