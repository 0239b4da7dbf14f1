"""Flags several verbs share: the checkpoint and what rebuilds a bare state_dict, decoding, batches, TTA."""

from __future__ import annotations

import argparse


def checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """The CHECKPOINT argument, and what rebuilds a bare state_dict saved from a notebook."""
    parser.add_argument("checkpoint", help="best.pt / last.pt of a run, or a bare state_dict file")
    parser.add_argument("--model", default=None, help="architecture, only for a bare state_dict file")
    parser.add_argument("--classes", default=None,
                        help="class names for a bare state_dict: a file (one per line) or a comma list")
    parser.add_argument("--img-size", type=int, default=None, help="image size, only for a bare state_dict")


RUN_FLAGS = ("batch_size", "device", "workers", "progress")  # common_model_flags' values: the verbs' keywords too


def picked(args: argparse.Namespace, *names: str) -> dict:
    """The flags ``names`` as keyword arguments: their argparse names are the API's keywords."""
    return {name: getattr(args, name) for name in names}


def bare(args: argparse.Namespace) -> dict:
    """The checkpoint_flags values as keyword arguments of load/evaluate/predict_files/explain/export_model."""
    from ..checkpoint import parse_classes

    return {"arch": args.model, "classes": parse_classes(args.classes), "img_size": args.img_size}


def decode_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU cores)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars (shown only when the output is a terminal)")


def common_model_flags(parser: argparse.ArgumentParser, *, batch_size: int = 256, tta: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"images per forward pass (default: {batch_size})")
    decode_flags(parser)
    if tta:
        parser.add_argument("--tta", default="none", choices=("none", "flip", "flip-crop"),
                            help="test-time augmentation: average over mirrored (flip: 2 views) and also shifted "
                                 "(flip-crop: 10 views) images (default: none)")
