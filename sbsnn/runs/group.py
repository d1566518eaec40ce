"""The process group a run works in: torch.distributed when launched so, else one process.

sbsnn never starts a scheduler of its own and never calls ``init_process_group`` unless
the process was launched by ``torchrun`` (its environment variables ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or the caller asks for
it. A group the host already initialised is used as it is and left alone; one sbsnn
initialised is destroyed when the ``with`` block ends.

Backends: ``gloo`` on CPUs; with CUDA, ``cpu:gloo,cuda:nccl`` (reductions of counters
travel on gloo, activations between pipeline stages on NCCL).

Reductions are exact: integer counters are summed (or maxed) with ``all_reduce`` on
int64 tensors; float sums (fidelity) are gathered per document and summed on every rank
in document order, so that 1 and N processes give the same bits.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch

__all__ = ["Group", "TORCHRUN_VARS", "launched_by_torchrun", "process_group"]

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when every variable torchrun sets for its workers is in the environment."""
    return all(os.environ.get(v) for v in TORCHRUN_VARS)


@dataclass
class Group:
    """Where this process stands: ``rank`` of ``world_size`` (1 and 0 without
    torch.distributed), ``local_rank`` (its device index on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def where(self) -> str:
        """' (rank r of n)' in a multi-process run, '' otherwise (for messages)."""
        return f" (rank {self.rank} of {self.world_size})" if self.distributed else ""

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> list:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def sum_ints(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of an int64 tensor (exact)."""
        return self._reduce(values, "SUM")

    def max_ints(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, "MAX")

    def _reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        if values.dtype != torch.int64:
            raise TypeError(f"integer reductions take int64 tensors, got {values.dtype}")
        if not self.distributed:
            return values
        import torch.distributed as dist

        t = values.detach().cpu().clone()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t

    # ------------------------------------------------------------------ point to point
    def send(self, tensor: torch.Tensor, dst: int):
        import torch.distributed as dist

        return dist.isend(tensor.contiguous(), dst)

    def recv(self, shape: Sequence[int], dtype: torch.dtype, src: int,
             device: torch.device | str = "cpu") -> torch.Tensor:
        import torch.distributed as dist

        t = torch.empty(tuple(shape), dtype=dtype, device=device)
        dist.recv(t, src)
        return t


def _backend() -> str:
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _import_dynamo_first() -> None:
    """Import ``torch._dynamo`` before the group exists.

    Imported while a group is initialised (as building a model does, through
    transformers and FSDP), it keeps references to the group that
    ``destroy_process_group`` does not drop: the gloo threads then live on into
    interpreter exit, where their teardown now and then aborts the process ("terminate
    called without an active exception", exit -6) after a run that had finished
    (torch 2.13; measured in ``tests/test_torchrun.py``). Imported first, it holds none.
    Building a model imports it anyway, so this moves the cost, it does not add it."""
    import torch._dynamo  # noqa: F401


@contextmanager
def process_group(distributed: bool | str = "auto", backend: str | None = None,
                  timeout: float | None = None) -> Iterator[Group]:
    """``with process_group() as g:`` the :class:`Group` this process runs in.

    ``distributed="auto"``: the host's initialised default group if there is one, else
    the torchrun environment's (initialised here, destroyed on exit), else one process.
    ``True``: the same, but a process with neither is refused. ``False``: one process,
    whatever the environment says (under torchrun every rank then does all the work).
    ``backend`` (default gloo, or ``cpu:gloo,cuda:nccl`` with CUDA) and ``timeout``
    (seconds) apply only to a group initialised here.
    """
    if distributed not in ("auto", True, False):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
    if distributed is False:
        yield Group()
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield Group(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", 0)))
        return
    if not launched_by_torchrun():
        if distributed is True:
            missing = [v for v in TORCHRUN_VARS if not os.environ.get(v)]
            raise RuntimeError(f"distributed=True, but no process group is initialised and "
                               f"this process was not launched by torchrun (missing "
                               f"{', '.join(missing)}); launch with torchrun --nproc-per-node N")
        yield Group()
        return
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ["LOCAL_RANK"])
    if world == 1:
        yield Group(0, 1, local)
        return
    if not dist.is_available():
        raise RuntimeError("launched by torchrun, but this torch build has no torch.distributed")
    kwargs = {}
    if timeout is not None:
        kwargs["timeout"] = timedelta(seconds=timeout)
    _import_dynamo_first()
    dist.init_process_group(backend or _backend(), init_method="env://", **kwargs)
    try:
        yield Group(rank, world, local, initialized_here=True)
    finally:
        dist.destroy_process_group()
