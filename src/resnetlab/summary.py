"""Model summary: a layer table (name, output shape, parameters), parameter counts, MACs and FLOPs.

Shapes come from forward hooks on one dummy image; FLOPs from torch's own ``FlopCounterMode``, which
counts a multiply-add as 2 FLOPs (convolutions and matrix products only; BatchNorm, ReLU and pooling are
not counted, as in the published figures), so MACs = FLOPs / 2.

    print(format_summary(summary_for_spec("resnet50", num_classes=1000, img_size=224)))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checkpoint import read_checkpoint
from .config import require_at_least
from .errors import CheckpointError
from .models import ModelSpec, build_model, resolve_stem

DEFAULT_DEPTH = 2  # stem layers, each stage and its blocks, pooling, head


@dataclass
class ModelSummary:
    rows: list[tuple[str, tuple[int, ...], int]]  # (module name, output shape without the batch, parameters)
    total_params: int
    trainable_params: int
    macs: int  # multiply-accumulates for one image
    flops: int  # 2 x MACs, torch's count
    img_size: int
    arch: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["rows"] = [{"name": n, "output_shape": list(s), "params": p} for n, s, p in self.rows]
        return values


def summarize(model: nn.Module, img_size: int, device: torch.device | str = "cpu", *,
              depth: int = DEFAULT_DEPTH, arch: str = "") -> ModelSummary:
    """Run one img_size x img_size image through ``model`` (in eval mode, restored after) and measure it."""
    from torch.utils.flop_counter import FlopCounterMode

    require_at_least("--depth", depth)  # 0 would show no layer at all
    require_at_least("--img-size", img_size)
    shown = [(name, module) for name, module in model.named_modules()
             if name and name.count(".") < depth]  # named_modules: parents before their children
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])
        return record

    handles = [module.register_forward_hook(hook_for(name)) for name, module in shown]
    was_training = model.training
    model.eval()  # BatchNorm must not update its statistics from a dummy image
    try:
        x = torch.zeros(1, 3, img_size, img_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    flops = int(counter.get_total_flops())
    rows = [(name, shapes.get(name, ()), sum(p.numel() for p in module.parameters())) for name, module in shown]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(rows, total, trainable, flops // 2, flops, img_size, arch)


def summary_for_spec(arch: str, num_classes: int = 1000, img_size: int = 224, *, head: str = "linear",
                     hidden: int = 512, dropout: float = 0.5, stem: str = "auto", width: float = 1.0,
                     depth: int = DEFAULT_DEPTH) -> ModelSummary:
    """The summary of the network ``resnetlab train`` would build with these options (random weights)."""
    spec = ModelSpec(arch, num_classes, head, hidden, dropout, resolve_stem(stem, img_size), width)
    return summarize(build_model(spec), img_size, depth=depth, arch=arch)


def summary_for_checkpoint(path, depth: int = DEFAULT_DEPTH) -> ModelSummary:  # noqa: ANN001 - str or Path
    """The summary of a run's network, rebuilt from the spec and image size stored in its checkpoint."""
    return summary_for_payload(read_checkpoint(path), path, depth=depth)


def summary_for_payload(payload: dict, path, depth: int = DEFAULT_DEPTH) -> ModelSummary:  # noqa: ANN001
    """The same from a checkpoint already read (``path`` only names it in errors): the report reads it once."""
    if "model_spec" not in payload or "img_size" not in payload:
        raise CheckpointError(f"{path} has no model_spec/img_size (a bare state_dict?); use --model instead")
    spec = ModelSpec.from_dict(payload["model_spec"])
    return summarize(build_model(spec), int(payload["img_size"]), depth=depth, arch=spec.arch)


def human(count: float) -> str:
    """12_345_678 -> '12.35 M'; 4.1e9 -> '4.10 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:g}"


def format_summary(summary: ModelSummary) -> str:
    """A plain-text table, one row per shown module (deeper modules indented), then the totals."""
    names = ["  " * name.count(".") + name for name, _, _ in summary.rows]
    shapes = ["x".join(str(d) for d in shape) or "-" for _, shape, _ in summary.rows]
    params = [f"{p:,}" for _, _, p in summary.rows]
    width_name = max([len(n) for n in names] + [5])
    width_shape = max([len(s) for s in shapes] + [12])
    width_params = max([len(p) for p in params] + [10])
    lines = [f"{'layer':<{width_name}}  {'output shape':>{width_shape}}  {'parameters':>{width_params}}",
             "-" * (width_name + width_shape + width_params + 4)]
    lines += [f"{n:<{width_name}}  {s:>{width_shape}}  {p:>{width_params}}" for n, s, p in zip(names, shapes, params)]
    lines.append("-" * (width_name + width_shape + width_params + 4))
    title = f"{summary.arch} at " if summary.arch else ""
    lines += [f"{title}{summary.img_size}x{summary.img_size} px",
              f"parameters: {summary.total_params:,} ({human(summary.total_params)}), "
              f"trainable: {summary.trainable_params:,} ({human(summary.trainable_params)})",
              f"MACs: {human(summary.macs)} per image, FLOPs: {human(summary.flops)} (1 MAC = 2 FLOPs)"]
    return "\n".join(lines)
