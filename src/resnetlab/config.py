"""Typed training settings: one dataclass is the single source of defaults, help texts and validation.

The CLI builds its flags from these fields, a YAML file (``--config``) may set any of them, and the
resolved values are written to ``config.yaml`` in the run folder.

    cfg = TrainConfig.from_sources(yaml_path="recipe.yaml", overrides={"epochs": 3})
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def require_at_least(flag: str, value: int, minimum: int = 1) -> None:
    """A count given on the command line or to the API (``--batch-size``, ``--depth``) that must be >= minimum."""
    if value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {value}")


# timm's optimizers (timm.optim.list_optimizers()) less the CUDA-only bnb*/fused* and adahessian (second-order
# backward); tests/test_optimizers.py keeps the list in step with the installed timm. torch-free: read at parse time.
OPTIMIZERS = tuple("""sgd adam adamw adabelief adadelta adafactor adafactorbv adafactorbvc adagrad adamax adamc adamp
    adamuon adamwlegacy adan adanw adopt adoptc adoptw cadafactor cadafactorbv cadafactorbvc cadamc cadamp cadamw cadan
    cadanw cadopt cadoptc cadoptw clamb clambw claprop clion clionc cmars cnadamc cnadamw crmsproptf csgdc csgdp csgdw
    kron kronc kronw lamb lambc lambcd lambcw lambw laprop lapropc larc lars lion lionc madgrad madgradw mars momentum
    muon nadam nadamc nadamlegacy nadamuon nadamw nesterov nesterovw nlarc nlars nmuon novograd novogradc novogradw
    radabelief radam radamlegacy radamw rmsprop rmsproptf rmsproptfc rmsproptfw sgdc sgdp sgdw""".split())
SGD_LIKE = ("sgd", "momentum", "nesterov", "nesterovw", "sgdc", "sgdp", "sgdw", "csgdc", "csgdp", "csgdw", "lars",
            "larc", "nlars", "nlarc")


def _opt(default: Any, help: str, choices: tuple | None = None, const: str | None = None, internal: bool = False
         ) -> Any:
    """A setting: its default, help text and choices; ``const``: the value of the flag given without one;
    ``internal``: recorded in config.yaml but not a flag of its own."""
    meta = {"help": help, "choices": choices, "const": const, "internal": internal}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting with its default and help (the CLI's flags are generated from them); frozen:
    settings.resolve builds it, training.settle adds auto's choices with ``dataclasses.replace``. Example::

        import resnetlab
        result = resnetlab.train(resnetlab.TrainConfig(data="photos/", epochs=5, img_size=64))
    """

    # data
    data: str | None = _opt(None, "image folder, CSV file, or built-in name (fashion-mnist, mnist, cifar10, "
                                  "cifar100, digits)")
    data_root: str | None = _opt(None, "folder holding the built-in data sets' standard files "
                                       "(Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    val_split: float = _opt(0.1, "fraction held out for validation when the data has no val split")
    img_size: int | None = _opt(None, "training image size in pixels (square); default: the data set's "
                                      "native size for built-ins, else the median image side clamped to 32-224")
    norm: str = _opt("imagenet", "normalisation: imagenet, dataset (mean/std of the training split), "
                                 "or none; --mean/--std give explicit values", ("imagenet", "dataset", "none"))
    mean: list[float] | None = _opt(None, "explicit per-channel mean, e.g. 0.5,0.5,0.5 (overrides --norm)")
    std: list[float] | None = _opt(None, "explicit per-channel std, e.g. 0.25,0.25,0.25 (overrides --norm)")
    balance: str = _opt("none", "imbalanced classes: none, weights (loss weights 1/frequency), sqrt (tempered "
                                "weights 1/sqrt(frequency)) or sampler (class-balanced sampling)",
                        ("none", "weights", "sqrt", "sampler"))
    aug: str = _opt("light", "augmentation preset: none, flip (horizontal flips only), crop (flip, padded crop), "
                             "light (crop + small rotation), "
                             "standard (+ random-resized-crop, colour jitter), strong (+ TrivialAugment, random "
                             "erasing)",
                    ("none", "flip", "crop", "light", "standard", "strong"))
    erase: float = _opt(0.0, "random erasing probability on top of the --aug preset (a noise box of 2-25 percent of "
                             "the image), e.g. 0.25; 0: off (strong: 0.25)")
    hflip: bool = _opt(True, "allow horizontal flips in augmentation (turn off for digits and text)")
    vflip: bool = _opt(False, "also flip vertically at random (pictures with no up or down: textures, surfaces, "
                              "aerial and microscope images; the plain script's h+v flips; --recipe auto turns it "
                              "on for photo-sized images trained from scratch; --no-vflip keeps it off)")
    loader: str = _opt("auto", "data path of the training split: memory (decode every image once into a cached "
                        "uint8 array), stream (decode each batch from the files with DataLoader workers: sets larger "
                        "than memory; tar shards are read in sequence, each process and worker its own shards, "
                        "through a shuffle buffer, unless they hold sorted classes: docs/data.md), auto (stream "
                        "when the decoded split would take over half the "
                        "free memory)",
                        ("auto", "memory", "stream"))
    cache_dir: str | None = _opt(None, "folder for what is made once: decoded-image caches, shard indexes and "
                                       "Hugging Face images (default: $RESNETLAB_CACHE, else ~/.cache/resnetlab)")
    cache_layout: str = _opt("auto", "how the training split is decoded: whole (each whole image, any aspect ratio, "
                                     "letterboxed at 1.5x the training size, so random-resized-crop sees all of it), "
                                     "square (its centre square at the training size), auto (whole above 64 px; "
                                     "with --crop-mode squash --crop-pct 1 under flips, shifts or rotations, each "
                                     "whole picture squashed at the training size, as evaluation sees it)",
                             ("auto", "whole", "square"))
    crop_pct: float | None = _opt(None, "evaluation crop: resize the shorter side to img-size / crop-pct, then "
                                        "centre-crop img-size (timm/torchvision); default: the timm weights' value "
                                        "with --pretrained, 0.875 above 64 px, 1.0 (no crop) at 64 px and below")
    crop_mode: str | None = _opt(None, "how the evaluation crop resizes (timm's crop_mode): center (the shorter side, "
                                       "aspect kept, then the centre square) or squash (both sides, aspect not kept: "
                                       "all of the picture, edges included); default: center, auto: squash for grey "
                                       "photo-sized images", ("center", "squash"))
    interpolation: str | None = _opt(None, "resize filter of the evaluation crop: bilinear or bicubic (default: the "
                                           "timm weights' with --pretrained, else bilinear)", ("bilinear", "bicubic"))
    follow_links: bool = _opt(False, "follow folder links that lead outside the data folder (a link loop or a second "
                                     "link to a folder is never followed)")
    task: str = _opt("auto", "multiclass (one class per image) or multilabel (several labels per image: a CSV with a "
                             "'labels' column or one 0/1 column per label; sigmoid outputs); auto: multilabel when the "
                             "CSV has such columns", ("auto", "multiclass", "multilabel"))
    label_sep: str = _opt("|", "separator of the names in a multi-label CSV's 'labels' cells (an empty cell: no label)")
    threshold: float | None = _opt(None, "multi-label: the probability at or above which a label is predicted, for "
                                         "every label; default: per label, the F1-optimal one on the validation split")
    calibrate: bool = _opt(False, "at the end of the run, fit a temperature on the validation split (minimum NLL) and "
                                  "store it in best.pt and last.pt: every verb and export then gives calibrated "
                                  "probabilities (single-label models; resnetlab calibrate does it afterwards)")
    # model
    model: str = _opt("resnet18", "architecture, one of the ResNet family (models.ARCHITECTURES): "
                                  "resnet18/34/50/101/152, their d variants (resnet18d ... resnet152d), "
                                  "resnext50_32x4d, wide_resnet50_2, seresnet50, resnetrs50; a timm weights tag may "
                                  "follow (resnet50.tv_in1k); any other name is refused")
    pretrained: str | None = _opt(None, "weights: a local .pth/.safetensors file (timm or torchvision), 'hub' (timm "
                                        "download), or none (random weights)")
    head: str = _opt("linear", "classifier head: linear, or mlp (Linear-ReLU-Dropout-Linear)", ("linear", "mlp"))
    hidden: int = _opt(512, "hidden width of the mlp head")
    dropout: float = _opt(0.5, "dropout of the mlp head")
    stem: str = _opt("auto", "auto (small when img-size <= 64), small (3x3 stride-1 conv, no max-pool), "
                             "or standard (ImageNet stem)", ("auto", "small", "standard"))
    width: float = _opt(1.0, "channel-width multiplier of the ResNet stages (0.5 halves every stage: ~4x "
                             "fewer FLOPs, for small data sets on CPUs)")
    pool: str = _opt("avg", "global pooling before the head (timm's global_pool): avg, max, or avgmax (the mean of "
                            "both: small marks on a large surface are not averaged away)", ("avg", "max", "avgmax"))
    freeze_backbone: bool = _opt(False, "train only the head")
    unfreeze_at: int | None = _opt(None, "epoch (1-based) at which a frozen backbone starts training")
    feature_views: int = _opt(1, "while the backbone is frozen, train the head on pooled features computed once per "
                                 "image: 1 = one unaugmented view, K > 1 = K augmented views (epoch e uses view "
                                 "e mod K); 0 = the plain frozen loop (every epoch runs the backbone)")
    # optimisation
    epochs: int = _opt(10, "number of epochs")
    batch_size: int = _opt(128, "images per step (per process)")
    lr: float | str | None = _opt(None, "peak learning rate, or 'auto' (a learning-rate range test picks it); "
                                        "default 0.1 for sgd-like (sgd, momentum, lars...), 1e-4 for lion, 0.001 for "
                                        "the others")
    opt: str = _opt("sgd", "optimizer, any of timm's (create_optimizer_v2): sgd (Nesterov), adam, adamw, lamb, lars, "
                           "lion, rmsprop, nadam, ...", OPTIMIZERS)
    momentum: float = _opt(0.9, "SGD momentum; another value than 0.9 also sets beta1 of the optimizers with betas "
                                "(adam, adamw, lamb, lion, ...)")
    weight_decay: float = _opt(5e-4, "weight decay (not applied to norm layers and biases)")
    sched: str = _opt("onecycle", "learning-rate schedule, stepped every batch",
                      ("onecycle", "cosine", "step", "none"))
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs (onecycle: the rising phase)")
    step_size: int = _opt(30, "step schedule: epochs between decays (x0.1)")
    label_smoothing: float = _opt(0.1, "label smoothing of the training loss (validation loss is plain)")
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: off)")
    ema: float = _opt(0.0, "exponential moving average of the weights with this decay, e.g. 0.999 (0: off); "
                           "validation and best.pt use the averaged weights")
    mixup: float = _opt(0.0, "mixup alpha (0: off), e.g. 0.2")
    cutmix: float = _opt(0.0, "cutmix alpha (0: off), e.g. 1.0")
    mix_prob: float = _opt(1.0, "probability that a batch is mixed when --mixup/--cutmix are on")
    accum_steps: int = _opt(1, "gradient accumulation: one optimizer step every N batches (an effective batch of "
                               "N x --batch-size; the schedule counts optimizer steps)")
    best_metric: str = _opt("val_acc", "the validation metric that picks best.pt and that --early-stop watches: "
                                       "val_acc, val_loss (lower is better), macro_f1, top5, map (multi-label: mean "
                                       "average precision; what val_acc means for multi-label data), or last (the "
                                       "last epoch: the end of a one-cycle schedule; what auto picks when the "
                                       "validation split is too small for one image not to swing the metric)",
                            ("val_acc", "val_loss", "macro_f1", "top5", "map", "last"))
    early_stop: int = _opt(0, "stop when the --best-metric has not improved for N epochs (0: never)")
    race: str = _opt("on", "with --recipe auto and a time budget: race a few candidate recipes (the rule choice, a "
                           "plain one, a variant) on a share of the training split inside a quarter of the budget, "
                           "then train the one that scored best on the validation split; off: the rule choice",
                     ("on", "off"))
    time_limit: str | float | None = _opt(None, "stop after this wall time (e.g. 90s, 5m, 1h); the schedule is "
                                        "shortened to fit")
    fill_time: bool = _opt(False, "with --time-limit: also lengthen the plan to as many epochs as fit in the time "
                                  "(re-planned after every epoch; --epochs is the first plan)")
    # machine
    seed: int = _opt(0, "random seed (split, init, shuffling, augmentation)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    workers: int | None = _opt(None, "processes that decode images (default: number of CPU cores, at most 8)")
    amp: str = _opt("auto", "mixed precision: auto (bf16 where the hardware has it, fp16 on older GPUs), "
                            "bf16, fp16, off", ("auto", "bf16", "fp16", "off"))
    compile: bool = _opt(False, "torch.compile the model")
    sync_bn: bool = _opt(False, "synchronise BatchNorm statistics across processes (torchrun runs only)")
    # safety
    strict: bool = _opt(False, "fail on the first unreadable image instead of skipping it")
    save_every: int = _opt(0, "also write a resumable last.pt every N steps inside an epoch (0: only per epoch)")
    keep: int = _opt(0, "also keep epoch_NNN.pt (weights as best.pt) for the last N epochs (0: none)")
    stop_after_steps: int = _opt(0, "stop (resumably, like Ctrl-C) after N optimizer steps in this invocation")
    # outputs
    out: str | None = _opt(None, "run folder (default: runs/NAME)")
    name: str | None = _opt(None, "run name (default: MODEL-DATA-TIMESTAMP)")
    exist_ok: bool = _opt(False, "reuse an existing run folder (files are overwritten)")
    resume: str | None = _opt(None, "continue the run in this folder from its last.pt; auto: the --out/--name "
                                    "folder's last.pt when it has one, else a fresh run (torchrun --max-restarts "
                                    "N > 0 makes auto the default)")
    progress: bool = _opt(True, "show progress bars (only when the output is a terminal)")
    # where the settings came from (written by the CLI and the run; not flags of their own)
    recipe: str | None = _opt(None, "the preset under the settings: auto (chosen from the data and the time budget: "
                                    "the CLI's default), fast, accurate, photos, plain, or a YAML file", internal=True)
    given: list[str] | None = _opt(None, "the settings given explicitly (flags, YAML, keywords): auto leaves them "
                                         "alone", internal=True)
    chosen: dict | None = _opt(None, "what --recipe auto chose, each with its reason", internal=True)
    # tracking (pip install 'resnetlab[track]')
    tensorboard: bool = _opt(False, "write TensorBoard event files to RUN_DIR/tensorboard/ (tensorboard --logdir runs)")
    mlflow: str | None = _opt(None, "log to MLflow: --mlflow alone uses $MLFLOW_TRACKING_URI, else a SQLite store in "
                                    "RUN_DIR/mlruns; --mlflow URI for a server (http://HOST:PORT)", const="auto")
    wandb: str | None = _opt(None, "log to Weights & Biases: --wandb alone uses the project 'resnetlab', --wandb "
                                   "PROJECT another; files in RUN_DIR/wandb/ ($WANDB_DIR), WANDB_MODE=offline for no "
                                   "network", const="auto")
    wandb_group: str | None = _opt(None, "the W&B group the run joins (runs of one experiment side by side); "
                                         "resnetlab tune groups its trials by the study's name")

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, origin: str = "settings") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with a 'did you mean'."""
        check_names(values, origin)
        cfg = cls(**{k.replace("-", "_"): v for k, v in values.items()})
        cfg.validate()
        return cfg

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                     *, base: dict[str, Any] | None = None) -> TrainConfig:
        """Defaults < ``base`` (a recipe) < YAML file < ``overrides`` (command-line flags)."""
        values: dict[str, Any] = dict(base or {})
        if yaml_path:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values, origin=str(yaml_path) if yaml_path else "settings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not (value is None and f.default is None):
                raise ConfigError(f"{f.name} = {value!r} is not one of: {', '.join(choices)}")
            _check_type(f.name, str(f.type), value)
        if isinstance(self.pretrained, str) and self.pretrained.lower() in ("none", ""):
            object.__setattr__(self, "pretrained", None)  # --pretrained none: random weights (over a recipe)
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                object.__setattr__(self, "lr", float(self.lr))  # normalised while built, frozen after
            except ValueError:
                raise ConfigError(f"lr must be a number or 'auto', got {self.lr!r}") from None
        for key in ("mean", "std"):
            value = getattr(self, key)
            try:
                value = [float(v) for v in (value.split(",") if isinstance(value, str) else value)] \
                    if value is not None else None
            except (TypeError, ValueError):
                raise ConfigError(f"{key} needs 3 numbers (R,G,B), got {getattr(self, key)!r}") from None
            object.__setattr__(self, key, value)
            if value is not None and len(value) != 3:
                raise ConfigError(f"{key} needs 3 values (R,G,B), got {value}")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0.0 < self.val_split < 1.0, f"val_split must be between 0 and 1, got {self.val_split}"),
            (self.img_size is None or 8 <= self.img_size <= 1024, f"img_size must be 8-1024, got {self.img_size}"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (0.0625 <= self.width <= 4.0, f"width must be between 0.0625 and 4, got {self.width}"),
            (self.lr is None or self.lr == "auto" or (isinstance(self.lr, (int, float)) and self.lr > 0),
             f"lr must be > 0 or 'auto', got {self.lr}"),
            (0.0 <= self.erase <= 1.0, f"erase must be a probability in [0, 1], got {self.erase}"),
            (0.0 <= self.ema < 1.0, f"ema decay must be in [0, 1), got {self.ema}"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix alphas must be >= 0"),
            (0.0 <= self.mix_prob <= 1.0, f"mix_prob must be in [0, 1], got {self.mix_prob}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (not (self.mixup or self.cutmix) or self.batch_size % 2 == 0,
             f"mixup/cutmix need an even batch_size, got {self.batch_size}"),
            (self.early_stop >= 0, f"early_stop must be >= 0, got {self.early_stop}"),
            (self.crop_pct is None or 0.1 <= self.crop_pct <= 1.0,
             f"crop_pct must be within 0.1-1, got {self.crop_pct}"),
            (self.feature_views >= 0, f"feature_views must be >= 0, got {self.feature_views}"),
            (self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}"),
            (self.stop_after_steps >= 0, f"stop_after_steps must be >= 0, got {self.stop_after_steps}"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}"),
            (self.keep >= 0, f"keep must be >= 0, got {self.keep}"),
            (self.threshold is None or 0.0 < self.threshold < 1.0,
             f"threshold must be a probability between 0 and 1, got {self.threshold}"),
            (bool(self.label_sep.strip()), f"label_sep must be a visible character, got {self.label_sep!r}"),
            (self.std is None or all(s > 0 for s in self.std), f"std values must be > 0, got {self.std}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.time_limit is not None:
            parse_duration(self.time_limit)
        elif self.fill_time:
            raise ConfigError("fill_time needs a time limit to fill: add --time-limit, e.g. --time-limit 30m")

    @property
    def peak_lr(self) -> float:
        if isinstance(self.lr, (int, float)):
            return float(self.lr)
        return default_lr(self.opt)


def default_lr(opt: str) -> float:
    """The peak learning rate of an optimizer when --lr is not given: SGD-like 0.1, Lion 1e-4, the others 1e-3."""
    return 0.1 if opt in SGD_LIKE else 1e-4 if "lion" in opt else 1e-3


def check_names(values: dict[str, Any], origin: str) -> None:
    """Unknown setting names are a ConfigError naming ``origin`` (a file, or "settings"), with a 'did you mean'."""
    known = TrainConfig.field_names()
    for key in values:
        if key.replace("-", "_") not in known:
            close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown setting '{key}' in {origin}{hint}")


def _check_type(name: str, annotation: str, value: Any) -> None:
    """A value of the wrong type (from YAML: ``epochs: ten``, ``epochs: null``) is a ConfigError naming the setting,
    not a TypeError from the first comparison. Text where a number is expected is converted by ``validate``."""
    if value is None:
        if "None" not in annotation:
            raise ConfigError(f"{name} needs a value, got null")
        return
    accepted = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "list[float]": (list, str)}
    parts = [part.strip() for part in annotation.split("|") if part.strip() != "None"]
    ok = any(isinstance(value, accepted.get(part, (object,))) and (part == "bool" or not isinstance(value, bool))
             for part in parts)
    if not ok:
        kind = annotation.split(" | ")[0].replace("list[float]", "a list of numbers")
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    return values


def parse_duration(text: str | float | int) -> float:
    """'90s', '5m', '1.5h' or a plain number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ConfigError(f"time_limit {text!r} is not a duration like 90s, 5m or 1h")
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise ConfigError(f"time_limit {text!r} is not a duration like 90s, 5m or 1h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"time_limit {text!r} is not a duration like 90s, 5m or 1h (it must be above zero)")
    return seconds


def recipe_values(name: str | None) -> dict:
    """A shipped preset by name (recipes/NAME.yaml in the package) or a YAML file's settings; {} for None and for
    auto (whose settings depend on the data: training/auto.py)."""
    if not name or name == "auto":
        return {}
    path = Path(name)
    if path.is_file():
        values = load_yaml(path)
        check_names(values, str(path))  # a typo is named in the recipe file, not in whatever comes after it
        return values
    shipped = resources.files("resnetlab") / "recipes" / f"{name}.yaml"
    if not shipped.is_file():
        available = sorted(p.name.removesuffix(".yaml") for p in (resources.files("resnetlab") / "recipes").iterdir()
                           if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown recipe '{name}'; shipped recipes: auto, {', '.join(available)}, or give a YAML "
                          "file")
    with resources.as_file(shipped) as file:
        return load_yaml(file)
