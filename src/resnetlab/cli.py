"""Command line: parse, call one function of the Python API, print. No machine learning in here.

    resnetlab train photos/ --epochs 5
    resnetlab evaluate runs/x/best.pt photos/ --split test
    resnetlab predict runs/x/best.pt new_photos/ --out predictions.csv --topk 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._version import __version__
from .config import TrainConfig, add_train_flags, recipe_values
from .errors import ConfigError, ResnetlabError
from .log import configure, logger
from .signals import Terminated, sigterm_as_exception

EPILOG = """Examples:
  resnetlab train fashion-mnist --recipe fast          built-in data set, tuned preset
  resnetlab train photos/ --model resnet50 --pretrained resnet50.safetensors --img-size 224
  resnetlab train labels.csv --epochs 20 --aug standard --balance sampler
  resnetlab train --resume runs/my-run                 continue from runs/my-run/last.pt
  resnetlab evaluate runs/my-run/best.pt photos/ --split test
  resnetlab predict runs/my-run/best.pt new_photos/ --out predictions.csv --topk 3
  resnetlab explain runs/my-run/best.pt photos/ --method gradcam++   heat maps in runs/my-run/explain/
  resnetlab explain runs/my-run/best.pt --misclassified photos/ --limit 16
  resnetlab export runs/my-run/best.pt --format onnx --dynamic-batch   best.onnx + best.onnx.json
  resnetlab serve runs/my-run/best.pt                  web page and JSON API at http://127.0.0.1:8000
  resnetlab summary --model resnet50 --img-size 224    layer table, parameters, MACs and FLOPs
  resnetlab report runs/my-run                         one self-contained report.html (mail it, open offline)
"""


def _checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """The CHECKPOINT argument, and what rebuilds a bare state_dict saved from a notebook."""
    parser.add_argument("checkpoint", help="best.pt / last.pt of a run, or a bare state_dict file")
    parser.add_argument("--model", default=None, help="architecture, only for a bare state_dict file")
    parser.add_argument("--classes", default=None,
                        help="class names for a bare state_dict: a file (one per line) or a comma list")
    parser.add_argument("--img-size", type=int, default=None, help="image size, only for a bare state_dict")


def _bare(args: argparse.Namespace) -> dict:
    """The _checkpoint_flags values as keyword arguments of load/evaluate/predict_files/explain/export_model."""
    from .checkpoint import parse_classes

    return {"arch": args.model, "classes": parse_classes(args.classes), "img_size": args.img_size}


def _decode_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU cores)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars (shown only when the output is a terminal)")


def _common_model_flags(parser: argparse.ArgumentParser, *, batch_size: int = 256, tta: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"images per forward pass (default: {batch_size})")
    _decode_flags(parser)
    if tta:
        parser.add_argument("--tta", default="none", choices=("none", "flip", "flip-crop"),
                            help="test-time augmentation: average over mirrored (flip: 2 views) and also shifted "
                                 "(flip-crop: 10 views) images (default: none)")


def _train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a classifier on a folder, CSV or built-in data set",
                           description="Train a ResNet. Writes runs/NAME/: config.yaml, metrics.csv, best.pt, "
                                       "last.pt, curves.png, data_report.json (and split.csv when split for you), "
                                       "samples.png (a training batch after augmentation); when the run "
                                       "finishes (last epoch, --time-limit or --early-stop) best.pt is "
                                       "evaluated on the validation split: metrics.json, "
                                       "confusion_matrix.csv/.png, misclassified.csv, predictions.png, "
                                       "misclassified.png (Grad-CAM), and report.html shows it all. A run "
                                       "stopped by Ctrl-C or --stop-after-steps writes these when resumed to "
                                       "its end.")
    add_train_flags(train)


def _train_run(args: argparse.Namespace) -> int:
    from .training import train  # every verb's module is imported when it runs: --help never loads torch

    if getattr(args, "resume", None):  # the run's saved settings, changed only by the flags given now
        result = train(**{k: v for k, v in _train_flags(args).items() if v is not None})
    else:
        result = train(_train_config(args))
    return 128 + result.stop_signal if result.stopped == "signal" and result.stop_signal else 0


def _train_flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("command", "recipe", "config", "quiet", "verbose")}


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --recipe < --config YAML < flags given on the command line."""
    return TrainConfig.from_sources(args.config, _train_flags(args), base=recipe_values(args.recipe))


def _lr_find_parser(sub) -> None:
    finder = sub.add_parser("lr-find", help="learning-rate range test: plot loss against LR, suggest a value",
                            description="Trains a copy of the model for a few hundred steps while the learning "
                                        "rate rises from 1e-6 to 10; writes lr_find.png and lr_find.csv to --out "
                                        "(default runs/lr-find) and prints the suggested --lr. Takes the same "
                                        "options as train.")
    add_train_flags(finder)


def _lr_find_run(args: argparse.Namespace) -> int:
    from .training.lr_find import find_lr

    config = _train_config(args)
    find_lr(config, Path(config.out or "runs/lr-find"))
    return 0


def _evaluate_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="metrics of a checkpoint on a data split",
                              description="Writes metrics.json, confusion_matrix.csv/.png, misclassified.csv, "
                                          "predictions.png and misclassified.png (Grad-CAM) to --out. Then "
                                          "refreshes the run's report.html when the checkpoint is in a run "
                                          "folder and --out is inside it (the default), else writes "
                                          "report.html into --out.")
    _checkpoint_flags(evaluate)
    evaluate.add_argument("data", help="image folder, CSV or built-in name")
    evaluate.add_argument("--split", default="val", choices=("train", "val", "test"), help="default: val")
    evaluate.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/eval-SPLIT)")
    evaluate.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    evaluate.add_argument("--mlflow", nargs="?", const="auto", default=None, metavar="URI",
                          help="also log the metrics (as SPLIT_accuracy, ...) to the MLflow run that trained the "
                               "checkpoint (its URI is saved in the run folder; or give one)")
    _common_model_flags(evaluate)


def _evaluate_run(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    evaluate(args.checkpoint, args.data, split=args.split, out=args.out, batch_size=args.batch_size,
             device=args.device, workers=args.workers, data_root=args.data_root, progress=args.progress,
             tta=args.tta, mlflow=args.mlflow, **_bare(args))
    return 0


def _predict_parser(sub) -> None:
    predict = sub.add_parser("predict", help="top-k predictions for image files and folders, as CSV",
                             description="Writes a CSV: path,label,confidence,top2_label,top2_prob,...,error.")
    _checkpoint_flags(predict)
    predict.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--out", default="predictions.csv", help="CSV path (default: predictions.csv)")
    predict.add_argument("--topk", type=int, default=3, help="labels per image (default: 3)")
    predict.add_argument("--allow-errors", action="store_true",
                         help="exit 0 when some inputs could not be read (their rows carry the error); default: 1")
    predict.add_argument("--cam", default=None, metavar="DIR",
                         help="also write a Grad-CAM overlay PNG of the predicted class per image into DIR and "
                              "add its path as a 'cam' column (before 'error')")
    _common_model_flags(predict)


def _predict_run(args: argparse.Namespace) -> int:
    from .predict import predict_files

    summary = predict_files(args.checkpoint, args.inputs, out=args.out, topk=args.topk, batch_size=args.batch_size,
                            device=args.device, workers=args.workers, progress=args.progress, tta=args.tta,
                            cam=args.cam, **_bare(args))
    return 0 if summary["predicted"] and (not summary["failed"] or args.allow_errors) else 1


def _explain_parser(sub) -> None:
    explain = sub.add_parser(
        "explain", help="Grad-CAM heat maps for images, folders or a split's most confident mistakes",
        description="Heat maps of where the model looked (pytorch-grad-cam). Writes to --out one overlay PNG per "
                    "image at its original size (NNNN_NAME.png; label, probability, target class and method in "
                    "its PNG text), explain_grid.png ('true / predicted (p)' titles, first 64 images) and "
                    "explain.csv (path,overlay,true,predicted,probability,target,error). Unreadable files are "
                    "skipped and named.")
    _checkpoint_flags(explain)
    explain.add_argument("inputs", nargs="*", help="image files and/or folders (searched recursively)")
    explain.add_argument("--misclassified", default=None, metavar="DATA",
                         help="instead of INPUTS: the --limit most confident mistakes of --split of this data set "
                              "(image folder, CSV or built-in name)")
    explain.add_argument("--split", default="val", choices=("train", "val", "test"),
                         help="split for --misclassified (default: val)")
    explain.add_argument("--limit", type=int, default=16, help="mistakes to explain with --misclassified (default: 16)")
    explain.add_argument("--method", default="gradcam", metavar="METHOD",
                         help="gradcam (default), gradcam++, xgradcam, layercam, eigencam, scorecam or ablationcam "
                              "(the last two run one forward pass per feature channel: slow)")
    explain.add_argument("--layer", default=None,
                         help="dotted module name, e.g. layer3.1 or layer4.-1 (default: the last block of the last "
                              "stage)")
    explain.add_argument("--target", default="pred",
                         help="class whose evidence is shown: pred (default), true (needs --misclassified) or a "
                              "class name")
    explain.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/explain, or "
                                                     "CHECKPOINT_DIR/explain-misclassified-SPLIT)")
    explain.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    # the backward pass keeps activations alive: smaller batches than predict's 256
    _common_model_flags(explain, batch_size=32, tta=False)


def _explain_run(args: argparse.Namespace) -> int:
    from .explain import explain

    summary = explain(args.checkpoint, args.inputs, misclassified=args.misclassified, split=args.split,
                      limit=args.limit, method=args.method, layer=args.layer, target=args.target, out=args.out,
                      batch_size=args.batch_size, device=args.device, workers=args.workers, data_root=args.data_root,
                      progress=args.progress, **_bare(args))
    return 0 if summary["explained"] or args.misclassified else 1


def _check_parser(sub) -> None:
    check = sub.add_parser("check", help="report problems in a data set before training",
                           description="Decodes every image once (filling the cache training reuses) and lists "
                                       "per-class counts and every problem with its path and reason: unreadable, "
                                       "truncated or non-image files, decompression bombs, EXIF rotation, the same "
                                       "image in train and val/test, empty class folders, class imbalance. "
                                       "Exit code 1 when there are unreadable files, 2 when the data is unusable.")
    check.add_argument("data", help="image folder, CSV or built-in name")
    check.add_argument("--img-size", type=int, default=None, help="decode size (default: what train would use)")
    check.add_argument("--val-split", type=float, default=0.1, help="as for train (default: 0.1)")
    check.add_argument("--seed", type=int, default=0, help="as for train (default: 0)")
    check.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    check.add_argument("--json", default=None, help="also write the full report to this JSON file")
    check.add_argument("--follow-links", action="store_true", help="as for train: follow folder links out of DATA")
    _decode_flags(check)


def _check_run(args: argparse.Namespace) -> int:
    from .data.check import check_data, format_report
    from .data.sources import default_img_size, open_data
    from .fileio import write_json
    from .log import progress_enabled

    source = open_data(args.data, val_split=args.val_split, seed=args.seed, data_root=args.data_root,
                       follow_links=args.follow_links)
    size = args.img_size or default_img_size(source)
    report = check_data(source, size, workers=args.workers, progress=progress_enabled(args.progress))
    print(format_report(report))  # the report is the command's output (stdout), not a log message
    if args.json:
        write_json(Path(args.json), report)
    return 1 if report["skipped"] else 0


def _export_parser(sub) -> None:
    export = sub.add_parser("export", help="write the model as ONNX or TorchScript, with a JSON sidecar",
                            description="Writes FILE and FILE.json (classes, image size, mean/std, input layout). "
                                        "The model takes normalised float32 N x 3 x S x S RGB images and returns "
                                        "logits; the export is checked against PyTorch on random images.")
    _checkpoint_flags(export)
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="onnx or torchscript")
    export.add_argument("--out", default=None,
                        help="output file (default: the checkpoint's name with .onnx / .torchscript)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="ONNX: any batch size (default: batch 1); TorchScript always takes any batch size")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")


def _export_run(args: argparse.Namespace) -> int:
    from .export import export_model

    export_model(args.checkpoint, format=args.format, out=args.out, dynamic_batch=args.dynamic_batch,
                 opset=args.opset, **_bare(args))
    return 0


def _serve_parser(sub) -> None:
    from .serve import ServeLimits

    serve = sub.add_parser("serve", help="HTTP prediction service with a web page (FastAPI + uvicorn)",
                           description="Serves GET / (a page: drop an image, see the top-5 and the heat map), "
                                       "GET /health, GET /classes, POST /predict (multipart 'file' or 'files'), "
                                       "POST /explain (Grad-CAM PNG) and the OpenAPI docs at /docs.")
    serve.add_argument("checkpoint", help="best.pt / last.pt of a run, or an exported .onnx file")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every network)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ServeLimits.add_flags(serve)


def _serve_run(args: argparse.Namespace) -> int:
    from .serve import ServeLimits, serve

    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, limits=ServeLimits.from_flags(args))
    return 0


def _summary_parser(sub) -> None:
    summary = sub.add_parser("summary", help="layer table, parameter count, MACs and FLOPs of a model",
                             description="Prints a table of the network's layers (name, output shape, parameters), "
                                         "the total and trainable parameters, and MACs/FLOPs for one image "
                                         "(torch's flop counter; 1 MAC = 2 FLOPs). Give --model with the train "
                                         "options, or a checkpoint (its model and image size are used).")
    summary.add_argument("checkpoint", nargs="?", help="best.pt / last.pt of a run (instead of --model)")
    summary.add_argument("--model", default=None, help="architecture, e.g. resnet18, resnet50")
    summary.add_argument("--img-size", type=int, default=224, help="input image side in pixels (default: 224)")
    summary.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default: 1000)")
    summary.add_argument("--stem", default="auto", choices=("auto", "small", "standard"),
                         help="as for train; auto = small at or below 64 px (default: auto)")
    summary.add_argument("--width", type=float, default=1.0, help="channel multiplier, as for train (default: 1)")
    summary.add_argument("--head", default="linear", choices=("linear", "mlp"), help="as for train (default: linear)")
    summary.add_argument("--hidden", type=int, default=512, help="mlp head hidden units (default: 512)")
    summary.add_argument("--depth", type=int, default=2,
                         help="module nesting shown: 1 = stem, stages, pooling, head; 2 = also each block "
                              "(default: 2)")
    summary.add_argument("--json", default=None, help="also write the summary to this JSON file")


def _summary_run(args: argparse.Namespace) -> int:
    from .fileio import write_json
    from .summary import format_summary, summary_for_checkpoint, summary_for_spec

    if bool(args.checkpoint) == bool(args.model):
        raise ConfigError("summary needs either --model ARCH or a CHECKPOINT (not both)")
    if args.checkpoint:
        result = summary_for_checkpoint(args.checkpoint, depth=args.depth)
    else:
        result = summary_for_spec(args.model, args.num_classes, args.img_size, head=args.head, hidden=args.hidden,
                                  stem=args.stem, width=args.width, depth=args.depth)
    print(format_summary(result))
    if args.json:
        write_json(Path(args.json), result.to_dict())
    return 0


def _report_parser(sub) -> None:
    report = sub.add_parser("report", help="one self-contained report.html for a run folder",
                            description="Builds report.html from what RUN_DIR holds: config, data summary, "
                                        "curves, final and best metrics, per-class table, confusion matrix, "
                                        "galleries, model summary, environment. Images are embedded, nothing is "
                                        "fetched from the network: the file works offline and can be mailed. "
                                        "train and evaluate write it by themselves.")
    report.add_argument("run_dir", help="a run folder (runs/NAME) or an evaluation folder")
    report.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html)")


def _report_run(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    logger.info(f"wrote {path}")
    return 0


# One entry per verb: (add its sub-parser, run it). New verbs add a pair here.
COMMANDS = {
    "train": (_train_parser, _train_run),
    "lr-find": (_lr_find_parser, _lr_find_run),
    "evaluate": (_evaluate_parser, _evaluate_run),
    "predict": (_predict_parser, _predict_run),
    "explain": (_explain_parser, _explain_run),
    "check": (_check_parser, _check_run),
    "export": (_export_parser, _export_run),
    "serve": (_serve_parser, _serve_run),
    "summary": (_summary_parser, _summary_run),
    "report": (_report_parser, _report_run),
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


if __name__ == "__main__":
    sys.exit(main())
