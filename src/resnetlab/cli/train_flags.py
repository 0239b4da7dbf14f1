"""The train/tune/lr-find flags: one per TrainConfig field, with timm's names as aliases."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import TrainConfig


def _flag_type(annotation: str):
    if annotation.startswith("float | str"):
        return lambda text: text if text == "auto" else float(text)
    if "list" in annotation:
        return lambda text: [float(v) for v in text.split(",")]
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


# timm's train.py names, so a timm user's command line works: second option strings of the canonical flags (same
# dest), so config.yaml, --config files and `given` only ever hold the canonical names; --help lists both.
TIMM_ALIASES = {"label_smoothing": ("--smoothing",), "grad_clip": ("--clip-grad",),
                "accum_steps": ("--grad-accum-steps",), "erase": ("--reprob",), "ema": ("--model-ema-decay",),
                "out": ("--output",), "batch_size": ("-b",), "workers": ("-j",)}


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (+ TIMM_ALIASES); defaults are suppressed so recipe < YAML < flags merge."""
    parser.add_argument("data", nargs="?", help=TrainConfig.__dataclass_fields__["data"].metadata["help"])
    parser.add_argument("--recipe", help="a preset: auto (the default: image size, network, epochs, optimizer, "
                        "augmentation, balancing... chosen from the data and the time budget, 15 min on a CPU unless "
                        "--time-limit; every choice is logged, and any flag overrides it), fast (28-32 px sets, "
                        "<10 min on 2 CPU cores), accurate (94.3%% Fashion-MNIST in 25 min on 2 CPU cores), photos "
                        "(224 px, pretrained), plain (the fixed defaults of --help), or a YAML file path")
    parser.add_argument("--config", help="YAML file of settings (flags given on the command line win)")
    for f in fields(TrainConfig):
        if f.name == "data" or f.metadata.get("internal"):
            continue
        flags = ("--" + f.name.replace("_", "-"), *TIMM_ALIASES.get(f.name, ()))
        meta = f.metadata
        text = meta["help"] + (f" (default: {f.default})" if f.default is not None and f.default != "" else "")
        if "bool" in str(f.type):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif meta.get("const"):
            parser.add_argument(*flags, nargs="?", const=meta["const"], default=argparse.SUPPRESS, help=text,
                                metavar="PROJECT" if f.name == "wandb" else "URI")
        else:
            parser.add_argument(*flags, type=_flag_type(str(f.type)), choices=meta.get("choices"),
                                default=argparse.SUPPRESS, help=text, metavar=None if meta.get("choices") else
                                f.name.upper())
