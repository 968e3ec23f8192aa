"""Checks for chapter 14 (modern decoders).

* 14.1, the "build it" check of the modern block: rotary position embeddings in Llama's layout, against Hugging
  Face's ``apply_rotary_pos_emb``, with the plausible mistakes (the RoPE paper's interleaved pairs, a rotation the
  wrong way, θ without its factor 2, positions ignored) named when an answer makes one.
* 14.4, a count: the parameters of a Llama-style decoder from its sizes, against the decoder built on the meta
  device, with the plausible miscounts (a tied head counted twice, keys and values at n_heads, head_dim assumed,
  norms, biases, two FFN matrices, a position table) named.
* 14.2 and 14.3, "build it" checks of compression on real layers of the trained decoder: GPTQ on one layer
  (against minilib's and llmcompressor's GPTQ) and Wanda's mask (exactly, with the plausible mistakes named).
"""
from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
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

# ------------------------------------------------------------------------------------------ compression: build it
_GPTQ_HINT = ("add damping, λ = 0.01 · mean(diag H), to H's diagonal, take U = the upper Cholesky factor of H⁻¹, then for each "
              "column j: q = grid.round(W[:, j], j), e = (W[:, j] − q) / U[j, j], W[:, j:] −= e ⊗ U[j, j:]")
LIBRARIES = ("llmcompressor", "auto_gptq", "gptqmodel")   # the compression libraries practitioners use, by any name
_WANDA_HINT = ("score every weight by |W_ij| · ‖X_j‖₂ (the norm of input j over the tokens), then remove the "
               "round(sparsity · in) lowest scores of each row")


def _loaded(module: str, *names: str) -> list:
    """The functions ``names`` of ``module`` if something has imported it (importing llmcompressor takes seconds: a
    check never does it; the answer's code naming it is refused anyway)."""
    return [getattr(sys.modules[module], name) for name in names] if module in sys.modules else []


def _gptq_mistakes(weight, hessian, grid, damp=0.01) -> list[tuple[torch.Tensor, str]]:
    """What plausible wrong answers return, with what to say about each."""
    H = hessian.double() + damp * hessian.diagonal().mean().double() * torch.eye(len(hessian), dtype=torch.float64)
    inverse = torch.linalg.inv(H)

    def swept(rows, denominator):
        W = weight.double().clone()
        for j in range(W.shape[1]):
            q = grid.round(W[:, j].float(), j).double()
            error = (W[:, j] - q) / denominator(j)
            W[:, j:] -= error[:, None] * rows[j, j:]
            W[:, j] = q
        return W.float()

    lower = torch.linalg.cholesky(inverse)
    return [(grid.round(weight), "these are round-to-nearest's weights: after rounding column j, push its error onto "
                                 "the columns not done yet (W[:, j:] −= e ⊗ U[j, j:])"),
            (swept(inverse, lambda j: inverse[j, j]), "you pushed the errors with the rows of H⁻¹ itself; after each "
             "column, the inverse Hessian of the columns left changes (GPTQ's eq. 3): the rows of the upper Cholesky "
             "factor U of H⁻¹ already include those changes"),
            (swept(lower.T.contiguous(), lambda j: lower[j, j] ** 2), "divide the error by U[j, j], not U[j, j]²: "
             "e = (w − q) / U[j, j], then W[:, j:] −= e ⊗ U[j, j:]")]


@exercise(points=4)
def check_gptq_layer(fn):
    """fn(weight (out, in), hessian (in, in), grid) → the layer's 4-bit weight (out, in), every column on its grid,
    whose output error is no more than 1% above GPTQ's (minilib's and llmcompressor's)."""
    from minilib.experiments import llm_compression
    from minilib.experiments.ch14_modern_decoders import gptq_exercise
    from minilib.prune import sparsegpt
    from minilib.quant import gptq
    from minilib.quant.awq import output_error

    forbidden = [gptq, sparsegpt, llm_compression, *LIBRARIES,
                 *_loaded("llmcompressor.modifiers.gptq.gptq_quantize", "quantize_weight", "gptq_block_update")]
    cases = [(None, 0.01, "block 2's q projection (384 → 384), H from 4,096 held-out tokens"),
             (64, 0.05, "the same layer with H from only 64 tokens (singular: damping makes it invertible, and "
                        "float rounding alone moves the error by 1%)")]
    for tokens, tolerance, what in cases:
        case = gptq_exercise(tokens)
        weight, x, hessian, grid = case["weight"], case["x"], case["hessian"], case["grid"]
        their_grid = replace(grid, scale=grid.scale.clone(), zero=grid.zero.clone())   # theirs to change, not ours
        try:
            with guarded(fn, forbidden, _GPTQ_HINT):
                got = fn(weight.clone(), hessian.clone(), their_grid)
        except torch.linalg.LinAlgError as error:
            raise CheckFailed(f"GPTQ on {what}", "a quantized weight", f"{type(error).__name__}: {error}",
                              "add damping first (λ = 0.01 · mean(diag H) on H's diagonal), then invert H + λI through its "
                              "Cholesky factor, torch.cholesky_inverse(torch.linalg.cholesky(H)), or in float64: "
                              "torch.linalg.inv in float32 loses H⁻¹'s smallest eigenvalues") from None
        if not isinstance(got, torch.Tensor) or got.shape != weight.shape:
            described = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"GPTQ on {what}", f"a weight of shape {tuple(weight.shape)}", described)
        off_grid = (grid.round(got.float()) - got.float()).abs() > 1e-6 * grid.scale.max()
        if off_grid.any():
            raise CheckFailed(f"GPTQ on {what}", "every weight on a level of its group's 4-bit grid",
                              f"{int(off_grid.sum())} weights between levels",
                              "each column must end rounded: q = grid.round(W[:, j], j), and W[:, j] = q")
        error = output_error(weight.double(), got.double(), x.double().T @ x.double())
        for name, reference in case["references"].items():
            if error > (1 + tolerance) * reference:
                hint = next((h for wrong, h in _gptq_mistakes(weight, hessian, grid)
                             if torch.allclose(got.float(), wrong, atol=1e-5)), _GPTQ_HINT)
                raise CheckFailed(f"the output error ‖(Ŵ − W)Xᵀ‖² of GPTQ on {what}",
                                  f"at most {tolerance:.0%} above {name}'s {reference:.4g}", f"{error:.4g}", hint)


def _wanda_reference(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's keep-mask from its scores, computed in float64, each row sorted on its own."""
    scores = (weight.double().abs() * x.double().norm(dim=0)).numpy()          # S_ij = |W_ij| · ‖X_j‖₂
    pruned = np.argsort(scores, axis=1, kind="stable")[:, :round(sparsity * weight.shape[1])]
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep[torch.arange(weight.shape[0])[:, None], torch.from_numpy(pruned)] = False
    return keep


def _wanda_mistakes(weight, x, sparsity) -> list[tuple[torch.Tensor, str]]:
    """Masks that plausible wrong answers give, with what to say about each."""
    n_pruned = round(sparsity * weight.shape[1])
    per_row = lambda s: torch.ones_like(s, dtype=torch.bool).scatter_(1, s.argsort(1)[:, :n_pruned], False)
    scores = weight.abs() * x.norm(dim=0)
    everywhere = torch.ones(scores.numel(), dtype=torch.bool)
    everywhere[scores.flatten().argsort()[:n_pruned * weight.shape[0]]] = False
    per_column = torch.ones_like(scores, dtype=torch.bool)
    per_column.scatter_(0, scores.argsort(0)[:round(sparsity * weight.shape[0])], False)
    return [(per_row(weight.abs()), "you ranked the weights by |W| alone (magnitude pruning): multiply each by the "
                                    "norm of the input it meets, ‖X_j‖₂"),
            (per_row(weight.abs() * x.square().sum(0)), "use the norm ‖X_j‖₂, not its square Σ_t x_tj²"),
            (per_row(weight.abs() * x.abs().mean(0)), "use the norm ‖X_j‖₂ = √(Σ_t x_tj²), not the mean of |x|"),
            (everywhere.view_as(weight), "compare the scores within each output row, not over the whole matrix"),
            (per_column, "compare the scores within each output row (dim 1), not within each input column"),
            (~_wanda_reference(weight, x, sparsity), "True means kept: you returned the weights to remove")]


@exercise(points=3)
def check_wanda_mask(fn):
    """fn(weight (out, in), inputs (tokens, in), sparsity) → Wanda's keep-mask (out, in), True = kept, exactly the one
    its scores |W_ij| · ‖X_j‖₂ give, row by row."""
    from minilib.experiments import llm_compression
    from minilib.experiments.ch14_modern_decoders import layer_inputs
    from minilib.prune import wanda

    forbidden = [wanda, llm_compression, *LIBRARIES,
                 *_loaded("llmcompressor.modifiers.pruning.wanda.wanda_sparsify", "sparsify_weight")]
    cases = [(1, "ffn.gate", 0.5, "block 1's gate projection (384 → 1024), 50%"),
             (4, "ffn.down", 0.3, "block 4's down projection (1024 → 384), 30%")]
    for block, layer, sparsity, what in cases:
        weight, x = layer_inputs(block, layer)
        with guarded(fn, forbidden, _WANDA_HINT):
            got = fn(weight.clone(), x.clone(), sparsity)
        expected = _wanda_reference(weight, x, sparsity)
        if not isinstance(got, torch.Tensor) or got.shape != weight.shape or got.dtype != torch.bool:
            described = f"{got.dtype} of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"Wanda's mask for {what}", f"a bool tensor of shape {tuple(weight.shape)}", described)
        if not torch.equal(got, expected):
            hint = next((h for wrong, h in _wanda_mistakes(weight, x, sparsity)      # up to ties (float16 weights)
                         if (got != wrong).sum() <= 0.01 * got.numel()), _WANDA_HINT)
            wrong = got != expected
            raise CheckFailed(f"Wanda's mask for {what}", "exactly the mask of the scores |W_ij| · ‖X_j‖₂",
                              f"{int(wrong.sum())} weights decided otherwise, in {int(wrong.any(1).sum())} rows", hint)
