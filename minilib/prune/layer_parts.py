"""The parts of a Transformer encoder layer, found the same way in minilib and Hugging Face BERT models.

Removing heads or neurons (:mod:`minilib.prune`) needs the same four things from every layer: the
Q, K, V projections, the output projection, the two FFN Linears, and the head size. ``encoder_layer_parts(model)`` finds
them wherever the layers sit (an ``Encoder``, a ``Classifier``, a ``BertModel``, a
``BertForSequenceClassification``...), reading shapes from the Linears so that pruned layers are
described as they are now.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from minilib.transformer import EncoderLayer


@dataclass
class Slot:
    """A Linear layer found inside a module, and where to put its replacement."""

    owner: nn.Module
    attribute: str

    @property
    def linear(self) -> nn.Linear:
        return getattr(self.owner, self.attribute)

    def replace(self, linear: nn.Linear) -> None:
        setattr(self.owner, self.attribute, linear)


@dataclass
class LayerParts:
    """One encoder layer's projections and FFN, as :class:`Slot` objects."""

    attention: nn.Module      # holds the head count
    head_inputs: list[Slot]   # q, k, v projections: head h owns output rows h·d_h … (h+1)·d_h − 1
    head_output: Slot         # output projection: head h owns those input columns
    ffn_up: Slot              # neuron j is output row j
    ffn_down: Slot            # neuron j is input column j
    head_dim: int

    @property
    def n_heads(self) -> int:
        return self.head_output.linear.in_features // self.head_dim

    @property
    def n_neurons(self) -> int:
        return self.ffn_up.linear.out_features

    @property
    def projections(self) -> list[nn.Linear]:
        """[q, k, v, output] projections."""
        return [slot.linear for slot in self.head_inputs] + [self.head_output.linear]

    @property
    def ffn(self) -> list[nn.Linear]:
        """[up, down] FFN layers."""
        return [self.ffn_up.linear, self.ffn_down.linear]

    def set_head_count(self, n_heads: int) -> None:
        if hasattr(self.attention, "n_heads"):  # minilib MultiHeadAttention
            self.attention.n_heads = n_heads
        else:  # Hugging Face BertSelfAttention reads both when reshaping
            self.attention.num_attention_heads = n_heads
            self.attention.all_head_size = n_heads * self.head_dim


def encoder_layer_parts(model: nn.Module) -> list[LayerParts]:
    """Every Transformer encoder layer in ``model`` (minilib ``EncoderLayer`` or HF ``BertLayer``), in order."""
    hf_bert = sys.modules.get("transformers.models.bert.modeling_bert")  # loaded if model holds a BertLayer
    parts = []
    for module in model.modules():
        if isinstance(module, EncoderLayer):
            attn, ffn = module.attn, module.ffn
            parts.append(LayerParts(
                attn, [Slot(attn, "q_proj"), Slot(attn, "k_proj"), Slot(attn, "v_proj")], Slot(attn, "out_proj"),
                Slot(ffn, "up"), Slot(ffn, "down"), attn.head_dim,
            ))
        elif hf_bert is not None and isinstance(module, hf_bert.BertLayer):
            attn = module.attention.self
            parts.append(LayerParts(
                attn, [Slot(attn, "query"), Slot(attn, "key"), Slot(attn, "value")],
                Slot(module.attention.output, "dense"),
                Slot(module.intermediate, "dense"), Slot(module.output, "dense"), attn.attention_head_size,
            ))
    if not parts:
        raise TypeError(
            f"found no Transformer encoder layer in {type(model).__name__}: expected a minilib Encoder/Classifier "
            "or a Hugging Face BERT model"
        )
    return parts
