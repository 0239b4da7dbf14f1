"""The keywords the verbs share, read once into one value: how the network runs (``device.Compute``: device, batch
size, --amp, decode workers, progress bars), how a bare weights file is read (arch, classes, img_size) and where
the data lives (data_root, cache_dir); export adds its int8 knobs.

The Python verbs take them as keywords, as the CLI takes flags (``resnetlab.evaluate(ckpt, data, batch_size=64)``);
each verb reads them once with ``Shared.of`` and passes the value (or its ``compute``) down, so no internal
function carries a dozen keywords and a new shared setting is added here, not to every signature.

    shared = Shared.of("evaluate", options)      # TypeError, as Python's own, for a keyword the verb does not take
    shared.compute.batch_size, shared.arch, shared.data_root
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from .config import require_at_least
from .device import Compute


class SharedOptions(TypedDict, total=False):
    """The shared keywords (which verb takes which: ``ACCEPTS``)."""

    batch_size: int  # images per forward pass
    device: str  # auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps
    workers: int | None  # image-decoding processes (None: the machine's default)
    amp: str  # mixed precision: auto, bf16, fp16, off
    progress: bool  # progress bars (shown on a terminal or in Jupyter only)
    arch: str | None  # a bare state_dict or .safetensors file: its architecture
    classes: list[str] | None  # ... its class names, in output order
    img_size: int | None  # ... its input size
    data_root: str | None  # where a CSV's relative paths start (default: the run's)
    cache_dir: str | None  # the decoded-image cache (default: $RESNETLAB_CACHE)
    calib_images: int  # export --quantize int8: training images that calibrate the ranges
    calib_method: str  # ... minmax, entropy or percentile
    max_drop: float  # export: refuse when accuracy falls by more than this many points


DEFAULTS: dict = {"batch_size": 256, "device": "auto", "workers": None, "amp": "auto", "progress": True, "arch": None,
                  "classes": None, "img_size": None, "data_root": None, "cache_dir": None, "calib_images": 256,
                  "calib_method": "minmax", "max_drop": 1.0}
_RUN = {"batch_size", "device", "workers", "progress"}
_BARE = {"arch", "classes", "img_size"}
ACCEPTS = {
    "evaluate": _RUN | _BARE | {"amp", "data_root", "cache_dir"},
    "calibrate": _RUN | {"amp", "data_root", "cache_dir"},
    "predict_files": _RUN | _BARE,
    "embed_files": _RUN | {"arch", "img_size"},
    "explain": _RUN | _BARE | {"data_root"},
    "export_model": _BARE | {"workers", "calib_images", "calib_method", "max_drop"},
}


@dataclass(frozen=True)
class Shared:
    """The shared keywords of one verb call, defaults filled in and checked."""

    compute: Compute
    arch: str | None = None
    classes: list[str] | None = None
    img_size: int | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    calib_images: int = 256
    calib_method: str = "minmax"
    max_drop: float = 1.0

    @classmethod
    def of(cls, verb: str, options: dict, **defaults) -> Shared:  # noqa: ANN003 - a verb's own defaults
        """``options``: the keywords a verb was called with; ``defaults``: the verb's own (explain's batch 32)."""
        unknown = sorted(set(options) - ACCEPTS[verb])
        if unknown:
            raise TypeError(f"{verb}() got an unexpected keyword argument '{unknown[0]}' (it takes "
                            f"{', '.join(sorted(ACCEPTS[verb]))})")
        given = {**DEFAULTS, **defaults, **options}
        require_at_least("--batch-size", given["batch_size"])
        compute = Compute.of(given["device"], batch_size=given["batch_size"], amp=given["amp"],
                             workers=given["workers"], progress=given["progress"])
        return cls(compute, **{k: given[k] for k in ("arch", "classes", "img_size", "data_root", "cache_dir",
                                                     "calib_images", "calib_method", "max_drop")})

    @property
    def bare(self) -> dict:
        """load()'s keywords for a bare weights file."""
        return {"arch": self.arch, "classes": self.classes, "img_size": self.img_size}

    def classifier(self, model: object, *, tta: str = "none") -> object:
        """``model`` when it is already a loaded Classifier (resnetlab.load: load once, call the verbs many times),
        else the Classifier of the file it names, loaded with these options."""
        from .classifier import Classifier, load
        from .errors import ConfigError

        if not isinstance(model, Classifier):
            return load(model, device=self.compute.device, **self.bare, tta=tta)
        if tta != "none" or any(self.bare.values()):
            raise ConfigError("tta, arch, classes and img_size apply when a file is loaded: pass them to "
                              "resnetlab.load(PATH, ...) and give the verb its Classifier")
        return model
