"""Lighter architectures (chapter 09): the same encoder, made cheaper by design rather than after training.

Each variant is a small change to :class:`minilib.transformer.Encoder`, so every chapter's tools
(the classifier head, training, benchmarks, distillation, quantization) work on all of them:

- fewer layers, or narrower ones (smaller d_model and d_ff);
- a bottleneck around each layer, as in MobileBERT (2020): the layer runs at a small width inside a
  wide residual stream;
- grouped linear layers with a channel shuffle in the FFN: the NLP analogue of ShuffleNet (2018)
  and of MobileNet's depthwise-separable convolutions: g groups cost 1/g of the weights and FLOPs;
- cross-layer parameter sharing and factorised embeddings, as in ALBERT (2019): one layer's weights
  used n times;
- layer drop at inference (LayerDrop, Fan et al. 2019): skip layers of a trained model;
- a trimmed vocabulary: keep only the embedding rows of the tokens a task uses (the rows of the
  other 30 000 WordPiece tokens are most of a small model's weights and are never read).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from minilib.transformer import ACTIVATIONS, Encoder, EncoderLayer, TransformerConfig


def fewer_layers(config: TransformerConfig, n_layers: int) -> Encoder:
    """An encoder with ``n_layers`` layers instead of ``config.n_layers``."""
    return Encoder(dataclasses.replace(config, n_layers=n_layers))


def narrower(config: TransformerConfig, d_model: int, n_heads: int | None = None, d_ff: int | None = None) -> Encoder:
    """An encoder of width ``d_model`` (d_ff defaults to 4·d_model, heads to config's count)."""
    return Encoder(dataclasses.replace(config, d_model=d_model, n_heads=n_heads or config.n_heads,
                                       d_ff=d_ff or 4 * d_model))


class GroupedLinear(nn.Module):
    """A linear layer split into ``groups`` independent blocks: y_g = W_g x_g + b_g.

    Weights: groups × (d_in/groups) × (d_out/groups) = d_in·d_out / groups, a block-diagonal
    matrix stored without its zeros. x: (..., d_in) → (..., d_out).
    """

    def __init__(self, d_in: int, d_out: int, groups: int):
        super().__init__()
        if groups < 1 or d_in % groups or d_out % groups:
            raise ValueError(f"groups ({groups}) must divide both d_in ({d_in}) and d_out ({d_out})")
        self.in_features, self.out_features, self.groups = d_in, d_out, groups
        self.weight = nn.Parameter(torch.empty(groups, d_in // groups, d_out // groups))
        self.bias = nn.Parameter(torch.zeros(d_out))
        bound = (d_in // groups) ** -0.5                                   # nn.Linear's scale: 1/√fan_in
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x):
        grouped = x.reshape(*x.shape[:-1], self.groups, self.in_features // self.groups)
        out = torch.einsum("...gi,gio->...go", grouped, self.weight)      # one small matmul per group
        return out.reshape(*x.shape[:-1], self.out_features) + self.bias


def channel_shuffle(x, groups: int):
    """Interleave channels across groups (ShuffleNet): (..., g·c) viewed as (g, c) → (c, g) → flat.

    Without it, group k of the next grouped layer would only ever see group k of this one.
    """
    *lead, channels = x.shape
    return x.reshape(*lead, groups, channels // groups).transpose(-1, -2).reshape(*lead, channels)


class GroupedFeedForward(nn.Module):
    """FFN(x) = W_down · shuffle(act(W_up · x)) with grouped W_up and W_down: 1/groups of the cost."""

    def __init__(self, d_model: int, d_ff: int, groups: int, activation: str = "gelu"):
        super().__init__()
        self.up = GroupedLinear(d_model, d_ff, groups)
        self.down = GroupedLinear(d_ff, d_model, groups)
        self.groups, self.activation = groups, activation

    def forward(self, x):
        return self.down(channel_shuffle(ACTIVATIONS[self.activation](self.up(x)), self.groups))


def grouped(config: TransformerConfig, groups: int) -> Encoder:
    """An encoder whose feed-forward layers are grouped linears with a channel shuffle."""
    encoder = Encoder(config)
    for layer in encoder.layers:
        layer.ffn = GroupedFeedForward(config.d_model, config.d_ff, groups, config.activation)
    return encoder


class BottleneckLayer(nn.Module):
    """MobileBERT's bottleneck: x + up(layer(down(x))), then LayerNorm, with the layer at width d_b.

    x: (batch, seq, d_model) → (x, attention weights or None), the same interface as EncoderLayer.
    """

    def __init__(self, config: TransformerConfig, d_bottleneck: int, d_ff: int, n_heads: int):
        super().__init__()
        inner = dataclasses.replace(config, d_model=d_bottleneck, d_ff=d_ff, n_heads=n_heads)
        self.down = nn.Linear(config.d_model, d_bottleneck)
        self.layer = EncoderLayer(inner)
        self.up = nn.Linear(d_bottleneck, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x, attn_mask=None, is_causal=False, head_mask=None, output_attentions=False):
        inner, weights = self.layer(self.down(x), attn_mask, is_causal, head_mask, output_attentions)
        return self.norm(x + self.up(inner)), weights


def bottleneck(config: TransformerConfig, d_bottleneck: int, d_ff: int | None = None,
               n_heads: int | None = None) -> Encoder:
    """An encoder whose layers run at width ``d_bottleneck`` inside a d_model-wide residual stream."""
    encoder = Encoder(config)
    encoder.layers = nn.ModuleList(
        BottleneckLayer(config, d_bottleneck, d_ff or 4 * d_bottleneck, n_heads or config.n_heads)
        for _ in range(config.n_layers))
    return encoder


class FactorisedEmbedding(nn.Module):
    """ALBERT's embedding: vocab → e → d_model, V·e + e·d parameters instead of V·d."""

    def __init__(self, vocab_size: int, embedding_dim: int, d_model: int, pad_id: int = 0):
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.project = nn.Linear(embedding_dim, d_model, bias=False)

    def forward(self, input_ids):
        return self.project(self.lookup(input_ids))


def shared_layers(config: TransformerConfig, embedding_dim: int | None = None) -> Encoder:
    """ALBERT: one layer's weights applied config.n_layers times; optionally factorised embeddings.

    Parameters shrink n_layers-fold; the FLOPs (and so the time) do not: every layer still runs.
    """
    encoder = Encoder(config)
    encoder.layers = nn.ModuleList([encoder.layers[0]] * config.n_layers)   # the same module n times
    if embedding_dim is not None:
        encoder.embeddings.token = FactorisedEmbedding(config.vocab_size, embedding_dim, config.d_model, config.pad_id)
    return encoder


def drop_layers(encoder: Encoder, keep: list[int]) -> Encoder:
    """A shallower encoder that runs only the layers in ``keep`` (weights shared, not copied)."""
    n_layers = len(encoder.layers)
    if not keep or any(not 0 <= i < n_layers for i in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"keep must list distinct layer indices in 0..{n_layers - 1}, got {keep}")
    shallow = Encoder(dataclasses.replace(encoder.config, n_layers=len(keep)))
    shallow.embeddings, shallow.final_norm = encoder.embeddings, encoder.final_norm
    shallow.layers = nn.ModuleList(encoder.layers[i] for i in sorted(keep))
    return shallow.train(encoder.training)


class TrimmedEmbedding(nn.Module):
    """The rows of a token embedding for the ids a task uses: V·d weights become k·d.

    ids (...) in the full vocabulary → row = index[id] → (..., d). ``index`` (int32, one entry per id
    of the full vocabulary, 4 bytes each) sends every id that was not kept to the row of ``unk_id``.
    """

    def __init__(self, embedding: nn.Embedding, kept_ids: torch.Tensor, unk_id: int):
        super().__init__()
        kept_ids = torch.unique(torch.cat([torch.as_tensor(kept_ids).flatten(), torch.tensor([unk_id])]))
        if kept_ids.min() < 0 or kept_ids.max() >= embedding.num_embeddings:
            raise ValueError(f"token ids must be in [0, {embedding.num_embeddings}); got ids from "
                             f"{kept_ids.min().item()} to {kept_ids.max().item()}")
        index = torch.full((embedding.num_embeddings,), int((kept_ids == unk_id).nonzero()), dtype=torch.int32)
        index[kept_ids] = torch.arange(len(kept_ids), dtype=torch.int32)
        self.register_buffer("index", index)
        self.weight = nn.Parameter(embedding.weight.detach()[kept_ids].clone())

    def forward(self, input_ids):
        return nn.functional.embedding(self.index[input_ids], self.weight)


def trim_vocabulary(encoder: Encoder, kept_ids: torch.Tensor, unk_id: int) -> Encoder:
    """Keep only the token embeddings of ``kept_ids`` (e.g. every id in the task's data), in place.

    Outputs on kept ids are unchanged; any other id reads ``unk_id``'s row, as an unknown word would.
    Works on plain and factorised (ALBERT) embeddings.
    """
    owner, name = encoder.embeddings, "token"
    if isinstance(owner.token, FactorisedEmbedding):
        owner, name = owner.token, "lookup"
    table = getattr(owner, name)
    if not isinstance(table, nn.Embedding):
        raise TypeError(f"expected the encoder's token embedding to be an nn.Embedding, got {type(table).__name__}")
    setattr(owner, name, TrimmedEmbedding(table, kept_ids, unk_id))
    return encoder


def task_token_ids(*datasets) -> torch.Tensor:
    """Every distinct token id in the ``input_ids`` (first tensor) of the given TensorDatasets, sorted."""
    if not datasets:
        raise ValueError("give at least one TensorDataset whose first tensor holds input_ids")
    return torch.unique(torch.cat([data.tensors[0].flatten() for data in datasets]))


VARIANTS = {
    "fewer layers": fewer_layers, "narrower": narrower, "bottleneck": bottleneck,
    "grouped + shuffle": grouped, "shared layers": shared_layers,
}


def build(name: str, config: TransformerConfig, **options) -> Encoder:
    """Build the variant called ``name`` (one of :data:`VARIANTS`) from a base config."""
    if name not in VARIANTS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name](config, **options)
