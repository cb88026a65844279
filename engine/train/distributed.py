"""Data-parallel training over several processes with torch.distributed, as launched by torchrun.

torchrun starts one process per GPU (or per share of the CPU cores) and tells each, through the
environment, who it is: RANK (0..WORLD_SIZE-1 over all nodes), WORLD_SIZE, LOCAL_RANK (its index on
its own node) and MASTER_ADDR/MASTER_PORT (where rank 0 meets the others). `setup()` joins that
process group; without torchrun (WORLD_SIZE unset or 1) nothing is set up and every helper here is
a no-op for a single process, which is world size 1.

Backends: gloo for CPU tensors, NCCL for CUDA tensors. Where CUDA and NCCL exist the group gets
both ("cpu:gloo,cuda:nccl") and each collective goes to the one for its tensors' device, so the
same code serves `--device cpu` and `--device cuda`; elsewhere it is gloo alone.

The trainer keeps every rank's parameters identical: broadcast from rank 0 once at the start,
then the same averaged gradients and the same optimizer step on every rank.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist

from engine.errors import UserError

T = TypeVar("T")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --- the process group ----------------------------------------------------------------------
def requested_world_size() -> int:
    """How many processes torchrun started (1 when launched without it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def backend() -> str:
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def setup() -> bool:
    """Join the process group torchrun describes in the environment: True when it did (the caller
    calls teardown() at the end); False, with nothing done, for a single process or a group that
    is already there."""
    if requested_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available() or not dist.is_gloo_available():
        raise UserError("several processes were started, but this PyTorch build has no torch.distributed "
                        "gloo backend; run one process, or install a PyTorch build with distributed support")
    if missing := [name for name in TORCHRUN_ENV if name not in os.environ]:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} not: start several processes with "
                        "torchrun --nproc_per_node=N -m engine train ...")
    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)  # before NCCL's first use; the trainer checks the count for --device cuda
    dist.init_process_group(backend())  # env:// rendezvous at MASTER_ADDR:MASTER_PORT
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, validates and prints."""
    return rank() == 0


def device(requested: torch.device) -> torch.device:
    """This process's device: with several processes on CUDA, GPU number LOCAL_RANK of its node."""
    if requested.type != "cuda" or not active():
        return requested
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise UserError(f"process {index} on this node needs GPU {index}, but there are {count}: start at most "
                        f"{count} processes per node (torchrun --nproc_per_node={count})")
    torch.cuda.set_device(index)  # NCCL talks through the current device
    return torch.device("cuda", index)


def share(total: int, what: str) -> slice:
    """This rank's contiguous 1/W of `total` items (tasks, external images); all shares are equal,
    so the mean of the per-rank means is the mean over everything."""
    w = world_size()
    if total % w:
        raise UserError(f"{what} {total} does not split evenly over {w} processes: use a multiple of {w} "
                        f"or another number of processes")
    n = total // w
    return slice(rank() * n, (rank() + 1) * n)


# --- collectives (no-ops for one process) ------------------------------------------------------
def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if active():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every .grad by its mean over the ranks, in one all-reduce. Parameters without a
    gradient (e.g. D at lambda = 0) must be the same on every rank; they keep None."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)  # sum: gloo has no AVG
    flat.div_(world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def average(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over the ranks (a new tensor; `t` itself when alone)."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t.div_(world_size())


def any_rank(flag: bool, on: torch.device) -> bool:
    """True on every rank when it is True on any: a stop request ends all ranks at the same step."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T | None:
    """fn() on rank 0 only (writing the run directory). A UserError or OSError there is raised as a
    UserError on every rank, so all of them stop with the same message instead of waiting for rank 0.
    With one process it is plain fn()."""
    if not active():
        return fn()
    result, message = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            message = str(e)
        except OSError as e:
            message = f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}"
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise UserError(box[0] if is_main() else f"rank 0: {box[0]}")
    return result
