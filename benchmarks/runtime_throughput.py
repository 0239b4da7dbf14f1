"""Inference speed per runtime: PyTorch fp32 (the plain recipe's runtime), PyTorch bf16 (where the CPU has it),
onnxruntime fp32 and int8 (``resnetlab export --format onnx [--quantize int8]``), OpenVINO fp32 and int8
(``--format openvino [--quantize int8]``), for ResNet-18 and ResNet-50 at 224 px: images/s at batch 32 and p50/p99
latency at batch 1, each as a ratio to PyTorch fp32 in the same run. Each exported file runs through the backend
``resnetlab.load`` gives it (resnetlab.runtimes), so the figures are what predict and serve get.

Random weights (speed does not depend on them); int8 is calibrated on 64 Fashion-MNIST images at the model's size.
With ``--checkpoint`` (a Fashion-MNIST run, e.g. ``resnetlab train fashion-mnist --recipe fast``) a second table
gives each runtime's accuracy on the 10,000 test images, so no speed is shown without its cost.

    python benchmarks/runtime_throughput.py
    python benchmarks/runtime_throughput.py --models resnet18 --batches 5 --checkpoint /tmp/fm/run/best.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, print_table  # noqa: E402
from resnetlab.checkpoint import ModelMeta, load_model, save_checkpoint  # noqa: E402
from resnetlab.data.splits import SplitData  # noqa: E402
from resnetlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from resnetlab.device import cpu_has_native_bf16  # noqa: E402
from resnetlab.export import _write, export_model  # noqa: E402
from resnetlab.models import ModelSpec, build_model  # noqa: E402
from resnetlab.openvino_ir import write_ir  # noqa: E402
from resnetlab.quantize import quantize_int8  # noqa: E402
from resnetlab.runtimes import open_exported  # noqa: E402
from resnetlab.sidecar import describe  # noqa: E402

EXPORTS = [("onnxruntime fp32", "onnx", None), ("onnxruntime int8 (QDQ, per-channel)", "onnx", "int8"),
           ("OpenVINO fp32", "openvino", None), ("OpenVINO int8 (NNCF)", "openvino", "int8")]


def timed(run, x_batch: np.ndarray, x_one: np.ndarray, batches: int, singles: int) -> tuple[float, float, float]:
    """(images/s at the batch size, p50 ms, p99 ms at batch 1), after one warm-up call of each."""
    run(x_batch)
    started = time.perf_counter()
    for _ in range(batches):
        run(x_batch)
    rate = batches * len(x_batch) / (time.perf_counter() - started)
    run(x_one)
    latencies = []
    for _ in range(singles):
        started = time.perf_counter()
        run(x_one)
        latencies.append(1000 * (time.perf_counter() - started))
    return rate, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def torch_runner(model: torch.nn.Module, dtype: torch.dtype | None):
    model = model.to(memory_format=torch.channels_last).eval()

    def run(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(tensor).float().numpy()
    return run


def calibration_images(img_size: int, count: int = 64) -> SplitData:
    from resnetlab.data.builtin import load_builtin
    from resnetlab.data.cache import decode_split

    test = load_builtin("fashion-mnist").splits["test"]
    chosen = test.subset(np.arange(count))
    return decode_split(chosen, img_size, progress=False, use_cache=False)


def measure(arch: str, img_size: int, batch: int, batches: int, singles: int, folder: Path) -> list[list]:
    spec = ModelSpec(arch, 10, stem="standard")
    checkpoint = folder / f"{arch}.pt"
    save_checkpoint(checkpoint, {"model": build_model(spec).state_dict(), "model_spec": spec.to_dict(),
                                 "classes": [str(i) for i in range(10)], "img_size": img_size,
                                 "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "config": {}})
    model, meta = load_model(checkpoint)
    meta = ModelMeta(meta.spec, meta.classes, img_size, meta.mean, meta.std, source=str(checkpoint))
    info = describe(meta, "onnx", dynamic_batch=True)
    fp32 = _write(model, meta, info, folder / f"{arch}.onnx", "onnx", True, None)
    calibration = calibration_images(img_size)
    files = {("onnx", None): fp32, ("onnx", "int8"): folder / f"{arch}.int8.onnx",
             ("openvino", None): write_ir(fp32, folder / f"{arch}.xml", info),
             ("openvino", "int8"): write_ir(fp32, folder / f"{arch}.int8.xml", info, calibration=calibration,
                                            mean=meta.mean, std=meta.std)}
    quantize_int8(fp32, files[("onnx", "int8")], calibration, meta.mean, meta.std)
    generator = np.random.default_rng(0)
    x_batch = generator.standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    x_one = x_batch[:1].copy()
    runners = [("PyTorch fp32", torch_runner(model, None))]
    if cpu_has_native_bf16():
        runners.append(("PyTorch bf16 (autocast)", torch_runner(model, torch.bfloat16)))
    runners += [(name, open_exported(files[(fmt, quantize)]).run_normalised) for name, fmt, quantize in EXPORTS]
    rows, base = [], None
    for name, run in runners:
        rate, p50, p99 = timed(run, x_batch, x_one, batches, singles)
        base = base or (rate, p50)
        rows.append([f"{arch} {img_size}px: {name}", rate, rate / base[0], p50, p99, base[1] / p50])
    return rows


def accuracy_rows(checkpoint: Path, calib_images: int, folder: Path) -> list[list]:
    """Each runtime's accuracy on Fashion-MNIST test and its images/s over those 10,000 images (batch 256)."""
    from resnetlab.classifier import load
    from resnetlab.data.builtin import load_builtin
    from resnetlab.data.cache import decode_split

    plain = load(checkpoint, device="cpu")
    test = decode_split(load_builtin("fashion-mnist").splits["test"], plain.meta.img_size, crop=plain.meta.crop,
                        progress=False)
    classifiers = [("PyTorch fp32", plain)]
    for name, fmt, quantize in EXPORTS:
        out = folder / f"trained-{fmt}-{quantize or 'fp32'}{'.onnx' if fmt == 'onnx' else '.xml'}"
        export_model(checkpoint, format=fmt, out=out, dynamic_batch=True, quantize=quantize,
                     calib_images=calib_images, max_drop=100.0, check=bool(quantize))
        classifiers.append((name, load(out)))
    rows, base = [], None
    for name, classifier in classifiers:
        started = time.perf_counter()
        right = sum(int((classifier.logits(test.images[i:i + 256]).argmax(1) == test.labels[i:i + 256]).sum())
                    for i in range(0, len(test), 256))
        rate = len(test) / (time.perf_counter() - started)
        accuracy = 100.0 * right / len(test)
        base = base or (accuracy, rate)
        rows.append([name, accuracy, accuracy - base[0], rate, rate / base[1]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per runtime (default: 4)")
    parser.add_argument("--singles", type=int, default=30, help="timed batch-1 calls per runtime (default: 30)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a Fashion-MNIST run's best.pt: adds each runtime's test accuracy")
    parser.add_argument("--calib-images", type=int, default=256, help="int8 calibration images (default: 256)")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads; CPU bf16: {cpu_has_native_bf16()}; load average before: "
          f"{load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            rows += measure(arch, args.img_size, args.batch, args.batches, args.singles, Path(tmp))
        print_table(["runtime", f"img/s (batch {args.batch})", "ratio", "p50 ms (batch 1)", "p99 ms",
                     "p50 speed-up"], rows)
        if args.checkpoint:
            print_table(["runtime (Fashion-MNIST test, 10,000 images)", "accuracy %", "points vs PyTorch fp32",
                         "img/s (batch 256)", "ratio"], accuracy_rows(args.checkpoint, args.calib_images, Path(tmp)))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
