"""ResNet models by name (timm), with our head, stem and freezing options, and pretrained loading.

    spec = ModelSpec("resnet18", num_classes=10, stem="small")
    model = build_model(spec)
    notes = load_pretrained(model, "resnet18.safetensors", spec)
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .data.crop import CROP_MODES
from .data.images import SMALL_SIZE, Crop, default_layout_and_crop
from .errors import ConfigError, ModelError, one_line
from .hub import available_weights, hub_state_dict  # noqa: F401 - available_weights: public here too

SMALL_STEM_MAX_SIZE = 64  # the auto stem is the small one at or below this image size
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint as plain values."""

    arch: str
    num_classes: int
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.5
    stem: str = "standard"  # resolved: "small" or "standard"
    width: float = 1.0  # channel multiplier of the stages (64-128-256-512 at 1.0)
    pool: str = "avg"  # timm's global_pool: avg, max, or avgmax (their mean: a small mark is not averaged away)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelSpec:
        return cls(**{k: values[k] for k in ("arch", "num_classes", "head", "hidden", "dropout", "stem", "width",
                                                    "pool")
                      if k in values})


def resolve_stem(stem: str, img_size: int) -> str:
    if stem == "auto":
        return "small" if img_size <= SMALL_STEM_MAX_SIZE else "standard"
    return stem


def first_stage_side(spec: ModelSpec, img_size: int) -> int:
    """Side of the feature maps entering layer1: the small stem keeps the image size, the standard one /4."""
    return img_size if spec.stem == "small" else max(1, img_size // 4)


# The ResNet family resnetlab builds, trains, fine-tunes, explains and exports: tests/test_family.py runs each one.
# A timm weights tag may follow a name (resnet50.tv_in1k). Every one is timm's ResNet class, so the head, the stem
# and the stages are found through timm's own metadata (get_classifier, pretrained_cfg, feature_info).
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                 "resnet18d", "resnet34d", "resnet50d", "resnet101d", "resnet152d",
                 "resnext50_32x4d", "wide_resnet50_2", "seresnet50", "resnetrs50")
_WIDTHS = (0.125, 0.25, 0.5, 0.75, 1.0)  # tried, on a refusal, for the narrowest --width an architecture takes


def check_arch(arch: str, width: float | None = None) -> None:
    """Refuse, before any work, a name outside ARCHITECTURES (a ConfigError with the list and a near name), and a
    ``width`` the architecture cannot be built at (naming the narrowest it takes; None: not chosen yet)."""
    if arch.partition(".")[0] in ARCHITECTURES and timm.is_model(arch):
        if width not in (None, 1.0) and _has_empty_layers(arch, width):
            raise ConfigError(str(_width_refusal(arch, width)))
        return
    close = difflib.get_close_matches(arch.partition(".")[0], ARCHITECTURES, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    kind = "unsupported" if timm.is_model(arch) else "unknown"
    raise ConfigError(f"{kind} model '{arch}'{hint}; resnetlab supports the ResNet family: {', '.join(ARCHITECTURES)} "
                      "(a timm weights tag may follow, e.g. resnet50.tv_in1k)")


def _check_buildable(arch: str) -> None:
    """New training is held to ARCHITECTURES (training/setup.py); a checkpoint from a release that took any timm
    ResNet name (resnet26d, resnet10t) still loads, with a warning."""
    if arch.partition(".")[0] in ARCHITECTURES or not timm.is_model(arch):
        check_arch(arch)
    else:  # shown once (Python's default warning filter)
        warnings.warn(f"model '{arch}' is outside the tested ResNet family; built as timm builds it", stacklevel=3)


def build_model(spec: ModelSpec) -> nn.Module:
    """A randomly initialised network for ``spec``."""
    _check_buildable(spec.arch)
    options = {} if spec.pool == "avg" else {"global_pool": spec.pool}
    if spec.width != 1.0:  # timm's ResNet takes the stage widths; narrower nets are what 2-core CPUs afford
        options.update(_stage_widths(spec.width))
    # timm zero-initialises the last BatchNorm of every residual block (zero_init_last); trained from scratch on
    # photo-sized images in a short CPU budget, that kept a full ResNet-18 at the majority class for 4 epochs where
    # torchvision's init (the blocks live from the start, what a plain PyTorch script gets) reached 86 %
    # (benchmarks/README.md, "Defaults", session 16). Where measured: the full-width standard-stem network; the
    # narrow and small-stem presets were measured with timm's init and keep it.
    if spec.stem != "small" and spec.width == 1.0:
        options["zero_init_last"] = False
    model = _create(spec, options)
    if spec.stem == "small":
        _use_small_stem(model)
    if spec.head == "mlp":
        in_features = head_module(model).in_features
        model.set_submodule(head_name(model), nn.Sequential(
            nn.Linear(in_features, spec.hidden), nn.ReLU(inplace=True), nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.num_classes)))
    return model


def _stage_widths(width: float) -> dict:
    channels = tuple(max(8, int(round(c * width))) for c in (64, 128, 256, 512))
    return {"channels": channels, "stem_width": channels[0]}


def _create(spec: ModelSpec, options: dict) -> nn.Module:
    """timm's network (every ARCHITECTURES member is timm's ResNet: it takes the stage widths and zero_init_last);
    a --width that leaves a layer without channels (ResNeXt's 32 groups of 4 below --width 0.25) is refused."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # refused just below
        model = timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes, **options)
    if spec.width != 1.0 and any(p.numel() == 0 for p in model.parameters()):
        raise _width_refusal(spec.arch, spec.width)
    return model


def _has_empty_layers(arch: str, width: float) -> bool:
    """True when ``arch`` at ``width`` has a layer without channels; built on the meta device (no memory, ~0.2 s)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # timm's and torch's init of zero-element tensors
        model = timm.create_model(arch, num_classes=1, **_stage_widths(width))
    return any(p.numel() == 0 for p in model.parameters())


def _width_refusal(arch: str, width: float) -> ModelError:
    fits = next((w for w in _WIDTHS if w > width and not _has_empty_layers(arch, w)), 1.0)
    return ModelError(f"{arch} cannot be made as narrow as --width {width:g}: a layer would have no channels "
                      f"(grouped convolutions need a whole channel per group); use --width {fits:g} or more, or "
                      "resnet50 for narrower networks")


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head (timm's ``get_classifier``): a Linear, or the mlp head's Sequential."""
    network = unwrap(model)
    head = network.get_classifier() if hasattr(network, "get_classifier") else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        raise ModelError(f"{type(network).__name__} has no classifier head; resnetlab supports the ResNet family")
    return head


def head_name(model: nn.Module) -> str:
    """The head's module name ("fc" for timm's ResNets): state-dict keys start with it."""
    head = head_module(model)
    return next(name for name, module in unwrap(model).named_modules() if module is head)


def head_weight_key(arch: str) -> str:
    """The state-dict key of ``arch``'s classifier weight in a weights file ("fc.weight"), from timm's config; an
    architecture outside ARCHITECTURES is refused here."""
    check_arch(arch)
    config = timm.models.get_pretrained_cfg(arch)
    return f"{getattr(config, 'classifier', None) or 'fc'}.weight"


def first_conv_name(model: nn.Module) -> str:
    """The stem's first convolution ("conv1"; "conv1.0" in the deep stems of the d and rs variants), as timm's
    pretrained config names it; else the network's first Conv2d."""
    network = unwrap(model)
    name = (getattr(network, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, str) and isinstance(network.get_submodule(name), nn.Conv2d):
        return name
    found = next((n for n, m in network.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ModelError(f"{type(network).__name__} has no convolution; resnetlab supports the ResNet family")
    return found


def _stem(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) children before the first stage: timm's feature_info lists the stem's output, then the
    stages."""
    first_stage = model.feature_info[1]["module"]  # ResNets: [act1 (stem), layer1, layer2, layer3, layer4]
    stem = []
    for name, child in model.named_children():
        if name == first_stage:
            return stem
        stem.append((name, child))
    raise ModelError(f"{type(model).__name__} has no stage '{first_stage}'; use --stem standard")


def _use_small_stem(model: nn.Module) -> None:
    """CIFAR-style stem: 3x3 stride-1 first conv and no max-pool, so 28-64 px inputs keep their detail. A single
    7x7 conv becomes a 3x3; deep stems (d, rs variants) keep their convs with the strides removed (the rs variants'
    strided conv in place of the max-pool included)."""
    name = first_conv_name(model)
    first = model.get_submodule(name)
    if first.kernel_size[0] > 3:
        model.set_submodule(name, nn.Conv2d(first.in_channels, first.out_channels, 3, stride=1, padding=1, bias=False))
    for child_name, child in _stem(model):
        if isinstance(child, nn.MaxPool2d):
            model.set_submodule(child_name, nn.Identity())
        for module in child.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)


def default_crop(arch: str, img_size: int, pretrained: bool) -> tuple[Crop, str]:
    """The evaluation crop when none is given, and why: with pretrained weights the timm config of ``arch``'s
    weights (resnet50 -> resnet50.a1_in1k: 0.95, bicubic; a tag such as resnet50.tv_in1k gives torchvision's 0.875,
    bilinear); else 0.875 above 64 px (photo-sized inputs) and 1.0 at 64 px and below, where a crop would cut
    what little there is; bilinear."""
    if pretrained:
        config = timm.models.get_pretrained_cfg(arch)
        if config is not None:
            interpolation = config.interpolation if config.interpolation in ("bilinear", "bicubic") else "bilinear"
            mode = config.crop_mode if getattr(config, "crop_mode", None) in CROP_MODES else "center"
            return Crop(float(config.crop_pct), interpolation, mode), f"timm's pretrained config of {arch}"
    _, crop = default_layout_and_crop(img_size)
    return crop, "photo-sized input" if img_size > SMALL_SIZE else f"small input (<= {SMALL_SIZE} px)"


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classifier head."""
    head_params = {id(p) for p in head_module(model).parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = trainable or id(parameter) in head_params


def backbone_frozen(model: nn.Module) -> bool:
    """True when the stem's first conv does not train (--freeze-backbone); False for networks without one."""
    network = unwrap(model)
    try:
        stem = network.get_submodule(first_conv_name(network))
    except ModelError:
        return False
    return not any(p.requires_grad for p in stem.parameters())


def train_mode(model: nn.Module) -> None:
    """model.train(), but a frozen backbone keeps its BatchNorm statistics fixed (eval mode)."""
    model.train()
    if backbone_frozen(model):
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ---------------------------------------------------------------------- pretrained weights
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file (.safetensors, or a torch file read with weights_only=True) -> flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refusals and truncated files both land here
        reason = one_line(err) if path.suffix == ".safetensors" else torch_load_failure(path, err)
        raise ModelError(f"cannot read weights from {path}: {reason}") from None
    for key in ("model", "state_dict", "model_state_dict", "ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return {_strip_prefix(k): v for k, v in state.items()}


def torch_load_failure(path: Path, err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, from what the file is; never torch's advice to retry
    with weights_only=False, which would run whatever code the file carries."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as read_error:
        return f"cannot read it ({read_error.strerror or read_error})"
    text = str(err)
    refused = "Weights only load failed" in text or "Unsupported global" in text
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
        return (f"not a torch checkpoint: neither torch.save's zip format nor a pickle (it starts with bytes "
                f"{head.hex(' ')})")
    if refused:
        return ("it holds pickled Python objects beyond tensors and plain values, which resnetlab refuses to load "
                "(unpickling them can run code): save a state_dict of tensors, or use .safetensors")
    first = next((line for line in text.strip().splitlines() if "weights_only" not in line), type(err).__name__)
    return f"the file is truncated or damaged ({first.strip()[:200]})"


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_pretrained(model: nn.Module, source: str, spec: ModelSpec,
                    state: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Load ImageNet-style weights into ``model``; returns notes about what was re-initialised. ``state``: the
    file's tensors when the caller has read them already (``read_state_dict``)."""
    if state is None:
        state = hub_state_dict(spec.arch) if source == "hub" else read_state_dict(source)
    return load_matching(model, state, source)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy every tensor whose name and shape match; the head and a changed stem may differ, nothing else."""
    own = model.state_dict()
    notes, mismatched = [], []
    usable = {}
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            usable[key] = value
        elif key in own:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    head, first = f"{head_name(model)}.", f"{first_conv_name(model)}."  # "fc.", "conv1." (or "conv1.0.")
    reinit_ok = (head, first)
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    serious = [k for k in missing if not k.startswith(reinit_ok)]
    if serious:
        raise ModelError(f"{source} does not fit {type(model).__name__}: {len(serious)} weights missing or of "
                         f"another shape (e.g. {', '.join(serious[:3])}); is it for another architecture?")
    model.load_state_dict(usable, strict=False)
    if any(k.startswith(head) for k in missing):
        notes.append("classifier head re-initialised (its shape differs from the weights file)")
    if any(k.startswith(first) for k in missing):
        notes.append("first conv re-initialised (small stem differs from the weights file)")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        notes.append(f"{len(unexpected)} tensors in {source} were not used (e.g. {unexpected[0]})")
    return notes


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


class TTAModel(nn.Module):
    """Average the class probabilities over flipped (and shifted) views of each image.

    Returns log-probabilities, so argmax, softmax and cross-entropy behave as with plain logits.
    ``flip``: the image and its mirror (2 passes); ``flip-crop``: also 4 one-pixel-per-16 shifts of each
    (10 passes). The views are stacked into one batch, so the model runs once per call.
    """

    MODES = ("none", "flip", "flip-crop")

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"--tta must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.model, self.mode = model, mode

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        views = [x, x.flip(dims=[3])]
        if self.mode == "flip-crop":
            shift = max(1, x.shape[-1] // 16)
            for base in (x, x.flip(dims=[3])):
                for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
                    views.append(torch.roll(base, shifts=(dy, dx), dims=(2, 3)))
        return views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.model(x)
        views = self._views(x)
        logits = self.model(torch.cat(views))  # (V*N) x K
        probabilities = logits.float().softmax(dim=1).view(len(views), x.shape[0], -1).mean(dim=0)
        return probabilities.clamp_min(1e-12).log()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network under TTAModel, DataParallel / DistributedDataParallel and torch.compile wrappers, in
    any nesting: saved keys carry no prefixes, and Grad-CAM hooks see the plain network's batches."""
    while True:
        if isinstance(model, TTAModel):  # its views would change the batch the CAM hooks see
            model = model.model
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model
