"""DDP set-up from the environment a rank finds itself in.

Inside a submitit job (local or SLURM), ``submitit.helpers.TorchDistributedEnvironment``
gives rank, world size and the rendezvous: ``MASTER_ADDR`` is the first host of
``SLURM_JOB_NODELIST`` and the port is derived from the job id, so a requeued job
meets on the same port and two jobs on one node do not collide.  Under ``torchrun``
the usual ``RANK``/``WORLD_SIZE`` variables are used; otherwise the run is one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    if os.environ.get("SUBMITIT_EXECUTOR"):
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment()
        return DistEnv(env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        return DistEnv(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", "0")),
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ.get("MASTER_PORT", "29500")),
        )
    return DistEnv()


def init(env: DistEnv, device: torch.device, timeout_s: int) -> None:
    """Join the process group (nccl on GPU, gloo on CPU); a no-op for one process.

    ``timeout_s`` bounds every collective: when a rank dies the others fail within
    it instead of hanging (nccl's watchdog and gloo both honour it).
    """
    if env.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
