"""Chapter 14's Llama-style decoder to and from Hugging Face's ``transformers.LlamaForCausalLM``.

The two are the same computation: :func:`to_hf` copies our weights into a ``LlamaForCausalLM`` (to run Hugging
Face's ``generate``, ``save_pretrained`` or llmcompressor on it), :func:`from_hf` copies a Llama checkpoint's weights
into a :class:`minilib.llama.LlamaDecoder`, and the logits agree within float32 rounding.
"""
from __future__ import annotations

import torch

from minilib.llama import DecoderConfig, LlamaDecoder

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
