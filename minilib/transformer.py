"""The Transformer in a page (chapter 03): embeddings, encoder, decoder and the heads on top.

    Encoder layer (post-norm, as BERT):  x = LN(x + MHA(x));  x = LN(x + FFN(x))
    Encoder layer (pre-norm, as GPT-2):  x = x + MHA(LN(x));  x = x + FFN(LN(x))
    FFN(x) = W_down · act(W_up · x)

Every class takes an ``attention`` argument that is handed to its :class:`MultiHeadAttention`,
which is how chapters 04–05 plug in sparse and linear attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from minilib.attention import MultiHeadAttention, causal_bias_after_past
from minilib.generation import decode
from minilib.support.data import check_token_ids
from minilib.support.device import model_device, to_device
from minilib.support.train import evaluating

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}
POSITIONS = ("learned", "sinusoidal")


@dataclass
class TransformerConfig:
    """Sizes and choices of a Transformer. The defaults make a small, fast model."""

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    max_len: int = 512
    dropout: float = 0.1
    position: str = "learned"        # "learned" (BERT, GPT) or "sinusoidal" (Vaswani et al.)
    norm_first: bool = False         # False: post-norm (BERT); True: pre-norm (GPT-2)
    n_kv_heads: Optional[int] = None # grouped-query attention (chapter 13); None: one K/V head per head
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 0         # BERT's segment embeddings (2 for BERT), 0 for none
    pad_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None and (not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0
                                            or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={self.n_heads} (or None), "
                             f"got {self.n_kv_heads!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). Not trained."""

    def __init__(self, max_len, d_model):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions):
        """positions: (seq,) long → (seq, d_model)."""
        return self.table[positions]


class Embeddings(nn.Module):
    """token + position (+ segment) embeddings, then LayerNorm and dropout, as in BERT."""

    def __init__(self, config: TransformerConfig, vocab_size: Optional[int] = None):
        super().__init__()
        self.token = nn.Embedding(vocab_size or config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.position = (nn.Embedding(config.max_len, config.d_model) if config.position == "learned"
                         else SinusoidalPositions(config.max_len, config.d_model))
        self.segment = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, token_type_ids=None, start=0):
        """input_ids: (batch, seq) at positions start … start + seq - 1 → (batch, seq, d_model)."""
        end = start + input_ids.shape[1]
        if end > self.position_limit:
            raise ValueError(f"sequence length {end} is longer than max_len={self.position_limit}")
        x = self.token(input_ids) + self.position(torch.arange(start, end, device=input_ids.device))
        if self.segment is not None:
            x = x + self.segment(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        return self.dropout(self.norm(x))

    @property
    def position_limit(self):
        return self.position.num_embeddings if isinstance(self.position, nn.Embedding) else len(self.position.table)


class FeedForward(nn.Module):
    """FFN(x) = W_down · act(W_up · x): each position on its own, d_model → d_ff → d_model."""

    def __init__(self, d_model, d_ff, activation="gelu"):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.activation = activation

    def forward(self, x):
        return self.down(ACTIVATIONS[self.activation](self.up(x)))


def sublayer_connection(x, sublayer, norm, dropout, norm_first):
    """One residual connection around ``sublayer`` (the Annotated Transformer's SublayerConnection).

        pre-norm (GPT-2):   x + dropout(sublayer(LN(x)))
        post-norm (BERT):   LN(x + dropout(sublayer(x)))

    x: (batch, seq, d_model); sublayer maps (batch, seq, d_model) to the same shape.
    """
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each wrapped in a residual connection and a LayerNorm."""

    def __init__(self, config: TransformerConfig, attention=None):
        super().__init__()
        self.attn = MultiHeadAttention(config.d_model, config.n_heads, dropout=config.dropout, attention=attention,
                                       n_kv_heads=config.n_kv_heads)
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.activation)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x, attn_mask=None, is_causal=False, head_mask=None, output_attentions=False, cache=None):
        """x: (batch, seq, d_model) → (x, attention weights (batch, heads, seq, seq) or None).

        cache: this layer's slot of a KV cache while generating (see :class:`MultiHeadAttention`).
        """
        weights = None

        def attend(h):
            nonlocal weights
            attended, weights = self.attn(h, attn_mask=attn_mask, is_causal=is_causal, head_mask=head_mask,
                                          output_attentions=output_attentions, cache=cache)
            return attended

        x = sublayer_connection(x, attend, self.attn_norm, self.dropout, self.norm_first)
        x = sublayer_connection(x, self.ffn, self.ffn_norm, self.dropout, self.norm_first)
        return x, weights


class EncoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor              # (batch, seq, d_model)
    hidden_states: Optional[tuple] = None         # n_layers + 1 tensors, embeddings first
    attentions: Optional[tuple] = None            # n_layers tensors (batch, heads, seq, seq)


def padding_mask(attention_mask):
    """(batch, seq) with 1 = real token → bool (batch, 1, 1, seq), True = may attend."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (batch, seq), got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


class Encoder(nn.Module):
    """Embeddings and a stack of encoder layers: BERT's body (and MiniLM's)."""

    def __init__(self, config: TransformerConfig, attention=None):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, attention) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, head_mask=None,
                output_hidden_states=False, output_attentions=False):
        """input_ids, attention_mask: (batch, seq); head_mask: (n_layers, n_heads). → EncoderOutput."""
        check_token_ids(input_ids)
        mask = padding_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        hidden_states, attentions = [x], []
        for i, layer in enumerate(self.layers):
            x, weights = layer(x, attn_mask=mask, head_mask=None if head_mask is None else head_mask[i],
                               output_attentions=output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        if self.final_norm is not None:
            x = hidden_states[-1] = self.final_norm(x)
        return EncoderOutput(x, tuple(hidden_states) if output_hidden_states else None,
                             tuple(attentions) if output_attentions else None)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder's output, then feed-forward."""

    def __init__(self, config: TransformerConfig, attention=None):
        super().__init__()
        self.self_attn = MultiHeadAttention(config.d_model, config.n_heads, dropout=config.dropout, attention=attention)
        self.self_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = MultiHeadAttention(config.d_model, config.n_heads, dropout=config.dropout)
        self.cross_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.activation)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x, memory, memory_mask=None):
        """x: (batch, tgt_seq, d_model), memory: (batch, src_seq, d_model) → (batch, tgt_seq, d_model)."""
        sublayers = (
            (self.self_norm, lambda h: self.self_attn(h, is_causal=True)[0]),        # sees earlier targets only
            (self.cross_norm, lambda h: self.cross_attn(h, memory, attn_mask=memory_mask)[0]),
            (self.ffn_norm, self.ffn),
        )
        for norm, sublayer in sublayers:
            x = sublayer_connection(x, sublayer, norm, self.dropout, self.norm_first)
        return x


class Decoder(nn.Module):
    """Target embeddings and a stack of decoder layers."""

    def __init__(self, config: TransformerConfig, vocab_size: Optional[int] = None, attention=None):
        super().__init__()
        self.embeddings = Embeddings(config, vocab_size)
        self.layers = nn.ModuleList(DecoderLayer(config, attention) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None

    def forward(self, tgt_ids, memory, memory_mask=None):
        x = self.embeddings(tgt_ids)
        for layer in self.layers:
            x = layer(x, memory, memory_mask)
        return x if self.final_norm is None else self.final_norm(x)


class EncoderDecoder(nn.Module):
    """The original Transformer (Vaswani et al. 2017): encode the source, decode the target."""

    def __init__(self, config: TransformerConfig, tgt_vocab_size: Optional[int] = None, attention=None):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, attention)
        self.decoder = Decoder(config, tgt_vocab_size, attention)
        self.lm_head = nn.Linear(config.d_model, tgt_vocab_size or config.vocab_size, bias=False)
        self.lm_head.weight = self.decoder.embeddings.token.weight          # tied input/output embeddings

    def forward(self, src_ids, tgt_ids, src_mask=None):
        """src_ids: (batch, src_seq), tgt_ids: (batch, tgt_seq), src_mask: (batch, src_seq) → logits (batch, tgt_seq, vocab)."""
        memory = self.encoder(src_ids, attention_mask=src_mask).last_hidden_state
        return self.lm_head(self.decoder(tgt_ids, memory, padding_mask(src_mask)))

    @torch.no_grad()
    def generate(self, src_ids, max_new_tokens, bos_id, eos_id, src_mask=None):
        """Greedy decoding: (batch, src_seq) → (batch, ≤ max_new_tokens), stopping at eos (on the model's device).

        Runs in eval mode (no dropout), then gives the model its own mode back. The loop is chapter 13's
        :func:`minilib.generation.decode`; without a cache, each step runs the decoder over every target token.
        """
        src_ids, src_mask = to_device((src_ids, src_mask), model_device(self))
        with evaluating(self):
            memory = self.encoder(src_ids, attention_mask=src_mask).last_hidden_state
            start = torch.full((src_ids.shape[0], 1), bos_id, dtype=torch.long, device=src_ids.device)
            step = lambda tokens: self.lm_head(self.decoder(tokens, memory, padding_mask(src_mask))[:, -1])  # noqa: E731
            return decode(step, start, max_new_tokens, eos_id=eos_id)[:, 1:]


class LanguageModel(nn.Module):
    """A decoder-only (GPT-style) causal language model: layers that see only the past.

    GPT-2 uses pre-norm layers (``config.norm_first=True``); the config's default is BERT's post-norm.
    """

    def __init__(self, config: TransformerConfig, attention=None):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, attention) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embeddings.token.weight

    def forward(self, input_ids, cache=None, logits_to_keep: int = 0):
        """input_ids: (batch, seq) → next-token logits (batch, seq, vocab), or (batch, logits_to_keep, vocab).

        cache (generating, chapter 13): a ``minilib.generation.KVCache`` holding the keys and values of
        the ``cache.length`` tokens before ``input_ids``; the new tokens' are appended to it.
        logits_to_keep: the output head runs on the last ``logits_to_keep`` positions only (0: all), as in
        Hugging Face; a prefill needs the logits of its last position alone, not (batch, prompt, vocab).
        """
        check_token_ids(input_ids)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int ≥ 0 (0 = every position), got {logits_to_keep!r}")
        if cache is not None and cache.n_layers != len(self.layers):
            raise ValueError(f"the cache was built for {cache.n_layers} layers; this model has {len(self.layers)}")
        start = 0 if cache is None else cache.length
        x = self.embeddings(input_ids, start=start)
        if cache is None:
            past_mask = None
        else:   # new tokens after a cached past: causality is offset by the past, one mask for every layer
            past_mask = causal_bias_after_past(input_ids.shape[1], start + input_ids.shape[1], x.dtype, x.device)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, attn_mask=past_mask, is_causal=cache is None, cache=None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.lm_head(self.final_norm(x[:, -logits_to_keep:] if logits_to_keep else x))


def mean_pool(hidden, attention_mask=None):
    """Average of the real tokens' vectors: (batch, seq, d), (batch, seq) → (batch, d)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class Classifier(nn.Module):
    """An encoder with a linear head on the pooled sentence vector: logits (batch, n_classes)."""

    def __init__(self, encoder: Encoder, n_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.d_model, n_classes)

    def forward(self, input_ids, attention_mask=None, **encoder_kwargs):
        hidden = self.encoder(input_ids, attention_mask=attention_mask, **encoder_kwargs).last_hidden_state
        pooled = mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]
        return self.head(self.dropout(pooled))
