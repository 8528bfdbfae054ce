"""One run on several processes: what changes when torchrun or `accelerate launch` starts N ranks.

The launchers set RANK / WORLD_SIZE / LOCAL_RANK; every rank runs the same train.py. Scion adds no
launcher and no process group of its own: accelerate's PartialState (the one transformers' Trainer
uses) joins the group the launcher set up, and the Trainer wraps the model in DDP or FSDP2.

What Scion adds on top:
- every rank runs the preflight (config, base, every data row) on its own, deterministically, so a
  bad input fails on all ranks the same way; only rank 0 prints the one `error:` line;
- only rank 0 creates the run directory, takes its lock and writes files; the others get the
  directory (or rank 0's error) through one broadcast;
- the other ranks print nothing on stdout and show no progress bars.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, TypeVar

from train.errors import ScionError

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def launched() -> bool:
    """Started by torchrun / accelerate launch, even with one process (which can still run FSDP2)."""
    return "LOCAL_RANK" in os.environ


_quieted = False


def quiet_other_ranks() -> None:
    """Rank 0 speaks for the job: the other ranks print nothing on stdout and show no progress bars.

    stderr stays open, so a crash on any rank still shows its traceback.
    """
    global _quieted
    if is_main() or _quieted:
        return
    _quieted = True
    import warnings

    sys.stdout = open(os.devnull, "w")
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def join_process_group(device: str) -> None:
    """Join the launcher's process group through accelerate (gloo on the CPU, nccl on GPUs); no-op alone.

    transformers' TrainingArguments later finds this group already initialized and uses it.
    """
    if not is_distributed():
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")


def _group_ready() -> bool:
    import torch.distributed as dist

    return is_distributed() and dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def on_main(action: Callable[[], T]) -> T:
    """Run `action` on rank 0 only and give every rank its result, or raise its ScionError on every rank.

    For what only rank 0 may do (create and lock the run directory) but every rank needs the answer to.
    """
    if not _group_ready():
        return action()
    import torch.distributed as dist

    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", action())
        except ScionError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on at least one (an all_reduce, so all ranks agree)."""
    if not _group_ready():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean(value: float, device) -> float:
    """The mean of `value` over all ranks (each rank's own value when alone)."""
    if not _group_ready():
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(value)], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / world_size()


def full_state_dict(model) -> dict:
    """The whole (unsharded) state dict of an FSDP2 model, on rank 0's CPU; a collective: every rank calls it.

    Saving an FSDP2 PeftModel as it is writes only the calling rank's shards (accelerate PR #4206).
    The other ranks get an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def leave_process_group() -> None:
    """Wait for every rank, then leave the group: rank 0 goes on to evaluate and publish alone."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
