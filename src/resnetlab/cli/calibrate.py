"""The calibrate verb: a checkpoint's temperature fitted on a validation split, written into a calibrated copy.

    resnetlab calibrate runs/x/best.pt photos/ --out runs/x/calibrated.pt
"""

from __future__ import annotations

import argparse

from .flags import RUN_FLAGS, common_model_flags, picked


def calibrate_parser(sub) -> None:
    calibrate = sub.add_parser(
        "calibrate", help="fit a temperature so the probabilities mean what they say; write a calibrated checkpoint",
        description="Temperature scaling: fits the T that minimises the negative log-likelihood of softmax(logits / "
                    "T) on --split of DATA (split as in training) and writes the checkpoint with T to --out. "
                    "predict, evaluate, explain and serve of that file give calibrated probabilities, and export "
                    "puts the division into the exported graph. Accuracy does not change (no argmax moves). "
                    "Prints ECE, adaptive ECE, Brier score and NLL before and after. Single-label models only.")
    calibrate.add_argument("checkpoint", help="best.pt / last.pt of a run")
    calibrate.add_argument("data", help="image folder, CSV or built-in name (the run's data set)")
    calibrate.add_argument("--out", default=None,
                           help="calibrated checkpoint to write (default: CHECKPOINT_DIR/STEM-calibrated.pt; may be "
                                "CHECKPOINT itself)")
    calibrate.add_argument("--split", default="val", choices=("train", "val", "test"),
                           help="images the temperature is fitted on (default: val; never the split you report on)")
    calibrate.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    common_model_flags(calibrate, tta=False)  # --device, --batch-size, --workers, --progress


def calibrate_run(args: argparse.Namespace) -> int:
    from ..calibrate import calibrate

    calibrate(args.checkpoint, args.data, **picked(args, *RUN_FLAGS, "out", "split", "data_root"))
    return 0
