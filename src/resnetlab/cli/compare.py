"""`resnetlab compare RUN_DIR RUN_DIR ...`: the table on stdout, compare.html with --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..log import logger


def compare_parser(sub) -> None:  # noqa: ANN001 - argparse's private _SubParsersAction
    parser = sub.add_parser("compare", help="runs side by side: differing settings, metrics, McNemar's test",
                            description="A table of the settings that differ between the runs (config.yaml) and "
                                        "their metrics; for two runs McNemar's exact test on their per-image "
                                        "correctness (predictions.csv: the same images required). Give run folders "
                                        "(the final validation) or evaluate --out folders, e.g. both checkpoints "
                                        "evaluated on the same --split test.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or evaluate output folders")
    parser.add_argument("--out", default=None, help="folder for compare.html and compare.json")


def compare_run(args: argparse.Namespace) -> int:
    from ..compare import compare, format_table

    comparison = compare(args.runs, out=args.out)
    print(format_table(comparison))
    for note in comparison.notes:
        logger.warning(note)
    if args.out:
        logger.info(f"wrote {Path(args.out) / 'compare.html'}")
    return 0
