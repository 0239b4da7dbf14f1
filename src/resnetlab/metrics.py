"""Classification metrics from logits: thin wrappers over scikit-learn and torch.

    report = classification_metrics(logits, targets, classes)
    report["accuracy"], report["per_class"]["cat"]["f1"]
    wrong = rank_mistakes(logits, targets)   # misclassified positions, most confident first
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == targets.view(-1, 1)).any(dim=1).float().mean())


def macro_f1(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Macro-averaged F1 over all ``num_classes`` (a class never predicted nor present counts as 0)."""
    if len(targets) == 0:
        return 0.0
    _, _, f1, _ = precision_recall_fscore_support(targets.numpy(), logits.argmax(dim=1).numpy(),
                                                  labels=list(range(num_classes)), average="macro", zero_division=0)
    return float(f1)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, top-5 (with >= 5 classes), mean loss, per-class P/R/F1/support, macro and weighted averages."""
    predicted = logits.argmax(dim=1).numpy()
    truth = targets.numpy()
    labels = list(range(len(classes)))
    result: dict = {
        "images": int(len(truth)),
        "accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "loss": float(F.cross_entropy(logits, targets)) if len(truth) else 0.0,
    }
    if len(classes) >= 5:
        result["top5_accuracy"] = topk_accuracy(logits, targets, 5)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    # balanced accuracy = the mean recall of the classes present (sklearn's definition; its balanced_accuracy_score
    # warns whenever a prediction names a class absent from the split, which is routine on small splits)
    present = support > 0
    result["balanced_accuracy"] = float(recall[present].mean()) if present.any() else 0.0
    result["per_class"] = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                               "support": int(support[i])} for i, c in enumerate(classes)}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average=average,
                                                     zero_division=0)
        result[f"{average}_avg"] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    result["confusion_matrix"] = confusion_matrix(truth, predicted, labels=labels).tolist()
    return result


def rank_mistakes(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Positions (LongTensor) of the misclassified rows, the most confident prediction first.

    The one order of misclassified.csv, misclassified.png and ``explain --misclassified``; ties keep the
    split's order (stable sort), so every caller lists the same mistakes.
    """
    confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
    wrong = torch.nonzero(predicted != targets.to(predicted.device)).flatten()
    return wrong[confidence[wrong].argsort(descending=True, stable=True)]
