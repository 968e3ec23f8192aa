"""Checks for chapter 14 (modern decoders).

The "build it" check of the modern block: rotary position embeddings in Llama's layout, against Hugging Face's
``apply_rotary_pos_emb``, with the plausible mistakes (the RoPE paper's interleaved pairs, a rotation the wrong way,
θ without its factor 2, positions ignored) named when an answer makes one.
"""
from __future__ import annotations

import torch

import minilib.rotary as rotary_module
from minilib.course.checks.core import CheckFailed, exercise, expect_close
from minilib.course.checks.guards import guarded

_HINT = ("compute θ_i = base^(-2i/d) and the angles m·θ_i yourself, and write rotate_half yourself: "
         "[x1, x2] → [-x2, x1] on the two halves of the last dimension")


def _hf_rotary(x, positions, base):
    """Hugging Face's Llama: LlamaRotaryEmbedding's cos/sin tables and apply_rotary_pos_emb (the reference)."""
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama

    heads, head_dim = x.shape[1], x.shape[-1]
    config = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim,
                         rope_parameters={"rope_type": "default", "rope_theta": base})
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config)(x, positions[None])
    return modeling_llama.apply_rotary_pos_emb(x, x, cos, sin)[0]


def _mistakes(x, positions, base):
    """What plausible wrong answers return, with what to say about each."""
    d = x.shape[-1]

    def turned(theta, layout="half", sign=1.0, at=positions):
        angles = at.double()[:, None] * theta.double()                          # (seq, d/2)
        cos, sin = angles.cos().float(), sign * angles.sin().float()
        if layout == "half":
            cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
            return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin
        pairs = x.unflatten(-1, (d // 2, 2))                                     # (2i, 2i + 1): the RoPE paper
        first, second = pairs[..., 0], pairs[..., 1]
        return torch.stack([first * cos - second * sin, second * cos + first * sin], -1).flatten(-2)

    theta = base ** (-torch.arange(0, d, 2).double() / d)
    return [(turned(theta, layout="pairs"), "you paired dimensions 2i and 2i+1 (the RoPE paper's layout); Llama "
                                             "pairs dimension i with i + d/2: rotate the two halves of the vector"),
            (turned(theta, sign=-1.0), "your rotation turns the wrong way: x·cos + rotate_half(x)·sin, "
                                       "with rotate_half([x1, x2]) = [-x2, x1]"),
            (turned(base ** (-torch.arange(d // 2).double() / d)), "θ_i = base^(-2i/d): the exponent has a factor 2 "
                                                                   "(i counts pairs, 0 … d/2 - 1)"),
            (turned(theta, at=torch.arange(len(positions))), "rotate by the positions you are given, not 0, 1, 2, …: "
                                                              "after a KV cache the new tokens start at cache.length")]


def _library():
    """What the answer must not call: our rotary module and Hugging Face's rotary embeddings."""
    from transformers.models.llama import modeling_llama

    return [rotary_module, modeling_llama.apply_rotary_pos_emb, modeling_llama.rotate_half,
            modeling_llama.LlamaRotaryEmbedding]


@exercise(points=3)
def check_rotary(fn):
    """fn(x (batch, heads, seq, head_dim), positions (seq,), base) → x rotated in Llama's layout, as Hugging Face's."""
    generator = torch.Generator().manual_seed(14)
    cases = [((2, 3, 7, 64), torch.arange(7), 10000.0, "positions 0 … 6, head_dim 64"),
             ((1, 2, 5, 64), torch.arange(250, 255), 10000.0, "positions 250 … 254 (after a KV cache of 250)"),
             ((2, 4, 9, 16), torch.tensor([0, 3, 4, 10, 11, 20, 21, 22, 100]), 500000.0,
              "positions [0, 3, 4, 10, …, 100], head_dim 16, base 500000 (Llama 3's)")]
    library = _library()
    for shape, positions, base, what in cases:
        x = torch.randn(shape, generator=generator)
        with guarded(fn, library, _HINT):
            got = fn(x.clone(), positions.clone(), base)
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            described = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"rotary for {what}", f"a tensor of x's shape {tuple(shape)}", described)
        for wrong, hint in _mistakes(x, positions, base):
            if torch.allclose(got.float(), wrong, atol=1e-4, rtol=1e-4):
                expect_close(f"rotary for {what}", got, _hf_rotary(x, positions, base), atol=2e-4, rtol=1e-4,
                             hint=hint)
        expect_close(f"rotary for {what}", got, _hf_rotary(x, positions, base), atol=2e-4, rtol=1e-4,
                     hint="pair i is dimensions i and i + d/2, turned by positions[m]·θ_i with θ_i = base^(-2i/d)")
