"""Checks for chapter 14 (modern decoders).

* 14.1, the "build it" check of the modern block: rotary position embeddings in Llama's layout, against Hugging
  Face's ``apply_rotary_pos_emb``, with the plausible mistakes (the RoPE paper's interleaved pairs, a rotation the
  wrong way, θ without its factor 2, positions ignored) named when an answer makes one.
* 14.4, a count: the parameters of a Llama-style decoder from its sizes, against the decoder built on the meta
  device, with the plausible miscounts (a tied head counted twice, keys and values at n_heads, head_dim assumed,
  norms, biases, two FFN matrices, a position table) named.
"""
from __future__ import annotations

import torch

import minilib.rotary as rotary_module
from minilib.course.checks.core import CheckFailed, as_number, exercise, expect_close, expect_number
from minilib.course.checks.guards import COURSE, guarded
from minilib.llama import DecoderConfig, LlamaDecoder
from minilib.support.bench import param_count

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


# ------------------------------------------------------------------------------------------------ exercise 14.4
_COUNTERS = [COURSE, "transformers", "fvcore", "thop", "torch.utils.flop_counter"]
_NO_TENSORS = 1_000  # a count from the sizes needs no tensor larger than a handful of numbers
_CONFIGS = [
    ("chapter 14's decoder (tied head, 6 query and 2 key/value heads)",
     dict(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=1024, max_len=256)),
    ("an untied head, one key/value head (multi-query), head_dim 96 given with d_model 256 and 4 heads",
     dict(vocab_size=1000, d_model=256, n_layers=3, n_heads=4, n_kv_heads=1, d_ff=704, max_len=512, head_dim=96,
          tie_embeddings=False)),
    ("Llama 3 8B's sizes (untied head, 32 query and 8 key/value heads)",
     dict(vocab_size=128_256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14_336, max_len=8192,
          rope_base=500_000.0, tie_embeddings=False)),
]


def _miscounts(c) -> list[tuple[int, str]]:
    """What plausible miscounts of a LlamaDecoder's parameters give, with what to say about each."""
    d, hd, layers = c.d_model, c.head_dim, c.n_layers
    table = c.vocab_size * d
    attention = d * hd * (2 * c.n_heads + 2 * c.n_kv_heads)
    right = table * (1 if c.tie_embeddings else 2) + layers * (attention + 3 * d * c.d_ff + 2 * d) + d
    biases = layers * (hd * (c.n_heads + 2 * c.n_kv_heads) + d + 2 * c.d_ff + d)
    wrong = [(right + table if c.tie_embeddings else right - table,
              "the output head shares the embedding table when tie_embeddings is True (count it once), and is a "
              "V×d matrix of its own when it is False"),
             (right + layers * 2 * d * hd * (c.n_heads - c.n_kv_heads),
              "keys and values have n_kv_heads heads (grouped-query attention), not n_heads"),
             (right - layers * d * (hd - d // c.n_heads) * (2 * c.n_heads + 2 * c.n_kv_heads),
              "a head has config.head_dim dimensions, which need not be d_model / n_heads"),
             (right - (2 * layers + 1) * d, "each block has two RMSNorm gains of d_model numbers, and the final "
                                            "RMSNorm before the head one more"),
             (right - d, "one more RMSNorm gain: the final norm before the output head"),
             (right + biases, "Llama's linear layers have no biases"),
             (right - layers * d * c.d_ff, "SwiGLU has three matrices: gate, up and down"),
             (right + c.max_len * d, "rotary position embeddings have no parameters: there is no position table")]
    return [(count, hint) for count, hint in wrong if count != right]


@exercise(points=2)
def check_decoder_parameters(fn):
    """fn(config: DecoderConfig) → the parameters of LlamaDecoder(config), counted from the sizes, as built ones have."""
    why = ("count from the sizes: building the decoder (on the meta device) and counting its parameters is how this "
           "check gets the answer")
    for what, sizes in _CONFIGS:
        config = DecoderConfig(**sizes)
        with torch.device("meta"):
            expected = param_count(LlamaDecoder(config))
        with guarded(fn, _COUNTERS, why) as run:
            got = fn(config)
        run.expect_tensors_under(_NO_TENSORS, f"decoder_parameters for {what}", why)
        got = as_number(f"decoder_parameters for {what}", got)
        for count, hint in _miscounts(config):
            if got == count:
                expect_number(f"decoder_parameters for {what}", got, expected, hint=hint)
        expect_number(f"decoder_parameters for {what}", got, expected,
                      hint="embeddings V·d (once if tied, twice if not); per block q and out d·H·hd, k and v "
                           "d·H_kv·hd, SwiGLU 3·d·d_ff, two gains d; then the final gain d")
