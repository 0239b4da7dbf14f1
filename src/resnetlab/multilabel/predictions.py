"""Multi-label predictions from logits: every label at or above its threshold, with its probability (sigmoid), and
test-time augmentation that averages sigmoid probabilities (TTAModel averages softmax ones).

    rows = label_sets(logits, classes, thresholds, topk=5)   # the fields of classifier.Prediction, per image
"""

from __future__ import annotations

import torch

from ..models import TTAModel

DEFAULT_THRESHOLD = 0.5  # as multilabel.metrics (not imported: it loads scikit-learn, and predicting needs none)


class SigmoidTTA(TTAModel):
    """TTAModel for sigmoid outputs: each label's probability averaged over the views, returned as a logit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.model(x)
        views = self._views(x)
        probabilities = self.model(torch.cat(views)).float().sigmoid().view(len(views), x.shape[0], -1).mean(dim=0)
        return torch.logit(probabilities, eps=1e-6)


def label_sets(logits: torch.Tensor, classes: list[str], thresholds: list[float] | None, topk: int) -> list[dict]:
    """Per image: ``labels`` = [(name, probability)] of every label at or above its threshold, most probable first;
    ``label`` = their names joined by '|' ('' for none); ``confidence`` = the probability of the most probable
    predicted label (with none predicted: of the label that came closest); ``top`` =
    the ``topk`` most probable labels; ``probabilities`` = one per label (sigmoid, not summing to 1)."""
    probabilities = logits.float().sigmoid()
    cut = torch.tensor(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * len(classes),
                       dtype=probabilities.dtype)
    k = max(1, min(topk, len(classes)))
    top_p, top_i = probabilities.topk(k, dim=1)
    rows = []
    for p, i, row in zip(top_p, top_i, probabilities):
        order = torch.argsort(row, descending=True, stable=True)
        chosen = [(classes[int(j)], float(row[j])) for j in order if row[j] >= cut[j]]
        rows.append({"label": "|".join(name for name, _ in chosen),
                     "confidence": chosen[0][1] if chosen else float(p[0]),
                     "top": [(classes[int(c)], float(q)) for c, q in zip(i, p)], "probabilities": row.numpy(),
                     "labels": chosen})
    return rows


def right_rows(logits: torch.Tensor, targets: torch.Tensor, thresholds: list[float] | None) -> int:
    """Images whose predicted label set equals the true one (N x K logits and 0/1 targets): the exact-match count
    that an export's accuracy check compares for a multi-label model."""
    cut = torch.tensor(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * logits.shape[1])
    return int(((logits.float().sigmoid() >= cut) == (targets > 0.5)).all(dim=1).sum())
