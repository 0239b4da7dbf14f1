"""Command line: parse, call one function of the Python API, print. No machine learning in here.

    resnetlab train photos/ --epochs 5
    resnetlab evaluate runs/x/best.pt photos/ --split test
    resnetlab predict runs/x/best.pt new_photos/ --out predictions.csv --topk 3
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..errors import ConfigError, ResnetlabError
from ..fileio import NAME_BYTES
from ..log import configure
from ..signals import Terminated, sigterm_as_exception
from .calibrate import calibrate_parser, calibrate_run
from .compare import compare_parser, compare_run
from .data import check_parser, check_run, lr_find_parser, lr_find_run, train_parser, train_run
from .models import (
    embed_parser,
    embed_run,
    evaluate_parser,
    evaluate_run,
    explain_parser,
    explain_run,
    export_parser,
    export_run,
    predict_parser,
    predict_run,
    report_parser,
    report_run,
    serve_parser,
    serve_run,
    summary_parser,
    summary_run,
)
from .shards import shards_parser, shards_run
from .tune import tune_parser, tune_run

EPILOG = """Examples:
  resnetlab train fashion-mnist --recipe fast          built-in data set, tuned preset
  resnetlab train photos/ --model resnet50 --pretrained resnet50.safetensors --img-size 224
  resnetlab train labels.csv --epochs 20 --aug standard --balance sampler
  resnetlab train --resume runs/my-run                 continue from runs/my-run/last.pt
  resnetlab evaluate runs/my-run/best.pt photos/ --split test
  resnetlab predict runs/my-run/best.pt new_photos/ --out predictions.csv --topk 3
  resnetlab calibrate runs/my-run/best.pt photos/ --out runs/my-run/calibrated.pt   temperature scaling
  resnetlab embed runs/my-run/best.pt photos/ --out embeddings.npz   pooled features, paths and labels
  resnetlab embed --model resnet50 --pretrained resnet50.safetensors photos/ --out embeddings.csv --l2-normalize
  resnetlab explain runs/my-run/best.pt photos/ --method gradcam++   heat maps in runs/my-run/explain/
  resnetlab explain runs/my-run/best.pt --misclassified photos/ --limit 16
  resnetlab export runs/my-run/best.pt --format onnx --dynamic-batch   best.onnx + best.onnx.json
  resnetlab export runs/my-run/best.pt --format openvino --quantize int8   best.xml + .bin: int8 for CPUs
  resnetlab serve runs/my-run/best.pt                  web page and JSON API at http://127.0.0.1:8000
  resnetlab serve runs/my-run/best.xml                 the same, answered by OpenVINO int8
  resnetlab summary --model resnet50 --img-size 224    layer table, parameters, MACs and FLOPs
  resnetlab report runs/my-run                         one self-contained report.html (mail it, open offline)
  resnetlab tune photos/ --trials 30 --trial-time 3m   hyper-parameter search; runs/tune/NAME/best.yaml
  resnetlab compare runs/a/test runs/b/test --out cmp   settings, metrics, McNemar p of two runs
  resnetlab shards photos/ shards/ --shard-size 1000   WebDataset tar shards; then: resnetlab train shards/
"""


# One entry per verb: (add its sub-parser, run it). New verbs add a pair here.
COMMANDS = {
    "train": (train_parser, train_run),
    "lr-find": (lr_find_parser, lr_find_run),
    "evaluate": (evaluate_parser, evaluate_run),
    "calibrate": (calibrate_parser, calibrate_run),
    "predict": (predict_parser, predict_run),
    "embed": (embed_parser, embed_run),
    "explain": (explain_parser, explain_run),
    "check": (check_parser, check_run),
    "export": (export_parser, export_run),
    "serve": (serve_parser, serve_run),
    "summary": (summary_parser, summary_run),
    "report": (report_parser, report_run),
    "tune": (tune_parser, tune_run),
    "compare": (compare_parser, compare_run),
    "shards": (shards_parser, shards_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetlab", description="Train, evaluate, predict with and explain ResNet "
                                     "image classifiers on your own images.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    for verb in sub.choices.values():  # on every verb, after its own flags: `resnetlab train DATA -q`
        loudness = verb.add_mutually_exclusive_group()
        loudness.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
        loudness.add_argument("-v", "--verbose", action="store_true", help="also print debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run one verb, map its outcome to an exit code: 0 ok; 1 a failed run or bad data (a data, weights or
    checkpoint problem, unreadable inputs); 2 a usage error (a flag or setting); 130 after Ctrl-C and 143 after
    SIGTERM (a training run writes its resumable last.pt first). Errors are one line on stderr."""
    args = build_parser().parse_args(argv)
    _names_never_crash_printing()
    configure(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        with sigterm_as_exception():
            return COMMANDS[args.command][1](args)
    except ResnetlabError as err:
        print(f"resnetlab {args.command}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt as stop:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


def _names_never_crash_printing() -> None:
    """A file name that is not valid UTF-8 is printed as 'latin1_\\xe9.png' (fileio.NAME_BYTES): a UTF-8 terminal's
    strict stdout would raise in the middle of a run, a surrogateescape one would print a byte the terminal garbles."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a TextIOWrapper; a caller's own stream object is left as it is
            stream.reconfigure(errors=NAME_BYTES)


if __name__ == "__main__":
    sys.exit(main())
