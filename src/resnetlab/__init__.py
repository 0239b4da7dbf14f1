"""resnetlab: train, evaluate, predict with and explain ResNet image classifiers on your own images.

    from resnetlab import train, evaluate, predict, explain, export, load
    result = train(data="photos/", epochs=5)
    clf = load(result.best_checkpoint)
    clf.predict(["photos/cat/1.jpg"])[0].label

Every verb of the CLI is a function here (train, evaluate, calibrate, predict, embed, explain, export, tune,
serve), with ``load``/``Classifier`` for use in code and ``set_verbosity`` for how much it says. Messages go to
stderr and show by default when the caller has configured no logging.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType

from ._version import __version__
from .errors import ResnetlabError
from .log import set_verbosity

__all__ = ["train", "evaluate", "calibrate", "predict", "predict_files", "embed", "explain", "export", "tune",
           "serve", "load", "Classifier", "TrainConfig", "set_verbosity", "ResnetlabError", "__version__"]

# name -> (module, attribute), loaded on first use, so `import resnetlab` and `resnetlab --help` stay fast (torch
# loads only when needed).
_LAZY = {
    "train": ("resnetlab.training", "train"),
    "evaluate": ("resnetlab.evaluation", "evaluate"),
    "calibrate": ("resnetlab.calibrate", "calibrate"),
    "predict": ("resnetlab.predict", "predict_files"),
    "predict_files": ("resnetlab.predict", "predict_files"),
    "embed": ("resnetlab.embed", "embed_files"),
    "explain": ("resnetlab.explain", "explain"),
    "export": ("resnetlab.export", "export_model"),
    "tune": ("resnetlab.tune", "tune"),
    "serve": ("resnetlab.serve", "serve"),
    "load": ("resnetlab.classifier", "load"),
    "Classifier": ("resnetlab.classifier", "Classifier"),
    "TrainConfig": ("resnetlab.config", "TrainConfig"),
}


def _lazy(name: str):  # noqa: ANN202 - a function or a class
    module, attribute = _LAZY[name]
    return getattr(import_module(module), attribute)


def __getattr__(name: str):  # noqa: ANN202
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """``resnetlab.predict`` stays the function after ``import resnetlab.predict`` (the module of the same name):
    the import system sets a package's attribute to a submodule when it first loads it, which would replace the
    function for everyone, in an order that depends on who imported what first. A property on the package's class
    wins over that attribute, and its setter leaves the module in sys.modules only, where `from resnetlab.predict
    import ...` and importlib.import_module("resnetlab.predict") still find it."""


def _verb(name: str) -> property:
    return property(lambda _package: _lazy(name), lambda _package, _submodule: None)


# the verbs that share a submodule's name
for _name in ("predict", "embed", "explain", "export", "tune", "serve", "calibrate"):
    setattr(_Package, _name, _verb(_name))
del _name
sys.modules[__name__].__class__ = _Package
