"""Where a run computes and in which precision: --device (auto: CUDA, else MPS, else the CPU) and --amp (auto:
bf16 or fp16 on a GPU, bf16 on a CPU only where the hardware has it and the feature maps are large enough).

    device = resolve_device("auto")
    dtype = amp_dtype_for("auto", device, first_stage_side(spec, img_size))   # None: fp32
    with autocast(device, dtype):
        logits = model(x)
    compute = Compute.of("auto", batch_size=64, progress=False)   # the scoring verbs' shared settings, one value
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """--device: "auto" is CUDA where there is a GPU, else Apple's MPS where it exists, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available (torch.cuda.is_available() "
                         "is False); use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """bf16 is only a speed-up on CPUs with AVX512-BF16 or AMX; elsewhere it is emulated and slower.

    torch's get_cpu_capability() stops at "AVX512" (it names the vector kernels it built, not bf16 or AMX
    support), so the CPU's own flags decide: on a Sapphire Rapids core AMX makes a ResNet-18 training step
    about 2.4x faster than fp32 (benchmarks/README.md). ``RESNETLAB_CPU_BF16=0`` (or ``1``) overrides the
    detection, e.g. to get the same fp32 numbers on every host.
    """
    forced = os.environ.get("RESNETLAB_CPU_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    return _cpu_flags_have_bf16()


@functools.cache
def _cpu_flags_have_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:  # not Linux: trust torch's capability string alone
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


CPU_BF16_MIN_SIDE = 16  # first-stage feature maps smaller than this run faster in fp32 on CPUs


def amp_dtype_for(amp: str, device: torch.device, first_map_side: int | None = None) -> torch.dtype | None:
    """Resolve --amp to an autocast dtype (None: fp32).

    ``first_map_side``: the side of the first stage's feature maps (models.first_stage_side). On a CPU, bf16
    pays off on large maps (small stem at 28 px: 2.4x fp32) but loses on tiny ones (standard stem at 32 px,
    8 x 8 maps: 0.93x), where the casts cost more than the smaller matrix products save (benchmarks/README.md).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":  # mps and others: fp32 unless asked (autocast support varies by backend and op)
        return None
    if first_map_side is not None and first_map_side < CPU_BF16_MIN_SIDE:
        return None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast in ``dtype`` on ``device``'s type; nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Compute:
    """How a verb runs a network over many images: the device (resolved), --amp, the batch size, the decode
    workers and whether progress bars show; one value for what every scoring function needs."""

    device: torch.device
    batch_size: int = 256
    amp: str = "auto"
    workers: int | None = None
    progress: bool = True

    @classmethod
    def of(cls, device: str | torch.device = "auto", **settings) -> Compute:  # noqa: ANN003 - the fields above
        """``device`` by name ("auto", "cpu", "cuda:1") or already resolved."""
        return cls(device if isinstance(device, torch.device) else resolve_device(device), **settings)
