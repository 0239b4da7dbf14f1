"""The verbs that use a trained model: evaluate, predict, embed, explain, export, serve, summary, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..log import logger
from .flags import RUN_FLAGS, bare, checkpoint_flags, common_model_flags, picked


def evaluate_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="metrics of a checkpoint on a data split",
                              description="Writes metrics.json (with ECE, adaptive ECE, Brier score and NLL), "
                                          "confusion_matrix.csv/.png, reliability.png, misclassified.csv, "
                                          "predictions.png and misclassified.png (Grad-CAM) to --out. Then "
                                          "refreshes the run's report.html when the checkpoint is in a run "
                                          "folder and --out is inside it (the default), else writes "
                                          "report.html into --out.")
    checkpoint_flags(evaluate)
    evaluate.add_argument("data", help="image folder, CSV or built-in name")
    evaluate.add_argument("--split", default="val", choices=("train", "val", "test"), help="default: val")
    evaluate.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/eval-SPLIT)")
    evaluate.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    evaluate.add_argument("--mlflow", nargs="?", const="auto", default=None, metavar="URI",
                          help="also log the metrics (as SPLIT_accuracy, ...) to the MLflow run that trained the "
                               "checkpoint (its URI is saved in the run folder; or give one)")
    common_model_flags(evaluate)


def evaluate_run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    evaluate(args.checkpoint, args.data, **picked(args, *RUN_FLAGS, "split", "out", "data_root", "tta", "mlflow"),
             **bare(args))
    return 0


def predict_parser(sub) -> None:
    predict = sub.add_parser("predict", help="top-k predictions for image files and folders, as CSV",
                             description="Writes a CSV: path,label,confidence,top2_label,top2_prob,...,error; for a "
                                         "multi-label model: path,labels (every label at or above its threshold, "
                                         "joined by '|'),one probability column per label,error.")
    checkpoint_flags(predict)
    predict.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively) or tar shards")
    predict.add_argument("--out", default="predictions.csv", help="CSV path (default: predictions.csv)")
    predict.add_argument("--topk", type=int, default=3, help="labels per image (default: 3)")
    predict.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                         help="label a row 'unsure' when its top probability is under P (best on a calibrated "
                              "checkpoint: resnetlab calibrate; default: 0, never)")
    predict.add_argument("--allow-errors", action="store_true",
                         help="exit 0 when some inputs could not be read (their rows carry the error); default: 1")
    predict.add_argument("--cam", default=None, metavar="DIR",
                         help="also write a Grad-CAM overlay PNG of the predicted class per image into DIR and "
                              "add its path as a 'cam' column (before 'error')")
    common_model_flags(predict)


def predict_run(args: argparse.Namespace) -> int:
    from ..predict import predict_files

    summary = predict_files(args.checkpoint, args.inputs, **picked(args, *RUN_FLAGS, "out", "topk", "tta", "cam",
                                                                   "min_confidence"), **bare(args))
    return 0 if summary["predicted"] and (not summary["failed"] or args.allow_errors) else 1


def embed_parser(sub) -> None:
    embed = sub.add_parser("embed", help="pooled backbone features of image files and folders (.npz, .csv, .parquet)",
                           description="Writes --out with one row per readable image: its path, its label (the "
                                       "class sub-folder of an input folder; '' when unknown) and the global-average-"
                                       "pooled backbone features that the classifier head receives. .npz: arrays "
                                       "paths, labels, features (N x D), model, source, img_size; .csv and .parquet: "
                                       "columns path, label, f0..fD-1. Unreadable files are skipped and named.")
    embed.add_argument("checkpoint", nargs="?", help="best.pt / last.pt of a run (or --model with --pretrained)")
    embed.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively) or tar shards "
                       "(each record labelled by its class)")
    embed.add_argument("--model", default=None, help="instead of CHECKPOINT: a timm architecture, e.g. resnet50")
    embed.add_argument("--pretrained", default=None, metavar="FILE",
                       help="the --model weights: a local .pth or .safetensors file (nothing is downloaded)")
    embed.add_argument("--img-size", type=int, default=None, help="image side in pixels with --model (default: 224)")
    embed.add_argument("--out", default="embeddings.npz",
                       help="output file; its extension picks the format: .npz, .csv or .parquet (needs pyarrow) "
                            "(default: embeddings.npz)")
    embed.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="feature precision (default: fp32)")
    embed.add_argument("--l2-normalize", action="store_true",
                       help="scale each row to L2 norm 1 (then a dot product is the cosine similarity)")
    embed.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    embed.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    embed.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU cores, at most 8)")
    embed.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="progress bar (shown only when the output is a terminal)")


def embed_run(args: argparse.Namespace) -> int:
    from ..embed import embed_files

    positionals = ([args.checkpoint] if args.checkpoint else []) + args.inputs
    if args.model or args.pretrained:
        if not (args.model and args.pretrained):
            raise ConfigError("--model and --pretrained go together: a timm architecture and its local weights file")
        if Path(positionals[0]).suffix.lower() in (".pt", ".pth", ".safetensors", ".onnx", ".xml", ".torchscript"):
            raise ConfigError(f"give either a CHECKPOINT ({positionals[0]}) or --model with --pretrained, not both")
        checkpoint, inputs = None, positionals
    elif len(positionals) < 2:
        raise ConfigError("embed needs a CHECKPOINT and at least one input (or --model NAME --pretrained FILE)")
    else:
        checkpoint, inputs = positionals[0], positionals[1:]
    embed_files(checkpoint, inputs, out=args.out, arch=args.model, pretrained=args.pretrained, img_size=args.img_size,
                dtype=args.dtype, normalize=args.l2_normalize, batch_size=args.batch_size, device=args.device,
                workers=args.workers, progress=args.progress)
    return 0


def explain_parser(sub) -> None:
    explain = sub.add_parser(
        "explain", help="Grad-CAM heat maps for images, folders or a split's most confident mistakes",
        description="Heat maps of where the model looked (pytorch-grad-cam). Writes to --out one overlay PNG per "
                    "image at its original size (NNNN_NAME.png; label, probability, target class and method in "
                    "its PNG text), explain_grid.png ('true / predicted (p)' titles, first 64 images) and "
                    "explain.csv (path,overlay,true,predicted,probability,target,error). Unreadable files are "
                    "skipped and named.")
    checkpoint_flags(explain)
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
                         help="class whose evidence is shown: pred (default; multi-label: one map per predicted "
                              "label), true (needs --misclassified) or a class (label) name")
    explain.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/explain, or "
                                                     "CHECKPOINT_DIR/explain-misclassified-SPLIT)")
    explain.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    # the backward pass keeps activations alive: smaller batches than predict's 256
    common_model_flags(explain, batch_size=32, tta=False)


def explain_run(args: argparse.Namespace) -> int:
    from ..explain import explain

    summary = explain(args.checkpoint, args.inputs, **picked(args, *RUN_FLAGS, "misclassified", "split", "limit",
                                                             "method", "layer", "target", "out", "data_root"),
                      **bare(args))
    return 0 if summary["explained"] or args.misclassified else 1


def export_parser(sub) -> None:
    export = sub.add_parser("export", help="write the model as ONNX, OpenVINO IR or TorchScript (fp32, fp16 or int8), "
                                           "with a JSON sidecar",
                            description="Writes FILE and FILE.json (classes, image size, mean/std, input layout, the "
                                        "preprocessing steps). The model takes normalised float32 N x 3 x S x S RGB "
                                        "images and returns logits; the export is checked against PyTorch on random "
                                        "images and, when the run's data is there, by the accuracy of both on its "
                                        "validation split (refused, nothing written, past --max-drop). Every exported "
                                        "file works in predict, evaluate and serve like a checkpoint.")
    checkpoint_flags(export)
    export.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"),
                        help="onnx (onnxruntime), openvino (FILE.xml + FILE.bin; the 'openvino' extra) or torchscript")
    export.add_argument("--out", default=None,
                        help="output file (default: the checkpoint's name with .onnx / .xml / .torchscript)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="ONNX: any batch size (default: batch 1); TorchScript and OpenVINO always take any")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    export.add_argument("--quantize", choices=("int8",), default=None,
                        help="static int8 for CPUs, calibrated on the run's training images: onnx with onnxruntime's "
                             "QDQ tools (per-channel weights), openvino with NNCF")
    export.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                        help="onnx int8: how activation ranges come from the calibration images (default: minmax)")
    export.add_argument("--half", action="store_true",
                        help="fp16 weights and math behind a float32 input/output, for GPUs (onnx, torchscript); "
                             "openvino: fp16 weights (half the file), computed in fp32 on CPUs")
    export.add_argument("--calib-images", type=int, default=256,
                        help="training images that calibrate --quantize int8, spread over every class (default: 256)")
    export.add_argument("--data", default=None, help="the data set (default: the one the checkpoint was trained on)")
    export.add_argument("--max-drop", type=float, default=1.0,
                        help="refuse the export when it loses more validation accuracy points (default: 1.0)")
    export.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="compare validation accuracy before and after (default: on when the data is there)")
    export.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU cores)")


def export_run(args: argparse.Namespace) -> int:
    from ..export import export_model

    export_model(args.checkpoint, **picked(args, "format", "out", "dynamic_batch", "opset", "quantize", "calib_images",
                                           "calib_method", "data", "max_drop", "check", "workers", "half"),
                 **bare(args))
    return 0


def serve_parser(sub) -> None:
    from ..serve import ServeLimits

    serve = sub.add_parser("serve", help="HTTP prediction service with a web page (FastAPI + uvicorn)",
                           description="Serves GET / (a page: drop an image, see the top-5 and the heat map), "
                                       "GET /health, GET /classes, POST /predict (multipart 'file' or 'files'), "
                                       "POST /explain (Grad-CAM PNG) and the OpenAPI docs at /docs.")
    serve.add_argument("checkpoint", help="best.pt / last.pt of a run, or an exported .onnx, .xml or .torchscript file")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every network)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"),
                       help="auto (default): an exported file in its own runtime; a checkpoint on a GPU in torch, on "
                            "a CPU in the fastest installed runtime (openvino, else onnxruntime, else torch), exported "
                            "to it (fp32) for the server's lifetime. /explain always runs the checkpoint in torch")
    ServeLimits.add_flags(serve)


def serve_run(args: argparse.Namespace) -> int:
    from ..serve import ServeLimits, serve

    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, limits=ServeLimits.from_flags(args),
          runtime=args.runtime)
    return 0


def summary_parser(sub) -> None:
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


def summary_run(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..summary import format_summary, summary_for_checkpoint, summary_for_spec

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


def report_parser(sub) -> None:
    report = sub.add_parser("report", help="one self-contained report.html for a run folder",
                            description="Builds report.html from what RUN_DIR holds: config, data summary, "
                                        "curves, final and best metrics, per-class table, confusion matrix, "
                                        "galleries, model summary, environment. Images are embedded, nothing is "
                                        "fetched from the network: the file works offline and can be mailed. "
                                        "train and evaluate write it by themselves.")
    report.add_argument("run_dir", help="a run folder (runs/NAME) or an evaluation folder")
    report.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html)")


def report_run(args: argparse.Namespace) -> int:
    from ..report import write_report

    path = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    logger.info(f"wrote {path}")
    return 0
