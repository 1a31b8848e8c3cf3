"""Distribution: torchrun (one node or many, c10d rendezvous, elastic restarts) and the handing out of units.

Units are handed out dynamically through the torch.distributed store: every rank knows the same list of unfinished
units; the next one to take is an atomic counter in the store (`store.add`), so a faster node takes more units, a
rank that joins late or is slowed down takes fewer, and no unit is taken twice. A static split (unit i to rank
i mod world) would make the slowest rank's share the job's time, and a restarted group with another world size would
split differently anyway; since every unit's output depends only on the unit, which rank takes it does not change a
single number. Each restart of the group (torchrun --max-restarts, or a rerun with any launcher and world size)
verifies the finished units, lists the rest and hands those out under a fresh counter.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import uuid
from collections.abc import Iterator

import torch

from .job import CorpusError

TIMEOUT = datetime.timedelta(hours=12)  # a rank that finishes early waits this long at the end for the others


@dataclasses.dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    store: object = None  # the process group's store (world > 1)
    created: bool = False  # this call initialised the process group (and destroys it at the end)

    def gather(self, payload) -> list:
        """Every rank's payload (any picklable object), on every rank; an Exception from one rank is raised on all."""
        if self.world == 1:
            gathered = [payload]
        else:
            import torch.distributed as dist

            gathered = [None] * self.world
            dist.all_gather_object(gathered, payload)
        for rank, p in enumerate(gathered):
            if isinstance(p, BaseException):
                if isinstance(p, CorpusError) and self.world == 1:
                    raise p
                raise CorpusError(str(p) if self.world == 1 else f"rank {rank}: {p}")
        return gathered

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def init(device_type_guess: str) -> Context:
    """The torchrun environment (WORLD_SIZE > 1): a process group (NCCL on CUDA, gloo on CPU) on the rendezvous
    store, which the unit counter also uses. An already initialised group is used as it is."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        from torch.distributed import distributed_c10d

        return Context(dist.get_rank(), dist.get_world_size(), local, distributed_c10d._get_default_store())
    if world == 1:
        return Context()
    store, rank, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
    store.set_timeout(TIMEOUT)
    # torchrun's workers share the agent's store across elastic restarts: without a prefix per attempt, a restarted
    # group could read the process group keys (peer addresses) of the group that died, and hang connecting to it
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"siglip_fast.embed/attempt_{attempt}", store)
    backend = "nccl" if device_type_guess == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    return Context(rank, world, local, store, created=True)


def handout(ctx: Context, todo: list[int], token: str) -> Iterator[int]:
    """The units this rank embeds, taken one at a time as it needs them: in order from one process; from the store's
    counter `token` (fresh for each run of the group) under torchrun."""
    if ctx.world == 1 or ctx.store is None:
        yield from todo
        return
    key = f"siglip_fast.embed/{token}/next"
    while True:
        i = ctx.store.add(key, 1) - 1
        if i >= len(todo):
            return
        yield todo[i]


def new_token() -> str:
    return uuid.uuid4().hex


def device_type_guess(device_arg: str | None) -> str:
    if device_arg is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(device_arg).startswith("cuda") else "cpu"
