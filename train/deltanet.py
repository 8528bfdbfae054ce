"""Keep packed examples apart in Gated DeltaNet (linear attention) layers, as attention already is.

A padding-free or packed row holds several examples one after another. Attention keeps them apart
through the restarting position ids (sdpa's block-diagonal mask) or `cu_seq_lens` (varlen kernels),
train/attention.py. A Gated DeltaNet layer (Qwen3.5) carries two kinds of state along the sequence: a
short causal convolution (width 4) and the recurrent state of the delta rule. Both must restart at
every example boundary, or an example would see the end of the one before it.

transformers 5.24's Qwen3.5 layer does not do that on every path: its torch fallback convolution and
delta rule ignore `cu_seq_lens` altogether, and with flash-linear-attention installed only the delta
rule reads them (the convolution comes from `causal-conv1d`, which takes no `cu_seqlens`). So Scion
wraps each Gated DeltaNet layer's forward:

- on a CUDA device with `fla-core` installed: flash-linear-attention's varlen causal convolution and
  chunked gated delta rule, both given `cu_seqlens` (one kernel launch per layer for the whole row);
- elsewhere: the layer's own forward run on each example's slice of the row, then concatenated,
  which is exactly running each example alone.

Boundaries come from `cu_seq_lens_q` (TRL's padding-free collator sends them), or else from the
position ids restarting at 0, which a pre-hook on the text model turns into `cu_seq_lens_q`.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

DELTANET_CLASSES = ("Qwen3_5GatedDeltaNet",)


def deltanet_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__ in DELTANET_CLASSES]


def linear_attention_layer_count(config) -> int:
    """How many decoder layers of `config` (a text config) are linear attention."""
    return sum(1 for t in (getattr(config, "layer_types", None) or []) if t == "linear_attention")


@functools.lru_cache(maxsize=1)
def fla_kernels():
    """(varlen causal conv1d, chunked gated delta rule) from flash-linear-attention, or None."""
    try:
        from fla.modules.causal_conv1d.ops import causal_conv1d
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception:  # not installed, or no Triton on this machine
        return None
    return causal_conv1d, chunk_gated_delta_rule


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> Optional[torch.Tensor]:
    """Example boundaries of a single packed row whose position ids restart at 0, or None."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if len(starts) <= 1:
        return None
    end = torch.tensor([position_ids.shape[1]], device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def _boundaries_pre_hook(module, args, kwargs):
    """Text model pre-hook for a packed row: give the layers `cu_seq_lens_q` when only restarting position
    ids mark the examples, and build no cache (a cache of a packed row would mix its examples' states)."""
    if kwargs.get("cache") is not None:
        return args, kwargs
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = cu_seqlens_from_position_ids(kwargs.get("position_ids"))
        if cu is None:
            return args, kwargs
        kwargs = {**kwargs, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
    if len(cu) > 2:
        kwargs = {**kwargs, "use_cache": False}
    return args, kwargs


def _segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu.tolist()
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _fla_varlen_forward(layer, hidden_states: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """The Gated DeltaNet forward of transformers' Qwen3.5 layer, with fla's varlen kernels (batch 1)."""
    import torch.nn.functional as F

    conv1d, gated_delta_rule = fla_kernels()
    _, seq_len, _ = hidden_states.shape
    mixed_qkv = layer.in_proj_qkv(hidden_states)
    mixed_qkv, _ = conv1d(x=mixed_qkv, weight=layer.conv1d.weight.squeeze(1), bias=layer.conv1d.bias,
                          activation=layer.activation, cu_seqlens=cu.long())
    query, key, value = torch.split(mixed_qkv, [layer.key_dim, layer.key_dim, layer.value_dim], dim=-1)
    query = query.reshape(1, seq_len, -1, layer.head_k_dim)
    key = key.reshape(1, seq_len, -1, layer.head_k_dim)
    value = value.reshape(1, seq_len, -1, layer.head_v_dim)
    beta = layer.in_proj_b(hidden_states).sigmoid()
    g = -layer.A_log.float().exp() * F.softplus(layer.in_proj_a(hidden_states).float() + layer.dt_bias)
    core, _ = gated_delta_rule(query, key, value, g=g, beta=beta, use_qk_l2norm_in_kernel=True, cu_seqlens=cu.long())
    z = layer.in_proj_z(hidden_states).reshape(-1, layer.head_v_dim)
    core = layer.norm(core.reshape(-1, layer.head_v_dim), z).reshape(1, seq_len, -1)
    return layer.out_proj(core)


def _wrap(layer) -> None:
    original = layer.forward

    @functools.wraps(original)
    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None or cache is not None or hidden_states.shape[0] != 1 or len(cu) <= 2:
            return original(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        if hidden_states.is_cuda and fla_kernels() is not None:
            return _fla_varlen_forward(layer, hidden_states, cu)
        # One example at a time: the layer's own forward on each slice, with nothing carried over.
        pieces = [original(hidden_states[:, a:b], cache=None, attention_mask=None) for a, b in _segments(cu)]
        return torch.cat(pieces, dim=1)

    layer.forward = forward
    layer._scion_keeps_examples_apart = True


def keep_examples_apart(model) -> Optional[str]:
    """Make every Gated DeltaNet layer of `model` restart at example boundaries.

    Returns None when the model has no linear-attention layers or all of them are handled, else the
    reason packing is unsafe for it (then the caller turns packing and padding-free off).
    """
    config = getattr(model, "config", None)
    expected = linear_attention_layer_count(getattr(config, "text_config", config))
    layers = deltanet_layers(model)
    if expected == 0 and not layers:
        return None
    if len(layers) != expected:
        return (f"found {len(layers)} Gated DeltaNet layers of the {expected} linear-attention layers its config "
                "names, so their state could not be restarted at example boundaries")
    for layer in layers:
        if not getattr(layer, "_scion_keeps_examples_apart", False):
            _wrap(layer)
    for module in model.modules():
        if type(module).__name__ == "Qwen3_5TextModel" and not getattr(module, "_scion_boundary_hook", False):
            module.register_forward_pre_hook(_boundaries_pre_hook, with_kwargs=True)
            module._scion_boundary_hook = True
    return None
