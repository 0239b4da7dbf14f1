"""The flat public API: `from resnetlab import train, evaluate, predict, ...` gives the real functions, lazily (no torch
on `import resnetlab`), whatever was imported first; each has a docstring with a runnable example."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys

import pytest

import resnetlab

FLAT = ["train", "evaluate", "predict", "explain", "export", "embed", "tune", "serve", "load", "Classifier",
        "TrainConfig", "set_verbosity"]
REAL = {"train": "resnetlab.training.run:train", "evaluate": "resnetlab.evaluation:evaluate",
        "predict": "resnetlab.predict:predict_files", "predict_files": "resnetlab.predict:predict_files",
        "explain": "resnetlab.explain:explain", "export": "resnetlab.export:export_model",
        "embed": "resnetlab.embed:embed_files", "tune": "resnetlab.tune:tune", "serve": "resnetlab.serve:serve",
        "load": "resnetlab.classifier:load", "Classifier": "resnetlab.classifier:Classifier",
        "TrainConfig": "resnetlab.config:TrainConfig", "set_verbosity": "resnetlab.log:set_verbosity"}


def _real(name: str):  # noqa: ANN202
    module, attribute = REAL[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def test_import_is_light_and_the_flat_names_load_on_use():
    """In a fresh interpreter: no torch until a name is used; a verb's name is the function even after its module of
    the same name (resnetlab/predict.py) was imported, which sets the package attribute to the module."""
    script = ("import sys, resnetlab\n"
              "assert 'torch' not in sys.modules, 'import resnetlab loaded torch'\n"
              "from resnetlab import set_verbosity, TrainConfig\n"
              "assert 'torch' not in sys.modules, 'set_verbosity/TrainConfig loaded torch'\n"
              "import resnetlab.predict, resnetlab.explain, resnetlab.serve, resnetlab.tune\n"
              "from resnetlab import predict, explain, serve, tune\n"
              "assert callable(predict) and predict is resnetlab.predict_files, predict\n"
              "assert explain.__module__ == 'resnetlab.explain' and serve.__name__ == 'serve', (explain, serve)\n"
              "assert resnetlab.tune.__name__ == 'tune' and callable(resnetlab.tune)\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(REAL))
def test_each_flat_name_is_the_real_object(name: str):
    assert getattr(resnetlab, name) is _real(name)
    assert name in resnetlab.__all__ and name in dir(resnetlab)


def test_submodules_stay_importable_by_their_path():
    from resnetlab.explain import explain  # noqa: F401 - `from resnetlab.X import ...` still reads the module

    assert importlib.import_module("resnetlab.explain").__file__.endswith("explain.py")
    assert inspect.ismodule(sys.modules["resnetlab.predict"])


@pytest.mark.parametrize("name", FLAT)
def test_each_docstring_has_a_runnable_example(name: str):
    doc = inspect.getdoc(getattr(resnetlab, name)) or ""
    if name == "train" and "Example::" not in doc:  # training/run.py's docstring shows it inline
        assert "resnetlab.train(data=" in doc
        return
    assert "Example::" in doc, f"resnetlab.{name}'s docstring has no example:\n{doc}"
    block = re.match(r"\n*((?:    .*\n?|\n)+)", doc.split("Example::", 1)[1])  # the indented lines after it
    code = inspect.cleandoc(block.group(1)) if block else ""
    called = "resnetlab.load(" if name == "Classifier" else f"resnetlab.{name}("  # load() makes a Classifier
    assert called in code, f"resnetlab.{name}'s example does not call it:\n{doc}"
    compile(code, f"<resnetlab.{name} example>", "exec")  # valid Python, ready to paste
    assert "import resnetlab" in code
