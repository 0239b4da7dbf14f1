"""The explain verb: Grad-CAM family heat maps (pytorch-grad-cam) over images, folders or a split's mistakes.

All CAM maths comes from the grad-cam library; this module picks the layer, batches the images, keeps the
model's state as it found it and draws the overlays at each image's original size.

    cams = compute_cams(model, x, targets=None, method="gradcam")   # N x S x S in [0, 1]
    explain("runs/x/best.pt", ["photos/"], method="gradcam++")       # overlays, explain_grid.png, explain.csv
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import tqdm
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .checkpoint import unwrap
from .config import ConfigError
from .data.images import ImageReadError, decode_image, open_rgb
from .data.transforms import preprocess_batch, stats_tensor, to_rgb_array
from .metrics import rank_mistakes
from .plots import image_grid

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
TARGET_CHOICES = "pred, true or a class name"
GRID_MAX = 64  # images in explain_grid.png; every image still gets its own overlay file
FILE_CHUNK = 1024  # input files decoded per round (as predict): bounds memory on huge folders


class ExplainError(ConfigError):
    """A --method, --layer or --target value that does not fit the model; the message names it.

    A ConfigError (so a ValueError): the CLI prints it as ``resnetlab explain: error: ...`` and serve answers 422.
    """


# ---------------------------------------------------------------------- layers
def default_target_layer(model: nn.Module) -> nn.Module:
    """The last block of the last stage (``layer4[-1]``): the finest map that still sees whole objects."""
    network = unwrap(model)
    stage = getattr(network, "layer4", None)
    if isinstance(stage, nn.Sequential) and len(stage):
        return stage[-1]
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(network).__name__} has no layer4 and no Conv2d layer; pass --layer NAME")
    return convs[-1]


def _default_layer_name(network: nn.Module) -> str:
    layer = default_target_layer(network)
    return next(name for name, module in network.named_modules() if module is layer)


def resolve_layer(model: nn.Module, name: str | None) -> nn.Module:
    """A dotted module name ("layer3.1", "layer4.-1") of the unwrapped network, or the default layer for None."""
    network = unwrap(model)
    if not name:
        return default_target_layer(network)
    module = network
    for atom in name.split("."):
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and re.fullmatch(r"-?\d+", atom):
            index = int(atom)
            module = module[index] if -len(module) <= index < len(module) else None
        else:
            module = module._modules.get(atom) if atom else None
        if module is None:
            names = [n for n, _ in network.named_modules() if n]
            close = difflib.get_close_matches(name, names, n=3)
            examples = [n for n in names if n.count(".") == 0] + [n for n in names if re.fullmatch(r"layer\d\.\d+", n)]
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ExplainError(f"unknown --layer '{name}' in {type(network).__name__}; {hint}valid names include "
                               f"{', '.join(examples[:24])} (default: {_default_layer_name(network)})")
    return module


def cam_class(method: str) -> type:
    """The grad-cam class for a method name; an unknown name is an ExplainError listing the valid ones."""
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown CAM method '{method}'; choose one of {', '.join(CAM_METHODS)}")
    return CAM_METHODS[method]


# ---------------------------------------------------------------------- heat maps
def compute_cams(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, *,
                 method: str = "gradcam", layer: str | None = None, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """x: normalised float N x 3 x S x S on the model's device; targets: class index per image (None = predicted).

    Returns N x S x S float32 in [0, 1]. Batched: one CAM object, forward passes of ``batch_size`` images.
    The model's train/eval mode, ``requires_grad`` flags and ``.grad`` tensors are as before afterwards.
    ``progress=False`` silences the per-channel progress bars scorecam and ablationcam draw on stderr.
    """
    factory = cam_class(method)
    network = unwrap(model)
    target_layer = resolve_layer(network, layer)
    if targets is not None and len(targets) != len(x):
        raise ValueError(f"{len(targets)} targets for {len(x)} images")
    classes = _num_classes(network)
    if targets is not None and classes and any(not 0 <= int(t) < classes for t in targets):
        raise ExplainError(f"target class indices must be in 0..{classes - 1}, got {sorted(set(map(int, targets)))}")
    batch_size = max(1, int(batch_size))
    result = np.zeros((len(x), *x.shape[-2:]), dtype=np.float32)  # N x S x S
    if len(x) == 0:
        return result
    saved = _ModelState(network, target_layer)
    done = 0
    try:
        network.eval()
        # The gradient reaches the layer through the input, so parameters need none: no weight gradients are
        # computed, and a frozen backbone (requires_grad False) still gets its CAM.
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            # leaving the `with` releases the CAM's hooks (and puts grad-cam's progress bars back)
            with _library_bars(progress), _make_cam(factory, network, target_layer, batch_size) as cam:
                for start in range(0, len(x), batch_size):
                    # a plain fp32 leaf even when x was made under inference_mode or autocast
                    batch = x[start:start + batch_size].detach().clone().float().requires_grad_(True)
                    chosen = None if targets is None else [ClassifierOutputTarget(int(t))
                                                            for t in targets[start:start + batch_size]]
                    try:
                        result[start:start + len(batch)] = cam(input_tensor=batch, targets=chosen)
                    except ValueError as err:
                        if "shape" in str(err):  # the library's words for a layer without an N x C x H x W output
                            raise ExplainError(f"--layer '{layer}' gives no 2-D feature map (it is not a "
                                               f"convolutional block); try {_default_layer_name(network)}") from None
                        raise
                    done += len(batch)
    finally:
        saved.restore(network)
    if done != len(x):  # the library's __exit__ swallows IndexError; never return half-filled maps silently
        raise RuntimeError(f"{method} stopped after {done} of {len(x)} images")
    return np.clip(result, 0.0, 1.0)


@contextmanager
def _library_bars(shown: bool) -> Iterator[None]:
    """grad-cam's ScoreCAM and AblationCAM wrap their per-channel loops in ``tqdm.tqdm(...)`` with no switch:
    with ``shown`` False their modules see a tqdm that is disabled, for the duration of the block only."""
    if shown:
        yield
        return
    from pytorch_grad_cam import ablation_cam, score_cam

    quiet = SimpleNamespace(tqdm=partial(tqdm.tqdm, disable=True))
    saved = [(module, module.tqdm) for module in (score_cam, ablation_cam)]
    for module, _ in saved:
        module.tqdm = quiet
    try:
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


def _make_cam(factory: type, network: nn.Module, target_layer: nn.Module, batch_size: int):
    if factory is AblationCAM:  # a fresh ablation layer: the library's default one is shared between instances
        return AblationCAM(network, [target_layer], ablation_layer=AblationLayer(), batch_size=batch_size)
    cam = factory(network, [target_layer])
    cam.batch_size = batch_size  # ScoreCAM: masked copies scored per forward pass
    return cam


def _num_classes(network: nn.Module) -> int | None:
    return getattr(network, "num_classes", None)


class _ModelState:
    """What CAM computation changes on a model, put back afterwards: its mode, requires_grad flags and .grad
    tensors, and the target layer (AblationCAM swaps it out for a while; an error could leave it swapped)."""

    def __init__(self, network: nn.Module, target_layer: nn.Module):
        self.training = network.training
        self.parameters = [(p, p.requires_grad, p.grad) for p in network.parameters()]
        self.layer = target_layer
        self.layer_name = next(n for n, m in network.named_modules() if m is target_layer)

    def restore(self, network: nn.Module) -> None:
        for parameter, requires_grad, grad in self.parameters:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        network.train(self.training)
        parent_name, _, last = self.layer_name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        if self.layer_name and parent._modules.get(last) is not self.layer:
            parent._modules[last] = self.layer


# ---------------------------------------------------------------------- overlays
def model_view_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square of a width x height image that decode_image (ImageOps.fit) shows the model."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heat map (H x W in [0, 1], the model's square view) blended on ``image`` at its original size; RGB.

    The model sees the centred square of a non-square image, so the map covers that square; the strips it
    never saw are kept but dimmed.
    """
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D map (H x W), got shape {tuple(cam.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    box = model_view_box(*image.size)
    seen = image.crop(box)
    heat = cv2.resize(np.clip(cam, 0.0, 1.0).astype(np.float32), seen.size, interpolation=cv2.INTER_LINEAR)
    blended = show_cam_on_image(np.asarray(seen, dtype=np.float32) / 255.0, heat, use_rgb=True,
                                image_weight=1.0 - alpha)
    result = image.copy() if seen.size == image.size else image.point(lambda v: v // 2)
    result.paste(Image.fromarray(blended), box[:2])
    return result


def overlay_for_image(classifier, image: Image.Image, method: str = "gradcam") -> Image.Image:
    """The predicted class's heat map on ``image`` at its original size (what ``serve``'s /explain returns)."""
    cam_class(method)  # an unknown method fails before any work
    rgb = open_rgb(image)
    batch = decode_image(rgb, classifier.meta.img_size)[None]  # 1 x 3 x S x S uint8
    probabilities = classifier.logits(batch).softmax(dim=1)[0]  # K, the same prediction as /predict
    predicted = int(probabilities.argmax())
    cams = cams_for_batch(classifier, batch, [predicted], method=method, progress=False)  # a server: no bars
    result = overlay(rgb, cams[0])
    probability = float(probabilities[predicted])
    result.info.update({"predicted": classifier.classes[predicted], "probability": f"{probability:.6f}",
                        "method": method})
    return result


def cams_for_batch(classifier, batch_uint8: torch.Tensor, targets: Sequence[int] | None, *, method: str = "gradcam",
                   layer: str | None = None, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """uint8 N x C x S x S decoded images -> N x S x S heat maps, with the classifier's own normalisation."""
    return compute_cams(classifier.model, classifier.preprocess(batch_uint8), targets, method=method, layer=layer,
                        batch_size=batch_size, progress=progress)


def save_png(image: Image.Image, path: str | Path, text: dict[str, str]) -> None:
    """PNG with ``text`` as tEXt/iTXt chunks (label, probability, method...), readable with PIL's ``.text``."""
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, str(value))  # iTXt: UTF-8, so accented class names and paths survive
    image.save(path, format="PNG", pnginfo=info)


OVERLAY_STEM_BYTES = 120  # file names are limited to 255 bytes: 120 leave room for the number in any script


def overlay_name(index: int, source: str, total: int) -> str:
    """'0003_cat photo.png': a running number (unique even for equal base names) and the readable stem,
    cut to OVERLAY_STEM_BYTES of UTF-8 (4 bytes a character in some scripts) at a character boundary."""
    stem = Path(source).stem if source else "image"
    stem = re.sub(r"[^\w\- .()+]+", "_", stem)
    stem = stem.encode("utf-8")[:OVERLAY_STEM_BYTES].decode("utf-8", errors="ignore").strip(" .") or "image"
    return f"{index:0{max(4, len(str(max(total - 1, 0))))}d}_{stem}.png"


def _title(true: str | None, predicted: str, probability: float) -> str:
    return f"{true} / {predicted} ({probability:.2f})" if true is not None else f"{predicted} ({probability:.2f})"


def plot_misclassified(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                       classes: list[str], mean: list[float], std: list[float], path: str | Path, *,
                       limit: int = 16, method: str = "gradcam", device: torch.device | None = None) -> int:
    """misclassified.png: the most confident mistakes (highest predicted probability, the order of
    misclassified.csv), each as image + heat map of the predicted class, titled 'true / predicted (p)'.

    images: uint8 N x C x S x S (the decoded split), targets N, logits N x K on CPU; the title states how many
    of the split's mistakes are shown. Returns how many are shown (0 -> no file written).
    """
    cam_class(method)
    targets = targets.cpu()
    confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
    wrong = rank_mistakes(logits, targets)
    chosen = wrong[:max(0, limit)]
    if len(chosen) == 0:
        return 0
    device = device or next(model.parameters()).device
    x = preprocess_batch(images[chosen].to(device), stats_tensor(mean, device), stats_tensor(std, device))
    cams = compute_cams(model, x, predicted[chosen].tolist(), method=method)
    panels, titles, colours = [], [], []
    for cam, i in zip(cams, chosen.tolist()):
        picture = to_rgb_array(images[i:i + 1])[0]  # S x S x 3, grey built-ins repeated to RGB
        panels += [picture, overlay(Image.fromarray(picture), cam)]
        titles += [_title(classes[int(targets[i])], classes[int(predicted[i])], float(confidence[i])), method]
        colours += ["red", "black"]
    image_grid(panels, titles, path, columns=8, title_colors=colours,
               suptitle=f"Most confident mistakes: {len(chosen)} of {len(wrong)} in the split "
                        "(heat map: predicted class)")
    return len(chosen)


# ---------------------------------------------------------------------- the explain verb
@dataclass
class _Item:
    """One image to explain: where it came from, how to get it at full size, its decoded view, its label."""

    source: str
    original: object  # a path for open_rgb, or an H x W x C uint8 array (built-in data sets)
    image: torch.Tensor  # uint8 C x S x S, the model's view
    number: int  # position among the inputs (or rank among the mistakes): the overlay file's prefix
    true: int | None = None


def _parse_target(target: str, classes: list[str], labelled: bool) -> str | int:
    """'pred', 'true' or the index of a class name."""
    if target in ("pred", "true"):
        if target == "true" and not labelled:
            raise ExplainError("--target true needs known labels: use --misclassified DATA (plain image files and "
                               "folders have no true class); use --target pred or a class name here")
        return target
    if target in classes:
        return classes.index(target)
    raise ExplainError(f"--target '{target}' is not pred, true or one of the model's classes: "
                       f"{', '.join(classes[:30])}{' ...' if len(classes) > 30 else ''}")


def _original(item: _Item) -> Image.Image:
    if isinstance(item.original, np.ndarray):  # a built-in data set's H x W (x C) uint8 image
        array = torch.from_numpy(item.original.reshape(*item.original.shape[:2], -1)).permute(2, 0, 1)
        return Image.fromarray(to_rgb_array(array[None])[0])
    return open_rgb(item.original)


def explain(checkpoint: str | Path, inputs: Sequence[str] = (), *, misclassified: str | None = None,
            split: str = "val", limit: int = 16, method: str = "gradcam", layer: str | None = None,
            target: str = "pred", out: str | Path | None = None, batch_size: int = 32, device: str = "auto",
            workers: int | None = None, data_root: str | None = None, arch: str | None = None,
            classes: list[str] | None = None, img_size: int | None = None, progress: bool = True) -> dict:
    """Heat maps for image files/folders, or for the ``limit`` most confident mistakes of ``split`` of
    ``misclassified`` (a data set). Writes one overlay PNG per image, explain_grid.png and explain.csv to ``out``
    (default: CHECKPOINT_DIR/explain, or CHECKPOINT_DIR/explain-misclassified-SPLIT)."""
    from .checkpoint import load_model, read_checkpoint
    from .data.sources import DataError
    from .engine import resolve_device
    from .predict import Classifier

    cam_class(method)
    if bool(inputs) == bool(misclassified):
        raise ExplainError("give image files/folders or --misclassified DATA (one of the two)")
    if limit < 1:
        raise ExplainError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ExplainError(f"--batch-size must be at least 1, got {batch_size}")
    if Path(checkpoint).suffix.lower() == ".onnx":  # as predict --cam says it
        raise ExplainError(f"explain needs a PyTorch checkpoint (heat maps need gradients); {checkpoint} is an "
                           "exported ONNX model that runs in onnxruntime: use the .pt file it was exported from")
    torch_device = resolve_device(device)
    payload = read_checkpoint(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
    model, meta = load_model(checkpoint, device=torch_device, arch=arch, classes=classes, img_size=img_size,
                             checkpoint=payload)
    classifier = Classifier(model.to(memory_format=torch.channels_last), meta, torch_device)
    chosen_target = _parse_target(target, meta.classes, labelled=bool(misclassified))
    layer_module = resolve_layer(model, layer)  # a wrong --layer fails before any decoding
    layer_name = layer or next(n for n, m in model.named_modules() if m is layer_module)

    if misclassified:
        saved = (payload or {}).get("config") or {}  # the run's settings: its split fraction, seed, data root
        items, skipped, split_name = _misclassified_items(classifier, misclassified, split, limit, batch_size,
                                                          workers, data_root or saved.get("data_root"), saved,
                                                          progress)
        default_out = Path(checkpoint).parent / f"explain-misclassified-{split_name}"
        total = len(items) + len(skipped)
        chunks: Iterator[tuple[list[_Item], list[dict]]] = iter([(items, skipped)])
    else:
        from .predict import expand_inputs

        files = expand_inputs(inputs)
        if not files:
            raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
        default_out = Path(checkpoint).parent / "explain"
        total = len(files)
        chunks = _file_chunks(classifier, files, workers)  # decoded lazily, FILE_CHUNK files at a time
    out_dir = Path(out) if out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)

    rows, grid, grid_titles, grid_colours, all_skipped = [], [], [], [], []
    for items, skipped in chunks:
        for entry in skipped:
            print(f"skipped {entry['path']}: {entry['reason']}", flush=True)
        all_skipped += skipped
        _explain_chunk(classifier, items, total, out_dir, rows, (grid, grid_titles, grid_colours),
                       chosen_target=chosen_target, method=method, layer=layer, layer_name=layer_name,
                       batch_size=batch_size, checkpoint=str(checkpoint), progress=progress)
    skipped = all_skipped
    # input order, as predict's CSV; a data set's unreadable files (no input position) come last
    rows += [(entry.get("number", total), [entry["path"], "", "", "", "", "", entry["reason"]]) for entry in skipped]
    rows = [row for _, row in sorted(rows, key=lambda pair: pair[0])]

    with open(out_dir / "explain.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "overlay", "true", "predicted", "probability", "target", "error"])
        writer.writerows(rows)
    explained = sum(1 for row in rows if row[1])
    if grid:
        image_grid(grid, grid_titles, out_dir / "explain_grid.png", columns=8, title_colors=grid_colours,
                   suptitle=f"{method} on {layer_name}, target: {target}"
                            + (f" (first {GRID_MAX} of {explained})" if explained > GRID_MAX else ""))
    summary = {"images": total, "explained": explained, "skipped": skipped,
               "out": str(out_dir), "method": method, "layer": layer_name}
    written = "explain_grid.png, explain.csv" if grid else "explain.csv"
    print(f"explained {explained} image(s) with {method} on {layer_name}, {len(skipped)} skipped; "
          f"wrote {out_dir}/ ({written} and {explained} overlay PNG(s))", flush=True)
    return summary


def _explain_chunk(classifier, items: list[_Item], total: int, out_dir: Path, rows: list, grid: tuple[list, list, list],
                   *, chosen_target: str | int, method: str, layer: str | None, layer_name: str, batch_size: int,
                   checkpoint: str, progress: bool) -> None:
    """Overlays of ``items`` (batched CAM passes) written to ``out_dir``; their CSV rows (keyed by input
    position) go to ``rows`` and the first GRID_MAX thumbnails, titles and colours to ``grid``."""
    meta = classifier.meta
    grid_images, grid_titles, grid_colours = grid
    for start in range(0, len(items), batch_size):
        batch_items = items[start:start + batch_size]
        batch = torch.stack([item.image for item in batch_items])
        probabilities = classifier.logits(batch).softmax(dim=1)  # N x K
        confidence, predicted = probabilities.max(dim=1)
        if chosen_target == "pred":
            targets = predicted.tolist()
        elif chosen_target == "true":
            targets = [int(item.true) for item in batch_items]
        else:
            targets = [int(chosen_target)] * len(batch_items)
        cams = cams_for_batch(classifier, batch, targets, method=method, layer=layer, batch_size=batch_size,
                              progress=progress)
        for j, (item, cam) in enumerate(zip(batch_items, cams)):
            true = meta.classes[item.true] if item.true is not None else None
            label = meta.classes[int(predicted[j])]
            try:
                picture = overlay(_original(item), cam)
            except ImageReadError as err:  # changed or removed since it was decoded
                print(f"skipped {item.source}: {err.reason}", flush=True)
                rows.append((item.number, [item.source, "", true or "", "", "", "", err.reason]))
                continue
            name = overlay_name(item.number, item.source, total)
            save_png(picture, out_dir / name, {
                "source": item.source, "true": true or "", "predicted": label,
                "probability": f"{float(confidence[j]):.6f}", "target": meta.classes[targets[j]],
                "target_probability": f"{float(probabilities[j, targets[j]]):.6f}", "method": method,
                "layer": layer_name, "checkpoint": str(checkpoint)})
            rows.append((item.number, [item.source, name, true or "", label, f"{float(confidence[j]):.6f}",
                                       meta.classes[targets[j]], ""]))
            if len(grid_images) < GRID_MAX:
                picture.thumbnail((160, 160))
                grid_images.append(picture)
                grid_titles.append(_title(true, label, float(confidence[j])))
                grid_colours.append("black" if true is None else ("green" if true == label else "red"))


def _file_chunks(classifier, files: list[str], workers: int | None) -> Iterator[tuple[list[_Item], list[dict]]]:
    """(items, unreadable) per FILE_CHUNK files, decoded as predict does (same parallel decode, no disk cache);
    numbers are positions among all the inputs, so names and CSV order do not depend on the chunking."""
    from .data.cache import decode_split
    from .data.sources import SplitData

    for start in range(0, len(files), FILE_CHUNK):
        chunk = files[start:start + FILE_CHUNK]
        decoded = decode_split(SplitData("explain", np.zeros(len(chunk), dtype=np.int64), chunk),
                               classifier.meta.img_size, workers=workers, progress=False, use_cache=False)
        items = [_Item(chunk[int(p)], chunk[int(p)], image, start + int(p))
                 for p, image in zip(decoded.kept, decoded.images)]
        position = {path: start + i for i, path in enumerate(chunk)}
        yield items, [{**entry, "number": position.get(entry["path"], len(files))} for entry in decoded.skipped]


def _misclassified_items(classifier, data: str, split: str, limit: int, batch_size: int, workers: int | None,
                         data_root: str | None, saved: dict, progress: bool) -> tuple[list[_Item], list[dict], str]:
    """The ``limit`` most confident mistakes of the split, in that order (as evaluate's misclassified.csv)."""
    from .data.cache import decode_split
    from .data.sources import open_data
    from .evaluation import relabel, select_split

    # the same split as training saw: its val fraction and seed come from the checkpoint
    source = open_data(data, val_split=saved.get("val_split", 0.1), seed=saved.get("seed", 0), data_root=data_root)
    split_name, notes = select_split(source, split)
    for note in notes:
        print(note, flush=True)
    chosen = relabel(source.splits[split_name], source.classes, classifier.classes, f"{data} ({split_name})")
    decoded = decode_split(chosen, classifier.meta.img_size, workers=workers, progress=progress)
    logits = torch.cat([classifier.logits(decoded.images[b:b + batch_size])
                        for b in range(0, len(decoded), batch_size)]) if len(decoded) else torch.zeros(0, 1)
    mistakes = rank_mistakes(logits, decoded.labels) if len(decoded) else torch.zeros(0, dtype=torch.int64)
    wrong = mistakes[:limit]
    print(f"{split_name}: {len(decoded)} images, {len(mistakes)} misclassified; "
          f"explaining the {len(wrong)} most confident mistake(s)", flush=True)
    items = []
    for rank, i in enumerate(wrong.tolist()):
        position = int(decoded.kept[i])
        original = chosen.paths[position] if chosen.paths is not None else chosen.images[position]
        name = chosen.paths[position] if chosen.paths is not None else f"{split_name}_{position}"
        items.append(_Item(name, original, decoded.images[i], rank, int(decoded.labels[i])))
    return items, decoded.skipped, split_name
