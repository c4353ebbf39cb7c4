"""torchrun DDP in one small object, and a no-op single-process fallback.

`setup()` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun --nproc_per_node N`);
without them it returns a single-process context, so the same trainer code runs
unchanged on a laptop, one GPU or several. Backend: nccl on CUDA, gloo on CPU.
Only rank 0 writes (checkpoints, weights, reports): guard with `ctx.is_main`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = "cpu"
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: Any) -> Any:
        """DistributedDataParallel when world_size > 1, the model itself otherwise."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if str(self.device).startswith("cuda"):
            return DDP(model, device_ids=[self.local_rank], output_device=self.local_rank)
        return DDP(model)

    def sampler(self, dataset: Any, shuffle: bool = True, seed: int = 0) -> Any:
        """DistributedSampler (each rank its shard; call set_epoch each epoch) or None."""
        if not self.distributed:
            return None
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as td

            td.barrier()

    def all_reduce_mean(self, tensor: Any) -> Any:
        """Mean of TENSOR over ranks (in place on a copy; returns it). Identity single-process."""
        if not self.distributed:
            return tensor
        import torch.distributed as td

        out = tensor.detach().clone().float()
        td.all_reduce(out, op=td.ReduceOp.SUM)
        return out / self.world_size

    def cleanup(self) -> None:
        if self.distributed:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group from torchrun's env vars, or return a single-process context."""
    import torch

    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=torch.device("cuda" if want_cuda else "cpu"))
    import torch.distributed as td

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if want_cuda:
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if world > 1 and not td.is_initialized():
        td.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev,
                       backend=backend if world > 1 else None)
