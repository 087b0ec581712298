"""Process-group setup and model wrapping for single-process, DDP and FSDP2 training.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 we join a process group
(nccl on GPU, gloo on CPU). `wrap_model` returns the module to call forward on:
  - world 1: the model itself;
  - ddp: `DistributedDataParallel` (gradients averaged over ranks in backward);
  - fsdp: the model sharded in place with `torch.distributed.fsdp.fully_shard` (FSDP2), one
    unit per transformer block (`model.fsdp_units()` when the model defines it, else the
    classes in `_no_split_modules` of Hugging Face sub-models; bf16 parameters in compute when
    mixed precision is on), then the root (parameters in their own dtype).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    is_main = property(lambda self: self.rank == 0)
    distributed = property(lambda self: self.world_size > 1)


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when there is more than one process; pick the device."""
    from latentvla.utils.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        if world > 1 or dev.index is None:  # under torchrun each process takes its local rank's GPU
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if use_cuda else {}))
    return DistInfo(rank, world, local_rank, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _multi() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(values: torch.Tensor, op) -> torch.Tensor:
    if _multi():
        values = values.clone()
        dist.all_reduce(values, op=op)
    return values


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity without a process group)."""
    return _all_reduce(values, dist.ReduceOp.SUM) / dist.get_world_size() if _multi() else values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity without a process group)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks (identity without a process group)."""
    return _all_reduce(value, dist.ReduceOp.MIN)


def all_gather_object(obj: Any) -> list[Any]:
    if _multi():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_(*tensors: torch.Tensor, src: int = 0) -> None:
    """Overwrite `tensors` on every rank with rank `src`'s values (no-op without a process group)."""
    if _multi():
        for t in tensors:
            dist.broadcast(t, src=src)


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    units = getattr(model, "fsdp_units", None)
    if callable(units):
        return list(units())
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    return found[::-1]  # children before the blocks that contain them


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp", mixed_bf16: bool = False,
               find_unused_parameters: bool = False) -> nn.Module:
    """The module to run forward/backward on (see module doc)."""
    if not info.distributed:
        return model
    if strategy == "fsdp":
        import warnings

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Our forward returns a dict of fresh tensors and never edits them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if mixed_bf16:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        units = [u for u in _fsdp_units(model) if any(True for _ in u.parameters())]
        for unit in units:
            fully_shard(unit, **kwargs)
        # The root unit (embeddings, action head, projectors, strategy: modules whose methods are
        # also called outside forward) keeps its parameters' own dtypes, as in single-process
        # training; only the transformer blocks compute in bf16.
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    # Every trainable parameter of the VLA takes part in every forward, for every variant (pinned by
    # tests/test_vla_model.py), so DDP skips the per-step graph walk find_unused_parameters costs.
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


@contextlib.contextmanager
def no_grad_sync(wrapped: nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches (DDP no_sync / FSDP2)."""
    if not skip:
        yield
        return
    if hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
        return
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
        return
    yield
