"""Checks for chapter 13 (fast generation): KV-cache bytes, speculative acceptance, q8_0.

The chapter's "build it" checks: one decoding step of (grouped-query) attention with a KV cache, and one round of
speculative decoding with its cache rollback, compared with the library's token for token and cache for cache.
"""
from __future__ import annotations

import copy

import torch

import minilib.attention as attention
import minilib.generation as generation
from minilib.attention import MultiHeadAttention
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.course.checks.guards import COURSE, FUSED_ATTENTION, guarded
from minilib.generation import KVCache
from minilib.quant.blocks import quantize_blocks


@exercise(points=1)
def check_kv_cache_bytes(fn):
    """fn(n_layers, batch, n_kv_heads, seq, head_dim, bytes_per_number) → bytes of keys and values."""
    cases = [((4, 1, 8, 512, 32, 4), 2 * 4 * 1 * 8 * 512 * 32 * 4, "keys and values: two tensors"),
             ((32, 8, 8, 4096, 128, 2), 2 * 32 * 8 * 8 * 4096 * 128 * 2, "a Llama-style 8B model in float16"),
             ((4, 1, 1, 512, 32, 1), 2 * 4 * 512 * 32, "multi-query attention, int8 entries")]
    for args, expected, hint in cases:
        expect_equal(f"kv_cache_bytes{args}", fn(*args), expected, hint=hint)


@exercise(points=2)
def check_accepted_count(fn):
    """fn(proposal (k,), choices (k+1,)) → how many leading drafted tokens equal the target's choices."""
    cases = [([5, 7, 9], [5, 7, 9, 2], 3, "all agree: every drafted token is kept"),
             ([5, 7, 9], [5, 8, 9, 2], 1, "stop at the first disagreement, even if later tokens agree again"),
             ([5, 7, 9], [4, 7, 9, 2], 0, "the first drafted token already differs"),
             ([3], [3, 1], 1, "k = 1")]
    for proposal, choices, expected, hint in cases:
        got = fn(torch.tensor(proposal), torch.tensor(choices))
        expect_equal(f"accepted_count({proposal}, {choices})", int(got), expected, hint=hint)


_Q8_0_HINT = ("compute the blocks, the scales and the rounding yourself: the course's quantizers and gguf's are the "
              "references the check compares with")
_ZERO_BLOCK = ("a block of zeros has scale 0: w / 0 is 0/0 = NaN, and NaN cast to int8 is 0 only by accident (x86 "
               "gives 0, other machines need not); use a zero inverse there, torch.where(scale == 0, 0, 1 / scale), "
               "as ggml does")


def _q8_0_cases():
    """(weight, what) pairs: random weights, a block of zeros beside a constant one, and a row of exact halves."""
    generator = torch.Generator().manual_seed(3)
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 41.5, 126.5, 127.0] * 4) / 64   # d = 127/64 / 127 = 1/64: w/d = x.5
    return [(torch.randn(4, 64, generator=generator), "a random (4, 64) weight"),
            (torch.cat([torch.zeros(1, 32), torch.full((1, 32), 0.5)]), "a block of zeros and a constant one"),
            (halves[None], "a block whose w / d are exact halves (0.5, 1.5, 2.5, −0.5, …)")]


@exercise(points=2)
def check_q8_0(fn):
    """fn(w (out, in)) → (codes int8 (out, in), scales float16 (out, in/32)), bit for bit llama.cpp's (gguf's) q8_0."""
    for w, what in _q8_0_cases():
        reference = quantize_blocks(w, "q8_0")
        with guarded(fn, [COURSE, "gguf"], _Q8_0_HINT) as run:
            got = fn(w.clone())
        run.expect_finite_casts(f"your function on {what}", _ZERO_BLOCK)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(what, "a pair (codes, scales)", type(got).__name__)
        codes, scales = got
        for name, value, dtype, why in (("codes", codes, torch.int8, "int8, one byte per weight"),
                                        ("scales", scales, torch.float16, "float16: two bytes per block of 32")):
            if not isinstance(value, torch.Tensor) or value.dtype != dtype:
                got_type = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise CheckFailed(f"the {name} for {what}", f"a tensor of {dtype}", got_type,
                                  f"q8_0 stores its {name} as {why}: convert with .to({dtype})")
        expect_close(f"scales for {what}", scales, reference.scales, atol=0, rtol=0,
                     hint="one scale per block of 32 along the input dimension: max|w| / 127, stored as float16")
        expect_close(f"codes for {what}", codes, reference.codes, atol=0, rtol=0,
                     hint="ggml rounds halves away from zero (C's roundf: 2.5 → 3, −0.5 → −1); torch.round rounds "
                          "them to the even neighbour (2.5 → 2)" if "halves" in what else
                          "round(w / scale) with the unrounded float32 scale; a block of zeros (scale 0) gets codes 0")


# --- the "build it" exercise ------------------------------------------------------------

_LIBRARY = [attention.scaled_dot_product_attention, attention.memory_efficient_attention, *FUSED_ATTENTION,
            generation.KVCache, generation.QuantizedKVCache]
_HINT = ("write the step yourself: the layer's projections (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj), "
         "the cache writes and the softmax")


def _refuse_layer_call(*args, **kwargs):
    raise CheckFailed("your step called the layer itself (attn(...))", "the step written out", "a call of attn.forward",
                      hint=_HINT)


def _layer(n_kv_heads, seed):
    torch.manual_seed(seed)
    return MultiHeadAttention(64, 4, n_kv_heads=n_kv_heads).eval()


@exercise(points=3)
def check_cached_attention_step(fn):
    """fn(attn, x_new (B, 1, d), k_cache, v_cache (B, n_kv, max_len, hd), length) → (B, 1, d), filling the caches.

    Fed one token at a time, it must give what causal attention over the whole sequence gives at each
    position, and leave that token's key and value at position ``length`` of the caches.
    """
    for n_kv_heads in (4, 2):
        attn = _layer(n_kv_heads, seed=n_kv_heads)
        x = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = attn(x, is_causal=True)[0]
            k_cache, v_cache = torch.zeros(2, n_kv_heads, 8, 16), torch.zeros(2, n_kv_heads, 8, 16)
            for t in range(6):
                attn.forward = _refuse_layer_call            # on this instance only: attn(...) trips
                try:
                    with guarded(fn, _LIBRARY, _HINT):
                        out = fn(attn, x[:, t:t + 1], k_cache, v_cache, t)
                finally:
                    del attn.forward
                what = f"output for token {t} (n_heads 4, n_kv_heads {n_kv_heads})"
                if not isinstance(out, torch.Tensor):
                    raise CheckFailed(what, "a tensor (batch, 1, d_model)", type(out).__name__)
                expect_close(what, out, full[:, t:t + 1], atol=1e-5,
                             hint="write k, v at position `length`, attend over positions 0 … length (no mask "
                                  "needed), and with fewer kv heads repeat each one for its group of query heads")
            expected_k = attn.k_proj(x).view(2, 6, n_kv_heads, 16).transpose(1, 2)
            expect_close(f"k_cache[:, :, :6] after 6 steps (n_kv_heads {n_kv_heads})", k_cache[:, :, :6], expected_k,
                         hint="store the new key in the cache in place: k_cache[:, :, length] = …")


# --- the "build it" exercise: one speculative round ----------------------------------------------------------

_SPECULATIVE = [getattr(generation, name) for name in ("speculative_round", "speculative_generate", "generate",
                                                      "decode", "_draft", "_verify")]
_ROUND_HINT = ("write the round yourself: the draft's k passes (argmax), one target pass over the new tokens, the "
               "agreeing prefix, the target's own token after it, and cache.truncate on both caches")


def _round_models():
    """A small target (2 layers, 61 tokens) and four drafts: a different model, one close to the target (it agrees,
    disagrees, then agrees again within a round), the target itself, and one that is always wrong."""
    from minilib.transformer import LanguageModel, TransformerConfig

    def model(seed, n_layers):
        torch.manual_seed(seed)
        config = TransformerConfig(vocab_size=61, d_model=64, n_heads=2, n_layers=n_layers, d_ff=128, max_len=64,
                                   dropout=0.0, norm_first=True)
        lm = LanguageModel(config)
        lm.lm_head.weight = torch.nn.Parameter(torch.randn(61, 64))           # untied: varied greedy tokens
        return lm.eval()

    target = model(0, 2)
    close, wrong = copy.deepcopy(target), copy.deepcopy(target)
    with torch.no_grad():
        close.lm_head.weight.add_(0.2 * torch.randn(61, 64, generator=torch.Generator().manual_seed(3)))
        wrong.lm_head.weight.copy_(target.lm_head.weight.roll(1, dims=0))    # its choice is always the target's + 1
    return target, {"a one-layer draft": model(5, 1), "a draft close to the target": close,
                    "the target itself as draft": target, "a draft that is always wrong": wrong}


def _expect_same_cache(what, got, expected):
    expect_equal(f"{what}: positions it holds (cache.length)", got.length, expected.length,
                 hint="after the round both caches hold every token but the newest (the target's correction, which "
                      "no model has seen): cache.truncate(min(cache.length, len(tokens) - 1))")
    n = expected.length
    expect_close(f"{what}: keys of positions 0 … {n - 1}", got.keys[:, :, :, :n], expected.keys[:, :, :, :n], atol=1e-4,
                 hint="the keys kept must be those of the tokens kept: roll back with cache.truncate")


@exercise(points=3)
def check_speculative_round(fn):
    """fn(target, draft, tokens (1, seq), target_cache, draft_cache, k) → tokens (1, seq + kept + 1), caches rolled back.

    Five rounds from a 12-token prompt for each draft and k: the tokens and both caches must equal
    ``minilib.generation.speculative_round``'s after every round, and the sequence the target's greedy output.
    """
    target, drafts = _round_models()
    prompt = torch.randint(1, 61, (1, 12), generator=torch.Generator().manual_seed(2))
    for name, draft in drafts.items():
        for k in (1, 3, 4):
            tokens = prompt
            theirs = KVCache.for_model(target, 1, 64), KVCache.for_model(draft, 1, 64)
            ours = tuple(copy.deepcopy(cache) for cache in theirs)
            for round_ in range(1, 6):
                case = f"round {round_} with {name}, k = {k}"
                with torch.no_grad(), guarded(fn, _SPECULATIVE, _ROUND_HINT, record=False):
                    got = fn(target, draft, tokens, *theirs, k)
                expected = generation.speculative_round(target, draft, tokens, *ours, k).tokens
                if not isinstance(got, torch.Tensor):
                    raise CheckFailed(case, "the tokens, a (1, seq) tensor", type(got).__name__)
                longer = got.dim() == 2 and got.shape[1] > expected.shape[1]
                expect_equal(f"{case}: number of tokens after it", tuple(got.shape), tuple(expected.shape),
                             hint="you kept more drafts than the target agrees with: stop at the first disagreement, "
                                  "even if later drafts agree again" if longer else
                                  "append the kept drafts and then one token of the target's: its choice at the first "
                                  "disagreement, or after the last draft when all k agree")
                expect_equal(f"{case}: the tokens", got.tolist(), expected.tolist(),
                             hint="keep drafts only up to the first disagreement with the target's argmax, even if "
                                  "later ones agree again")
                _expect_same_cache(f"{case}, the target's cache", theirs[0], ours[0])
                _expect_same_cache(f"{case}, the draft's cache", theirs[1], ours[1])
                tokens = got
            greedy = generation.generate(target, prompt, tokens.shape[1] - prompt.shape[1])
            expect_equal(f"five rounds with {name}, k = {k}: the sequence", tokens.tolist(), greedy.tolist(),
                         hint="speculative decoding must give exactly the target's greedy tokens")
