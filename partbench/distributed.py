"""Several processes, one run: `torchrun --nproc-per-node N -m partbench run ...`.

Every rank plans the same jobs and takes a contiguous block of each split's samples; the
blocks' arrays are joined, file by file in rank order, into the one cache entry a single
process would have written, so the features are exactly the same. Rank 0 alone claims runs,
scores tasks and writes to the store; the other ranks only encode.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

# Scoring on rank 0 may take long while the other ranks wait at the next collective.
TIMEOUT = dt.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """What torchrun (or any launcher setting RANK and WORLD_SIZE) says this process is."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device_type: str) -> None:
        if self.size <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)

    def share(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if self.size <= 1:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if self.size <= 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def block(self, n: int) -> range:
        """This rank's contiguous share of n items."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)
