"""resnetlab: train, evaluate, predict with and explain ResNet image classifiers on your own images.

    import resnetlab
    result = resnetlab.train(data="photos/", epochs=5)
    clf = resnetlab.load(result.best_checkpoint)
    clf.predict(["photos/cat/1.jpg"])[0].label
"""

from __future__ import annotations

from importlib import import_module

from ._version import __version__
from .errors import ResnetlabError

__all__ = ["train", "load", "evaluate", "predict_files", "TrainConfig", "ResnetlabError", "__version__"]

# Loaded on first use, so `import resnetlab` and `resnetlab --help` stay fast (torch loads only when needed).
_LAZY = {"train": "resnetlab.training", "load": "resnetlab.classifier", "predict_files": "resnetlab.predict",
         "evaluate": "resnetlab.evaluation", "TrainConfig": "resnetlab.config"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
