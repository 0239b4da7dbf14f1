"""Data-parallel training through PyTorch's own DistributedDataParallel, launched by torchrun.

``torchrun --nproc-per-node 2 -m resnetlab train DATA ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; this
module turns them into a process group (nccl on CUDA, gloo on CPU) with timeouts, so a rank that dies
ends the job instead of leaving the others waiting forever.

    dist_info = init_distributed("auto")
    if dist_info.is_main: write_files()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import resolve_device
from .log import logger

# A collective that waits longer than this means a peer is gone: fail instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(minutes=int(os.environ.get("RESNETLAB_DIST_TIMEOUT_MIN", "10")))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when started by torchrun; otherwise a single process on ``device_name``."""
    if not launched_by_torchrun():
        return DistInfo(device=resolve_device(device_name))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("TORCHELASTIC_MAX_RESTARTS",
                                                                                   "0") not in ("", "0"):
        logger.warning("torchrun shares its rendezvous store with the workers, so restarted workers may read the "
                       "addresses of the ones they replace and fail to connect (pytorch#135712): launch torchrun "
                       "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 when --max-restarts > 0")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if use_cuda else None)
    return DistInfo(rank, world_size, local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def sum_over_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a few numbers across ranks (float64 so image counts stay exact)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on one (a stop request must stop all ranks at the same step)."""
    if not info.enabled:
        return flag
    return sum_over_ranks([1.0 if flag else 0.0], info)[0] > 0


def from_main(value, info: DistInfo):  # noqa: ANN001, ANN201 - any picklable value
    """Rank 0's value on every rank (decisions taken from one clock, e.g. the time limit)."""
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_lists(items: list, info: DistInfo) -> list:
    """Every rank's list, concatenated in rank order, on every rank (e.g. the files each rank's shard skipped)."""
    if not info.enabled:
        return list(items)
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's BatchNorm statistics to every rank: each rank's last step updated them on its own
    shard, and validation must score exactly the model that rank 0 saves."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def weights_checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.state_dict().values() if p.is_floating_point()))


def agree_on_start(start: tuple, where: str, info: DistInfo) -> None:
    """Every rank must start from the same point (``start``: e.g. the resumed run and its epoch, or None for a fresh
    run): each rank decides from the run folder it sees, and a node that sees another folder (storage that is not
    shared, a copy out of date) would train other weights in lockstep. A disagreement fails every rank with one
    message naming the ranks and their hosts."""
    if not info.enabled:
        return
    import socket

    seen = gather_lists([(info.rank, socket.gethostname(), start)], info)
    if all(item[2] == seen[0][2] for item in seen):
        return
    from .errors import ConfigError

    def said(item: tuple) -> str:
        return f"rank {item[0]} on {item[1]}: " + ("a fresh run" if item[2] is None else f"{item[2]}")

    raise ConfigError(f"the ranks do not agree where the run starts ({'; '.join(said(i) for i in seen[:8])}): every "
                      f"node must see the same run folder {where} (storage all nodes share), or give each the same "
                      "--resume PATH")
