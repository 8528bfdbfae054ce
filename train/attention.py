"""Attention that keeps packed examples apart, picked at run time from what is installed.

TRL's collator with `padding_free=True` concatenates a micro-batch into one row, restarts
`position_ids` at every example and sends `cu_seq_lens_q/k` and `max_length_q/k`. With `sdpa`/`eager`,
transformers sees the restarting `position_ids` (with no attention_mask and no cache) and builds a
block-diagonal causal mask: correct, but an O(T^2) tensor per row. `flash_attention_2/3` take the
`cu_seq_lens` path instead. Where flash-attn is not installed, `scion_varlen` (registered here) calls
PyTorch's own FlashAttention for variable lengths, `torch.nn.attention.varlen.varlen_attn`, and never
builds a mask.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

VARLEN_ATTENTION = "scion_varlen"


@lru_cache(maxsize=1)
def varlen_kernel():
    """torch's varlen_attn and the names of its parameters, or (None, ()) where this torch lacks it.

    The signature changed between releases (torch 2.11: causal only as window_size=(-1, 0) and no GQA
    flag, though the kernel takes fewer K/V heads; 2.13 adds enable_gqa), so callers look the parameters up instead of assuming them.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def pick_attention(device: str, dtype=None) -> str:
    """The attn_implementation for training on `device`, from what is installed.

    CUDA in bf16/fp16: FlashAttention 3, then 2 (their varlen kernels read cu_seq_lens), then torch's own
    varlen kernel through `scion_varlen`, then sdpa. fp32 and the CPU get sdpa: FlashAttention kernels
    take half precision only, and sdpa's block-diagonal mask is correct everywhere.
    `flex_attention` is not picked: transformers builds its packed BlockMask fine, but its compilation did
    not finish the first step inside 150 s on the H100 probe.
    """
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "sdpa"
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if is_flash_attn_3_available() and torch.cuda.get_device_capability()[0] == 9:  # FA3 is Hopper-only
        return "flash_attention_3"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    if varlen_kernel()[0] is not None:
        return register_varlen_attention()
    return "sdpa"


def register_varlen_attention() -> str:
    """Register `scion_varlen` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_attention_mask)
    return VARLEN_ATTENTION


def varlen_attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None,
                          local_size=None, **kwargs):
    """The mask builder for `scion_varlen`: none at all for training rows, sdpa's mask otherwise.

    A training row (no padding mask, no cache, no sliding window) needs no mask: the attention reads the
    example boundaries from cu_seq_lens / position_ids. Padded batches and generation (a 2D mask, a
    cache offset) get exactly the mask sdpa would get, and the attention then runs sdpa with it.
    """
    from transformers.masking_utils import sdpa_mask

    no_offset = isinstance(q_offset, int) and q_offset == 0 and isinstance(kv_offset, int) and kv_offset == 0
    if attention_mask is None and local_size is None and no_offset and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size, **kwargs)


def cu_seqlens_from_position_ids(position_ids):
    """(cu_seqlens int32, max length) of one packed row whose position ids restart at 0 per example."""
    import torch

    pos = position_ids.reshape(-1)
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:  # a row that does not start at 0 is one continuing sequence
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                             is_causal=None, cu_seq_lens_q=None, max_length_q=None, position_ids=None, **kwargs):
    """Causal attention over one packed row (1, H, T, D), each example attending only to itself.

    Uses cu_seq_lens from TRL's padding-free collator, else the restarts in position_ids. Anything
    that is not a single packed row (a padded batch, decoding with a cache) goes to transformers'
    sdpa unchanged, with the mask `varlen_attention_mask` left for it.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
    if not packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_ids=position_ids, **kwargs)
    if cu_seq_lens_q is None:
        if position_ids is None:
            return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                          is_causal=is_causal, **kwargs)
        cu_seq_lens_q, max_length_q = cu_seqlens_from_position_ids(position_ids)
    if max_length_q is None:
        max_length_q = int(cu_seq_lens_q.diff().max())
    # (1, H, T, D) -> (T, H, D), the layout of the varlen kernels
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    kernel, params = varlen_kernel()
    if kernel is not None and q.is_cuda and q.dtype in _half_dtypes() and dropout == 0.0:
        out = _varlen_cuda(kernel, params, q, k, v, cu_seq_lens_q.to(q.device, non_blocking=True), max_length_q, scaling)
    else:
        out = _varlen_by_example(q, k, v, cu_seq_lens_q, scaling, dropout)
    return out.unsqueeze(0), None


def _half_dtypes():
    import torch

    return (torch.bfloat16, torch.float16)


def _varlen_cuda(kernel, params, q, k, v, cu, max_len, scaling):
    """One FlashAttention call for the whole row; GQA and causality spelt as this torch names them.

    K/V go in with their own (fewer) heads: FlashAttention's varlen kernel shares each K/V head among
    its group of query heads natively whenever the query heads are a multiple of them. torch 2.13's
    `enable_gqa` is only a Python check in front of that same kernel, and torch 2.11 has no check at
    all. Repeating K/V instead would save 8x (Qwen2.5) or 4x (Qwen3) K/V copies for the backward pass.
    """
    extra: dict[str, Any] = {}
    if q.shape[1] != k.shape[1]:
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
    if "is_causal" in params:
        extra["is_causal"] = True
    else:
        extra["window_size"] = (-1, 0)  # (left, right): everything before, nothing after
    return kernel(q, k, v, cu, cu, max_len, max_len, scale=scaling, **extra)


def _varlen_by_example(q, k, v, cu, scaling, dropout):
    """The exact fallback (CPU, fp32, no varlen kernel): causal sdpa on each example's slice.

    O(sum of L_i^2) work and no T x T mask; one host sync for the boundaries.
    """
    import torch
    import torch.nn.functional as F

    bounds = cu.tolist()
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)
