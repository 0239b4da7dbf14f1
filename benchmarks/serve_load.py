"""Load test of `resnetlab serve` on loopback: latency percentiles and requests/s per runtime, batched vs one at
a time.

Starts the real CLI server (a subprocess on 127.0.0.1, a free port), sends a fixed number of POST /predict
requests (one JPEG each) from N client threads, and stops everything by itself. It runs the server once per
runtime (`--runtimes`: the checkpoint in torch, and the files `resnetlab export` writes for onnxruntime and
OpenVINO, fp32 and int8), plus torch with --max-batch 1 (the plain "one forward pass per request" recipe), and
prints every row with its ratio to torch's batched server.

    python benchmarks/serve_load.py                          # 500 requests, 8 at a time, resnet18 at 32 px
    python benchmarks/serve_load.py --img-size 224 --requests 200 --runtimes torch,onnxruntime-int8,openvino-int8
    python benchmarks/serve_load.py --requests 60 --concurrency 4 --checkpoint runs/demo/best.pt
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from resnetlab.checkpoint import load_model, save_checkpoint  # noqa: E402
from resnetlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from resnetlab.export import _write, export_model  # noqa: E402
from resnetlab.models import ModelSpec, build_model, resolve_stem  # noqa: E402
from resnetlab.openvino_ir import write_ir  # noqa: E402
from resnetlab.quantize import quantize_int8  # noqa: E402
from resnetlab.sidecar import describe  # noqa: E402
from runtime_throughput import calibration_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="measured requests per server setting")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--warmup", type=int, default=16, help="requests sent first and not measured")
    parser.add_argument("--checkpoint", default=None, help="a resnetlab checkpoint (default: a random resnet18)")
    parser.add_argument("--model", default="resnet18", help="architecture of the random model")
    parser.add_argument("--img-size", type=int, default=32, help="input size of the random model (small stem <= 64)")
    parser.add_argument("--upload-side", type=int, default=320, help="side of the uploaded JPEGs in pixels")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the server (default: inherited, else all cores)")
    parser.add_argument("--only-batched", action="store_true", help="skip the --max-batch 1 run")
    parser.add_argument("--runtimes", default="torch,onnxruntime,onnxruntime-int8,openvino,openvino-int8",
                        help="servers to run: torch, onnxruntime, openvino, each optionally -int8")
    return parser.parse_args(argv)


def random_checkpoint(path: Path, arch: str, img_size: int) -> None:
    """Untrained weights cost the same per image as trained ones: enough for timing."""
    torch.manual_seed(0)
    classes = [f"class_{i}" for i in range(10)]
    spec = ModelSpec(arch, len(classes), stem=resolve_stem("auto", img_size))
    save_checkpoint(path, {"model_spec": spec.to_dict(), "classes": classes, "img_size": img_size,
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                           "model": build_model(spec).state_dict()})


def jpegs(count: int, side: int) -> list[bytes]:
    """Photo-like uploads: smooth random colour fields, JPEG quality 90."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exported(checkpoint: Path, runtime: str, folder: Path) -> Path:
    """The file a server of ``runtime`` loads: the checkpoint itself for torch, else what `resnetlab export` writes
    (int8 calibrated on the run's images, or for a random model on 64 Fashion-MNIST images)."""
    if runtime == "torch":
        return checkpoint
    fmt, quantize = runtime.removesuffix("-int8").replace("onnxruntime", "onnx"), runtime.endswith("-int8")
    out = folder / f"{runtime}{'.onnx' if fmt == 'onnx' else '.xml'}"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not quantize or (payload.get("config") or {}).get("data"):
        export_model(checkpoint, format=fmt, out=out, dynamic_batch=True, quantize="int8" if quantize else None,
                     max_drop=100.0, check=quantize)
        return out
    model, meta = load_model(checkpoint)
    info = describe(meta, "onnx", dynamic_batch=True)
    fp32 = _write(model, meta, info, folder / "random-fp32.onnx", "onnx", True, None)
    calibration = calibration_images(meta.img_size)
    if fmt == "onnx":
        quantize_int8(fp32, out, calibration, meta.mean, meta.std)
    else:
        write_ir(fp32, out, describe(meta, "openvino", dynamic_batch=True), calibration=calibration,
                 mean=meta.mean, std=meta.std)
    return out


def start_server(checkpoint: Path, port: int, max_batch: int, threads: int | None, log: Path,
                 runtime: str = "torch") -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "resnetlab", "serve", str(checkpoint), "--host", "127.0.0.1", "--port",
               str(port), "--max-batch", str(max_batch), "--runtime", runtime]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # a benchmark may poll; the tests never do
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; log: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server did not answer /health within 180 s; log: {log}")


def load(url: str, uploads: list[bytes], requests: int, concurrency: int) -> dict:
    """Send ``requests`` POST /predict from ``concurrency`` threads; latency per request in ms."""
    with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(i: int) -> tuple[float, int]:
            started = time.perf_counter()
            try:
                status = client.post("/predict", files={"file": (f"{i}.jpg", uploads[i % len(uploads)],
                                                                 "image/jpeg")}).status_code
            except httpx.HTTPError:
                status = -1
            return (time.perf_counter() - started) * 1000, status

        before = client.get("/health").json()["queue"]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
        after = client.get("/health").json()["queue"]
    batches = after["batches"] - before["batches"]
    latencies = np.array([ms for ms, _ in results])
    return {"requests": requests, "errors": sum(status != 200 for _, status in results), "wall_s": wall,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "req_per_s": requests / wall, "mean_batch": (after["images"] - before["images"]) / max(1, batches)}


def run_setting(checkpoint: Path, max_batch: int, uploads: list[bytes], args: argparse.Namespace,
                folder: Path, runtime: str = "torch") -> dict:
    port = free_port()
    served = "torch" if runtime == "torch" else "auto"  # an exported file runs in its own runtime
    process = start_server(checkpoint, port, max_batch, args.server_threads,
                           folder / f"server-{runtime}-{max_batch}.log", served)
    try:
        url = f"http://127.0.0.1:{port}"
        load(url, uploads, args.warmup, args.concurrency)
        result = load(url, uploads, args.requests, args.concurrency)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uploads = jpegs(32, args.upload_side)
    with tempfile.TemporaryDirectory(prefix="resnetlab-serve-load-") as tmp:
        folder = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else folder / "random.pt"
        if not args.checkpoint:
            random_checkpoint(checkpoint, args.model, args.img_size)
        settings = [(runtime, 32) for runtime in args.runtimes.split(",")]
        settings += [] if args.only_batched else [("torch", 1)]
        files = {runtime: exported(checkpoint, runtime, folder) for runtime, _ in settings}
        results = {(runtime, b): run_setting(files[runtime], b, uploads, args, folder, runtime)
                   for runtime, b in settings}
    print(f"load test: {args.requests} POST /predict ({args.upload_side}px JPEG, ~{len(uploads[0]) // 1024} KB) "
          f"after {args.warmup} warm-up, {args.concurrency} in flight, loopback; model "
          f"{args.checkpoint or f'{args.model} (random weights) at {args.img_size}px'}")
    print(f"machine: {os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__}, "
          f"server threads {args.server_threads or os.environ.get('OMP_NUM_THREADS', 'all')}, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = results.get(("torch", 32), next(iter(results.values())))["req_per_s"]
    print("| server | errors | p50 ms | p99 ms | req/s | ratio to torch batched | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for (runtime, max_batch), r in results.items():
        name = f"{runtime}, --max-batch {max_batch}" + (" (batched)" if max_batch == 32 else " (one per pass)")
        print(f"| {name} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['req_per_s']:.1f} "
              f"| {r['req_per_s'] / base:.2f} | {r['mean_batch']:.2f} |")
    print("command: python " + " ".join([sys.argv[0], *sys.argv[1:]]))
    if any(r["errors"] for r in results.values()):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
