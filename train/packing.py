"""Padding-free micro-batches and best-fit packing of whole examples into rows.

Padding-free: TRL's collator concatenates a micro-batch into one row with no pad tokens and
position ids restarting per example (train/attention.py keeps the examples apart). Packing
(`trainer.packing=true`) bins whole examples into rows of `data.max_length` tokens, best-fit
decreasing, when constant-size steps are wanted. TRL packs nothing itself here: the data is
tokenized and labelled by train/data.py.
"""

from __future__ import annotations

import bisect
import random
from typing import Iterable, Optional


def best_fit_bins(lengths: list[int], capacity: int, seed: Optional[int] = None) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins whose sums stay <= capacity.

    Longest first; each goes into the open bin with the least room that still fits it. Open bins are
    kept by remaining room (at most `capacity` distinct values), so each placement is a bisect.
    A seed shuffles the order of equal lengths, so ties do not follow the data file's order.
    Empty examples (no tokens) go in no bin.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than the row budget {capacity} (longest {max(too_long)})")
    order = list(range(len(lengths)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the (shuffled) order
    bins: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct remaining room of open bins
    by_room: dict[int, list[int]] = {}  # room -> bin numbers with that room
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        at = bisect.bisect_left(rooms, n)
        if at < len(rooms):
            room = rooms[at]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = room - n
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(b)
    return bins


def pack_examples(examples: Iterable[dict], max_tokens: int, seed: Optional[int] = None) -> list[dict]:
    """Whole examples (input_ids, labels) packed best-fit into rows of at most `max_tokens` tokens.

    Each row has input_ids, labels and seq_lengths, the format TRL's padding-free collator reads: it
    restarts position_ids at every example from seq_lengths. No example is split or dropped; an example
    longer than max_tokens is an error (train/data.py truncates to data.max_length first).
    """
    examples = list(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    rows = []
    for bin_ in best_fit_bins(lengths, max_tokens, seed):
        rows.append({
            "input_ids": [t for i in bin_ for t in examples[i]["input_ids"]],
            "labels": [t for i in bin_ for t in examples[i]["labels"]],
            "seq_lengths": [lengths[i] for i in bin_],
        })
    return rows


def pack_dataset(dataset, max_tokens: int, seed: Optional[int] = None):
    """`pack_examples` for a datasets.Dataset with input_ids/labels columns; returns a new Dataset."""
    import datasets

    rows = pack_examples(dataset.select_columns(["input_ids", "labels"]), max_tokens, seed)
    return datasets.Dataset.from_list(rows)


def packing_efficiency(rows: list[dict], max_tokens: int) -> float:
    """Real tokens / row capacity: how full the packed rows are (1.0 = no room left anywhere)."""
    return sum(len(r["input_ids"]) for r in rows) / max(1, len(rows) * max_tokens)


def sft_speed_kwargs(device: str, packing: bool, max_length: Optional[int]) -> dict:
    """SFTConfig keyword arguments for the fast path (all exist in TRL 1.16's SFTConfig).

    Always padding-free: a micro-batch becomes one row with no pad tokens, position ids restarting per
    example, and cu_seq_lens for the varlen kernels. The examples in each step are unchanged, so the
    loss and gradients equal the padded run's (tests/test_speed.py).

    packing=True: the rows given to the trainer were packed by `pack_dataset(train, max_length)`;
    `packing=True` tells TRL they are packed rows (it keeps `seq_lengths`, and does not warn about a
    padding-free batch size of 1). TRL packs nothing itself while `skip_prepare_dataset` is set.
    packing=False: max_length must be None, since TRL refuses padding_free with a max_length it cannot
    enforce (the data is truncated by train/data.py already).
    `device` is unused today: the same arguments are right on the CPU (sdpa's block-diagonal mask) and
    on CUDA (varlen kernels); it is kept so a device-specific option has a place.
    """
    del device
    if packing:
        if not max_length:
            raise ValueError("packing needs the row length in tokens (max_length)")
        return {"padding_free": True, "packing": True, "packing_strategy": "bfd", "max_length": max_length}
    return {"padding_free": True, "packing": False, "max_length": None}
