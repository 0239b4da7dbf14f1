"""Probability calibration of a single-label classifier: does 0.9 mean right 9 times in 10?

Scores from logits and integer targets: the expected calibration error over 15 equal-width confidence bins (ECE,
Guo et al. 2017) and over 15 equal-mass bins (adaptive ECE, Nixon et al. 2019), the multi-class Brier score and
the negative log-likelihood; and temperature scaling: one scalar T that divides every logit, fitted by minimising
the NLL on held-out images. T changes no argmax, so accuracy stays exactly the same.

    scores = calibration_scores(logits, targets)        # {"ece", "adaptive_ece", "brier", "nll"}
    t = fit_temperature(logits, targets)                 # then softmax(logits / t)

(Not the int8 "calibration" of quantize.py, which measures activation ranges.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these a split is too small or too easy to say anything (logged)
UNSURE = "unsure"  # the label of a prediction under --min-confidence


def confidence_and_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """N x K logits and N class indices -> the top softmax probability (N float64) and whether it is right (N bool)."""
    confidence, predicted = logits.double().softmax(dim=1).max(dim=1)
    return confidence.numpy(), (predicted == targets.cpu()).numpy()


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS, *,
                     adaptive: bool = False) -> list[tuple[float, float, int]]:
    """One (mean confidence, accuracy, images) per non-empty bin, lowest confidence first.

    Equal width: bin b holds the confidences in (b/bins, (b+1)/bins]. ``adaptive`` (equal mass): the images sorted by
    confidence and cut into ``bins`` runs of sizes that differ by at most one.
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if adaptive:
        order = np.argsort(confidence, kind="stable")
        groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    else:
        index = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
        groups = [np.flatnonzero(index == b) for b in range(bins)]
    return [(float(confidence[g].mean()), float(correct[g].mean()), len(g)) for g in groups if len(g)]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS, *,
                               adaptive: bool = False) -> float:
    """sum over bins of |accuracy - mean confidence| x (images in the bin / all images); 0 for no images."""
    rows = reliability_bins(confidence, correct, bins, adaptive=adaptive)
    total = sum(n for _, _, n in rows)
    return float(sum(abs(accuracy - mean) * n for mean, accuracy, n in rows) / total) if total else 0.0


def brier_score(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images of sum over classes (p_k - [k is the true class])^2: 0 (perfect) to 2."""
    if len(targets) == 0:
        return 0.0
    one_hot = F.one_hot(targets.cpu().long(), probabilities.shape[1]).to(probabilities.dtype)
    return float(((probabilities.cpu() - one_hot) ** 2).sum(dim=1).mean())


def calibration_scores(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict[str, float]:
    """ECE (equal width), adaptive ECE (equal mass), Brier score and NLL (mean, nats) of softmax(logits)."""
    if len(targets) == 0:
        return {"ece": 0.0, "adaptive_ece": 0.0, "brier": 0.0, "nll": 0.0}
    logits, targets = logits.double().cpu(), targets.cpu().long()
    confidence, correct = confidence_and_correct(logits, targets)
    return {"ece": expected_calibration_error(confidence, correct, bins),
            "adaptive_ece": expected_calibration_error(confidence, correct, bins, adaptive=True),
            "brier": brier_score(logits.softmax(dim=1), targets), "nll": float(F.cross_entropy(logits, targets))}


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises the mean NLL of softmax(logits / T) (a bounded 1-D search).

    NLL(1/T) is convex (a log-sum-exp minus a linear term), so the bounded Brent search over log T finds the one
    minimum; on a split the model gets all right the NLL falls all the way to the lower bound (sharper is always
    better there), and T is that bound.
    """
    from scipy.optimize import minimize_scalar  # scipy comes with scikit-learn; loaded only when fitting

    if len(targets) == 0:
        return 1.0
    logits, targets = logits.double().cpu(), targets.cpu().long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    best = min((found.x, 0.0, low, high), key=nll)  # never worse than leaving the model alone, or than a bound
    return float(math.exp(best))


class Tempered(nn.Module):
    """``model(x) / temperature``: what an exported graph holds, so a plain ONNX or OpenVINO client that applies a
    softmax gets the calibrated probabilities."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)  # a constant in the traced graph
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def tempered(model: nn.Module, temperature: float) -> nn.Module:
    """``model`` itself at T = 1 (an uncalibrated export keeps its exact graph), else ``Tempered``."""
    return model if temperature == 1.0 else Tempered(model, temperature)


def describe_scores(scores: dict[str, float]) -> str:
    return (f"ECE {scores['ece']:.4f}, adaptive ECE {scores['adaptive_ece']:.4f}, Brier {scores['brier']:.4f}, "
            f"NLL {scores['nll']:.4f}")
