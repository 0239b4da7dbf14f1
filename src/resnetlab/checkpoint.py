"""One checkpoint format: a dict of plain values and tensors, written atomically, read with weights_only.

Everything needed to predict travels inside (architecture, head, stem, classes, image size,
mean/std), so ``best.pt`` alone is a usable model. A bare state_dict from a notebook is accepted too
when the architecture and classes are given.

    save_checkpoint("runs/x/best.pt", {...})
    model, meta = load_model("runs/x/best.pt", device="cpu")
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.crop import Crop
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError, ModelError
from .fileio import atomic_open
from .models import ModelSpec, build_model, load_matching, read_state_dict, torch_load_failure

FORMAT = "resnetlab-checkpoint"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """What predictions need besides the weights."""

    spec: ModelSpec
    classes: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    _: KW_ONLY
    crop: Crop = Crop()  # the evaluation crop, whole (its keys stay flat in the file: crop_pct, interpolation...)
    task: str = "multiclass"  # or "multilabel": one sigmoid per class, labels at or above their threshold
    thresholds: list[float] | None = None  # multilabel: per class, chosen after training (None: 0.5 for all)
    temperature: float = 1.0  # calibration: probabilities are softmax(logits / temperature) (resnetlab.calibrate)
    epoch: int | None = None
    metrics: dict = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        return {"model_spec": self.spec.to_dict(), "classes": list(self.classes), "img_size": self.img_size,
                "mean": list(self.mean), "std": list(self.std), **self.crop.to_dict(), "task": self.task,
                "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
                "temperature": float(self.temperature)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any], source: str = "") -> ModelMeta:
        """From a checkpoint payload or an exported model's sidecar (the same keys; a sidecar has no epoch)."""
        return cls(ModelSpec.from_dict(payload["model_spec"]), list(payload["classes"]), int(payload["img_size"]),
                   list(payload["mean"]), list(payload["std"]), crop=Crop.from_dict(payload),
                   task=str(payload.get("task", "multiclass")), thresholds=payload.get("thresholds"),
                   temperature=float(payload.get("temperature") or 1.0),
                   epoch=payload.get("epoch"), metrics=dict(payload.get("metrics") or {}), source=source)


def describe_model(meta: ModelMeta, config: dict[str, Any]) -> dict[str, Any]:
    """The part of every resnetlab checkpoint that ``load_model`` reads back, plus the run's settings (plain
    values only, so ``weights_only=True`` loading accepts it). Weights and training state are added beside it."""
    return {**meta.to_dict(), "config": dict(config)}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a half file."""
    with atomic_open(path, "wb") as handle:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, handle)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without unpickling code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle refusals, truncation and non-torch files
        if _looks_like_onnx(path):
            raise CheckpointError(f"cannot load {path}: it looks like an ONNX model: give it a .onnx extension") \
                from None
        raise CheckpointError(f"cannot load {path}: {torch_load_failure(path, err)}") from None


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX protobuf (ir_version first, then a graph with nodes) under another name, e.g. ``model``."""
    try:
        with open(path, "rb") as handle:
            if handle.read(1) != b"\x08":  # field 1 (ir_version), a varint: how every ONNX file starts
                return False
        import onnx

        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no onnx installed, or not a protobuf: not an ONNX model
        return False
    return proto.ir_version > 0 and len(proto.graph.node) > 0


def load_model(path: str | Path, *, device: str | torch.device = "cpu", arch: str | None = None,
               classes: list[str] | None = None, img_size: int | None = None,
               checkpoint: dict | None = None) -> tuple[nn.Module, ModelMeta]:
    """A ready-to-predict model (eval mode) and its metadata from a resnetlab checkpoint or a bare state_dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        payload: dict[str, Any] = {"model": read_state_dict(path)}
    else:
        payload = checkpoint if checkpoint is not None else read_checkpoint(path)
    if payload.get("format") == FORMAT:
        meta = ModelMeta.from_dict(payload, str(path))
        model = build_model(meta.spec)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match {meta.spec.arch}: {str(err)[:300]}") from None
    else:
        model, meta = _from_bare_state_dict(path, payload, arch, classes, img_size)
    return model.to(device).eval(), meta


def _from_bare_state_dict(path: Path, payload: dict, arch: str | None, classes: list[str] | None,
                          img_size: int | None) -> tuple[nn.Module, ModelMeta]:
    state = payload
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(payload.get(key), dict):
            state = payload[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither a resnetlab checkpoint nor a state_dict of tensors")
    if not arch or not classes:
        raise CheckpointError(f"{path} is a bare state_dict: pass --model ARCH and --classes (a file with one "
                              "class per line, or a comma-separated list) so it can be rebuilt")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    head_weight = state.get("fc.weight", state.get("fc.3.weight"))
    if head_weight is not None and head_weight.shape[0] != len(classes):
        raise CheckpointError(f"{path} has a head for {head_weight.shape[0]} classes but {len(classes)} class "
                              f"names were given")
    conv1 = state.get("conv1.weight")
    stem = "small" if conv1 is not None and conv1.shape[-1] == 3 else "standard"
    head = "mlp" if "fc.0.weight" in state else "linear"
    hidden = int(state["fc.0.weight"].shape[0]) if head == "mlp" else 512
    spec = _spec_that_fits(state, ModelSpec(arch, len(classes), head=head, hidden=hidden, stem=stem))
    model = build_model(spec)
    try:
        load_matching(model, state, str(path))
        model.load_state_dict(state, strict=True)
    except (ModelError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit {arch} with {len(classes)} classes: {str(err)[:300]}") from None
    size = img_size or (32 if stem == "small" else 224)
    meta = ModelMeta(spec, list(classes), size, list(IMAGENET_MEAN), list(IMAGENET_STD), source=str(path))
    return model, meta


def _spec_that_fits(state: dict[str, torch.Tensor], spec: ModelSpec) -> ModelSpec:
    """The --width a bare state_dict was trained with, read from the stage widths and checked against every key.

    Stage widths are rounded per stage (``round(c * width)``), so one stage alone can mislead: with --width 0.3
    the stages are 19-38-77-154 and 19/64 rebuilds 76 in layer3. Candidates come from the first block of
    layer1 (x1 for basic blocks and bottlenecks, x2 / x4 for wider grouped blocks) and of layer4 (/512...),
    each also rounded to two decimals (what a user types); the first whose every tensor shape matches wins.
    """
    sources = [(state.get("layer1.0.conv1.weight"), 64), (state.get("layer4.0.conv1.weight"), 512)]
    raw = [int(weight.shape[0]) / (base * factor) for weight, base in sources if weight is not None
           for factor in (1, 2, 4)]
    if not raw:
        return spec
    candidates = list(dict.fromkeys([1.0] + [w for value in raw for w in (round(value, 2), value)]))
    for width in candidates:
        if not 0.0625 <= width <= 4.0:
            continue
        candidate = ModelSpec(**{**spec.to_dict(), "width": width})
        try:
            built = build_model(candidate).state_dict()
        except ModelError:
            continue
        if all(key in state and state[key].shape == value.shape for key, value in built.items()):
            return candidate
    return spec


def parse_classes(value: str | None) -> list[str] | None:
    """--classes: a text file with one name per line, or a comma-separated list."""
    if not value:
        return None
    candidate = Path(value)
    if candidate.is_file():
        names = [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines()]
        return [n for n in names if n]
    return [c.strip() for c in value.split(",") if c.strip()]
