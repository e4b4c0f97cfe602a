"""Several processes, one run: aesampler under ``torchrun``.

``torchrun --nproc-per-node=N -m aesampler ...`` starts N copies of the command; torchrun puts
each one's place in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). This module is the
one owner of that picture: it reads the environment, sets up and tears down the process group
(gloo for CPU tensors, NCCL for CUDA tensors) and offers the few collective operations the rest
of aesampler needs. Nothing else calls ``torch.distributed``, except the training loop wrapping
networks in ``DistributedDataParallel``.

Without torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) every function here is a no-op or the
identity, so single-process code needs no branches.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import AesamplerError

T = TypeVar("T")


class DistributedError(AesamplerError):
    """Running under torchrun went wrong, or something cannot run under it."""


#: What torch.distributed raises when a peer is gone (it failed, and torchrun is stopping it).
COMMUNICATION_ERRORS: tuple[type[Exception], ...] = (dist.DistError,) if dist.is_available() else ()


#: What gloo and NCCL say when a peer is gone. Inside DistributedDataParallel they raise a bare
#: RuntimeError, not a DistError, so the message is all there is to go by.
LOST_PEER_MESSAGES = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)


def lost_peer(error: BaseException) -> str | None:
    """What says that ``error`` means another rank is gone (it failed, and torchrun is stopping
    this one), or None."""
    if isinstance(error, COMMUNICATION_ERRORS):
        return type(error).__name__
    if isinstance(error, RuntimeError):
        text = str(error)
        return next((m for m in LOST_PEER_MESSAGES if m in text), None)
    return None


class OtherRankFailedError(DistributedError):
    """Another rank failed at a point where this one waited for it; that rank reports why."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(
            f"the environment variable {name}={text!r} is not a whole number (torchrun sets it)"
        ) from None


def world() -> World:
    """This process's place, from torchrun's environment; ``World()`` without torchrun."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise DistributedError(
            f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local} do not describe a process of a "
            "run (0 <= RANK < WORLD_SIZE); start aesampler with torchrun, or unset them"
        )
    return World(rank=rank, world_size=size, local_rank=local)


def _silent(_: str) -> None:
    pass


def voice(progress: bool, log: Callable[[str], None]) -> tuple[bool, Callable[[str], None]]:
    """What this process shows: rank 0 (or a single process) its progress bars and messages as
    asked, every other rank nothing, so a run under torchrun speaks once."""
    return (progress, log) if world().is_main else (False, _silent)


def default_device() -> torch.device:
    """This process's device when none is named yet: its own GPU if there are GPUs, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world().local_rank)
    return torch.device("cpu")


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on when a recipe asks for ``device``.

    Under torchrun, ``cuda`` means each process's own GPU, ``cuda:LOCAL_RANK``; a recipe naming
    one GPU (``cuda:1``) would put every process of a node on it, so it is refused.
    """
    w = world()
    if not w.enabled or device.type != "cuda":
        return device
    if device.index is not None:
        raise DistributedError(
            f"the device {str(device)!r} names one GPU, but torchrun runs {w.world_size} "
            "processes: say 'cuda' (or 'auto') and each process uses its own, cuda:LOCAL_RANK"
        )
    return torch.device("cuda", w.local_rank)


def setup(device: torch.device) -> World:
    """Join the run's process group (once); a no-op without torchrun.

    Both backends are registered where CUDA is available ("cpu:gloo,cuda:nccl"), so the group
    serves CPU tensors (object collectives, CPU training) and CUDA tensors (DDP on GPUs) alike;
    ``device`` being a CUDA device makes it this process's current device.
    """
    w = world()
    if not w.enabled or (dist.is_available() and dist.is_initialized()):
        return w
    if not dist.is_available():
        raise DistributedError(
            "torchrun started aesampler, but this PyTorch has no torch.distributed"
        )
    if device.type == "cuda":
        torch.cuda.set_device(w.local_rank if device.index is None else device.index)
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    try:
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
        # Waiting for rank 0 (it fits, chooses steps, runs a lone shard, measures, reports)
        # can outlast the default group's 30 minutes: these exchanges have a group of their own.
        global _coordination
        _coordination = dist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"{w}: cannot join the process group: {error}") from None
    return w


#: How long a rank waits for the others in the exchanges of :func:`barrier`,
#: :func:`broadcast_object`, :func:`all_gather_object`, :func:`gather_object`, :func:`main_first`
#: and :func:`finish`: rank 0 may work alone for long (fitting a start sampler, measuring,
#: comparing samplers, writing the report). A rank that fails ends the run at once (torchrun
#: stops the others), so this bounds only a rank that hangs. DDP's gradient all-reduces keep the
#: default group and its timeout.
COORDINATION_TIMEOUT = datetime.timedelta(hours=24)
_coordination: Any = None  # the gloo group of the exchanges above, made by setup()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank has come here; a no-op in a single process."""
    if _active():
        dist.barrier(group=_coordination)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects only)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_coordination)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_coordination)
    return out


def gather_object(obj: T, dst: int = 0) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank ``dst``, None on the others (``[obj]`` in a
    single process)."""
    if not _active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst, group=_coordination)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (a new tensor; ``tensor`` itself in one process)."""
    if not _active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def main_first(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 while the other ranks wait; its result on rank 0, None elsewhere.

    For the work only rank 0 does before every rank starts (checking and creating the run
    directory). Should ``fn`` raise on rank 0, the other ranks raise
    :class:`OtherRankFailedError` instead of waiting for a rank that will never come.
    """
    w = world()
    if not _active():
        return fn(*args, **kwargs)
    if w.is_main:
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            broadcast_object(f"{type(error).__name__}: {error}")
            raise
        broadcast_object(None)
        return result
    failure = broadcast_object(None)
    if failure is not None:
        raise OtherRankFailedError(f"rank 0 failed ({failure})")
    return None


def finish() -> None:
    """Wait until every rank has finished its command; a no-op in a single process.

    Called on success only. The ranks then leave the process group together, so no rank tears
    its connections down while another still uses them. The wait is a gloo
    ``monitored_barrier`` of :data:`COORDINATION_TIMEOUT`, which names a rank that never comes.
    """
    if _active():
        dist.monitored_barrier(_coordination, timeout=COORDINATION_TIMEOUT, wait_all_ranks=True)


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    global _coordination
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # every group, the coordination group too
    _coordination = None


#: Where torchrun (torch.distributed.elastic) asks each process to leave the reason it failed.
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def record_failure(line: str, status: int, *, follows_another_rank: bool = False) -> None:
    """Leave this process's one-line error where torchrun reads it, if torchrun asked for it.

    torchrun then shows ``line`` as the failed rank's "traceback" in the table that ends its
    output (instead of a link to its docs), and ``python -m aesampler.launch`` ends with it.
    ``status`` is the exit status the process is about to return (torchrun may still stop it
    with SIGTERM before it exits, when another rank exits first). ``follows_another_rank``: the
    error only says that another rank failed first (it vanished, or rank 0 reported an error);
    the launcher then prefers that other rank's line.
    """
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    now = time.time()
    record = {
        "message": line,  # the format torchrun's ProcessFailure reads: a message and its time
        "timestamp": int(now),
        "aesampler": {
            "line": line,
            "status": status,
            "time": now,
            "follows_another_rank": follows_another_rank,
        },
    }
    try:
        with open(path, "w") as file:
            json.dump(record, file)
    except OSError:
        pass  # the line was printed; torchrun's table then says less
