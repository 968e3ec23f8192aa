"""A modern decoder in a page (chapter 14): the Llama block, equal to Hugging Face's ``LlamaForCausalLM``.

The GPT-2-style decoder of chapter 13 (``minilib.transformer.LanguageModel``) with four changes that today's
open models (Llama, Mistral, Qwen, Gemma) share:

    h = x + Attention(RMSNorm(x))            pre-norm, with RMSNorm instead of LayerNorm
    y = h + SwiGLU(RMSNorm(h))               a gated feed-forward block instead of GELU
    RMSNorm(x) = g ⊙ x / √(mean(x²) + ε)      no mean subtracted, no bias
    SwiGLU(x) = W_down (SiLU(W_gate x) ⊙ W_up x)
    Attention: grouped-query (n_kv_heads key/value heads), queries and keys rotated by their positions (RoPE,
    ``minilib.rotary``): no position embeddings are added to the input.

No linear layer has a bias. :func:`minilib.deploy.hf_llama.to_hf` and :func:`~minilib.deploy.hf_llama.from_hf` convert
to and from ``transformers.LlamaForCausalLM``; the two give the same logits. The model works with ``minilib.generation``
(``KVCache``, ``generate``, ``speculative_generate``) as chapter 13's does.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from minilib.attention import MultiHeadAttention
from minilib.rotary import RotaryEmbedding, apply_rotary
from minilib.support.data import check_token_ids
from minilib.transformer import padding_mask


@dataclass
class DecoderConfig:
    """Sizes of a Llama-style decoder. The defaults are chapter 14's trained model (vocabulary aside)."""

    vocab_size: int
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 2              # grouped-query attention: n_heads / n_kv_heads query heads share one K/V head
    d_ff: int = 1024                 # SwiGLU's hidden width; Llama takes about 8/3 · d_model
    max_len: int = 256               # the context: positions 0 … max_len - 1
    head_dim: Optional[int] = None   # None: d_model // n_heads
    rope_base: float = 10000.0       # θ_i = rope_base^(-2i/head_dim)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True      # the output head reuses the token embeddings

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), or give head_dim")
            self.head_dim = self.d_model // self.n_heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int (RoPE rotates pairs), got {self.head_dim!r}")


class RMSNorm(nn.Module):
    """RMSNorm(x) = g ⊙ x / √(mean(x²) + ε) over the last dimension (Zhang & Sennrich 2019).

    LayerNorm without the mean and the shift: one statistic instead of two, and as good in practice.
    Computed in float32 whatever the input's dtype, as Llama does.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))   # g
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)   # x / RMS(x)
        return self.weight * normed.to(x.dtype)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLU(nn.Module):
    """SwiGLU(x) = W_down (SiLU(W_gate x) ⊙ W_up x) (Shazeer 2020): one branch gates the other, element by element.

    SiLU(z) = z·σ(z). Three matrices instead of two, so d_ff ≈ 8/3·d_model keeps the parameters of a 4·d_model FFN.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))           # (B, T, d_ff) → (B, T, d)


class LlamaBlock(nn.Module):
    """One decoder layer: x + Attention(RMSNorm(x)), then + SwiGLU(RMSNorm(·))."""

    def __init__(self, config: DecoderConfig, attention=None):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = MultiHeadAttention(config.d_model, config.n_heads, config.head_dim, bias=False,
                                       attention=attention, n_kv_heads=config.n_kv_heads)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x, rotate, attn_mask=None, cache=None):
        """x: (batch, seq, d_model); rotate: turns queries and keys by their positions (RoPE) → (batch, seq, d_model)."""
        x = x + self.attn(self.attn_norm(x), attn_mask=attn_mask, is_causal=True, cache=cache, rotate=rotate)[0]
        return x + self.ffn(self.ffn_norm(x))


class LlamaDecoder(nn.Module):
    """Token embeddings, ``n_layers`` :class:`LlamaBlock` s, a final RMSNorm and the output head.

    ``attention``: the attention function of every layer (default: ``minilib.attention``'s, line by line; pass
    ``torch.nn.functional.scaled_dot_product_attention`` for PyTorch's fused kernel).
    """

    def __init__(self, config: DecoderConfig, attention=None):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base)
        self.layers = nn.ModuleList(LlamaBlock(config, attention) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """input_ids: (batch, seq) → next-token logits (batch, seq, vocab), or (batch, logits_to_keep, vocab).

        attention_mask: (batch, past + seq), 1 for real tokens and 0 for padding, or None. cache (generating,
        chapter 13): a ``minilib.generation.KVCache`` holding the ``cache.length`` positions before ``input_ids``;
        the new tokens take the positions after them, and their keys and values are appended. logits_to_keep:
        the output head runs on the last ``logits_to_keep`` positions only (0: all), as in Hugging Face.
        """
        check_token_ids(input_ids)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int ≥ 0 (0 = every position), got {logits_to_keep!r}")
        start = 0 if cache is None else cache.length
        end = start + input_ids.shape[1]
        if end > self.config.max_len:
            raise ValueError(f"positions {start} … {end - 1} do not fit the context: expected at most "
                             f"max_len={self.config.max_len} positions, got {end}")
        x = self.embed(input_ids)                                             # (B, T, d)
        positions = torch.arange(start, end, device=input_ids.device)
        cos, sin = self.rotary(positions, x.dtype)                            # (T, hs) each
        rotate = functools.partial(apply_rotary, cos=cos, sin=sin)            # the same turns in every layer
        mask = padding_mask(attention_mask)                                   # (B, 1, 1, past + T) or None
        for i, layer in enumerate(self.layers):
            x = layer(x, rotate, mask, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(self.final_norm(x[:, -logits_to_keep:] if logits_to_keep else x))   # (B, T, vocab)
