"""ImageNet weights by name, with no surprise on an offline machine: a folder of weight files (RESNETLAB_WEIGHTS),
then the local Hugging Face hub cache (where timm keeps what it downloaded), then the hub itself.

    state = hub_state_dict("resnet18")               # --pretrained hub: from the cache if there, else downloaded
    value, reason = available_weights("resnet18")    # what the auto recipe can pass as --pretrained, and why
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import ModelError, one_line

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # safest first: the order a folder's files are preferred
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold, the order timm tries
_REACH_S = 2.0  # the quick connection check; the hub client's own retries take ~50 s without network


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (huggingface_hub reads it once, at import):
    $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub or ~/.cache/huggingface/hub."""
    folder = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
        folder = os.path.join(home, "hub")
    return Path(os.path.expanduser(os.path.expandvars(folder)))


def hub_repository(arch: str) -> tuple[str, str | None, tuple[str, ...]] | None:
    """timm's hub repository for ``arch`` at its default tag (resnet18 -> timm/resnet18.a1_in1k), its revision
    (None: main) and the file names to look for; None when timm has no hub weights for it."""
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError:  # a tag timm does not have (resnet18.nope)
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None)
    return repo, revision or None, (filename,) if filename else _HUB_FILES


def cached_hub_weights(arch: str) -> Path | None:
    """The weights file for ``arch`` in the local hub cache (timm's layout: models--timm--ARCH.TAG/snapshots/REV/
    model.safetensors), or None. Never touches the network."""
    found = hub_repository(arch)
    if found is None:
        return None
    repo, revision, filenames = found
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    for filename in filenames:
        path = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(path, str):
            return Path(path)
    # a cache copied without its refs/ (try_to_load_from_cache resolves "main" through refs/main): any snapshot
    snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    candidates = [path for name in filenames for path in snapshots.glob(f"*/{name}") if path.is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def _cache_place(arch: str) -> str:
    """Where the cache would hold ``arch``'s weights, for messages."""
    found = hub_repository(arch)
    return str(hub_cache_dir() / f"models--{found[0].replace('/', '--')}" if found else hub_cache_dir())


def local_weights(arch: str) -> Path | None:
    """A file in $RESNETLAB_WEIGHTS named after ``arch``: resnet18.safetensors, resnet18.a1_in1k.pth (never
    resnet18d.pth, another network). An exact name first, then .safetensors before pickles."""
    folder = os.environ.get("RESNETLAB_WEIGHTS")
    if not folder or not Path(folder).is_dir():
        return None
    matches = [path for path in Path(folder).iterdir() if path.is_file() and path.suffix in WEIGHT_SUFFIXES
               and (path.stem == arch or path.stem.startswith(arch + "."))]
    ranked = sorted(matches, key=lambda p: (p.stem != arch, WEIGHT_SUFFIXES.index(p.suffix), p.name))
    return ranked[0] if ranked else None


def available_weights(arch: str, *, online: Callable[[], bool] | None = None) -> tuple[str | None, str]:
    """What ``--pretrained`` can be for ``arch`` here, and a one-line reason: a file in $RESNETLAB_WEIGHTS (its
    path), the weights in the local hub cache ("hub"), the hub reachable ("hub": downloaded at the start of the
    run), or None. Downloads nothing; takes at most ~2 s (``online``: the reachability check, for tests)."""
    path = local_weights(arch)
    if path is not None:
        return str(path), f"ImageNet weights for {arch}: {path} (RESNETLAB_WEIGHTS)"
    has_hub = hub_repository(arch) is not None
    cached = cached_hub_weights(arch) if has_hub else None
    if cached is not None:
        return "hub", f"ImageNet weights for {arch} from the Hugging Face hub cache ({cached})"
    if has_hub and not hub_offline() and (online or _hub_reachable)():
        return "hub", f"ImageNet weights for {arch}: downloaded from the Hugging Face hub into {hub_cache_dir()}"
    folder = os.environ.get("RESNETLAB_WEIGHTS")
    return None, (f"no ImageNet weights for {arch} in RESNETLAB_WEIGHTS{f' ({folder})' if folder else ''}, the hub "
                  f"cache ({_cache_place(arch)}) or online: trained from scratch")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _hub_address() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    return host, int(port or 443)


def _hub_reachable(timeout_s: float = _REACH_S) -> bool:
    """A TCP connection to the hub within ``timeout_s``, name lookup included (socket's timeout does not bound
    that, so it runs in a thread that is left behind if it hangs)."""
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(_hub_address(), timeout=timeout_s).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(reached)


@contextlib.contextmanager
def _quiet_hub_loggers() -> Iterator[None]:
    """The hub client logs each failed retry with a traceback; we report once."""
    quiet = [logging.getLogger(name) for name in ("huggingface_hub", "timm", "urllib3", "httpx")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def hub_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """``arch``'s ImageNet weights (timm): from the local hub cache when there (offline too), else from the hub;
    a ModelError naming the cache folder looked in and what to pass instead."""
    import timm

    cached = cached_hub_weights(arch)
    with _quiet_hub_loggers():
        try:
            if cached is not None:  # timm's own loading (key filters, checks), from the file instead of the network
                return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}
                                         ).state_dict()
            if hub_offline():
                raise OSError("HF_HUB_OFFLINE is set")
            if not _hub_reachable(5.0):
                raise OSError(f"cannot reach {_hub_address()[0]}")
            return timm.create_model(arch, pretrained=True).state_dict()
        except Exception as err:  # noqa: BLE001 - no network, missing hub package, unknown tag, a damaged file...
            problem = (f"could not read the pretrained weights for {arch} in the hub cache ({cached}: {one_line(err)})"
                       if cached else f"could not download pretrained weights for {arch} from the hub ("
                       f"{one_line(err)}), and they are not in the hub cache ({_cache_place(arch)})")
            raise ModelError(f"{problem}. Offline? Pass a weights file: --pretrained FILE (a timm or torchvision "
                             f"{arch} state dict, .pth or .safetensors; saved where there is network with torch.save("
                             f"timm.create_model('{arch}', pretrained=True).state_dict(), '{arch}.pth')), or "
                             "--pretrained none to start from random weights") from None
