"""Chapter 13's claims, on its trained character-level decoder (4 layers, width 256, 8 heads, context 512):

* KV cache: at least 5× faster than recomputing the prefix, for 256 new tokens after a 64-token prompt;
* grouped-query attention with n_kv_heads = n_heads / 4: a 4× smaller cache, held-out perplexity within 5% of the
  multi-head model after uptraining;
* q4_0 weights at least 6× smaller than float32 linear weights with perplexity within 10%; q8_0 within 1%;
* speculative decoding with k = 4 (one-layer draft, ending a round early when it is less than 50% sure of a token):
  identical tokens and at least 1.3× faster than the target alone.
"""
from minilib.experiments.ch13_fast_generation import (
    decoder,
    draft_model,
    grouped_decoder,
    lm_data,
    perplexity,
    time_per_token,
)
from minilib.generation import KVCache, generate, speculative_generate
from minilib.quant import quantize_model_blocks
from minilib.support.bench import Headline, compare, model_size_bytes
from minilib.support.train import set_seed

PROMPT, NEW = 64, 256
CACHE_TARGET, GQA_SIZE_TARGET, GQA_PPL_TARGET = 5.0, 4.0, 5.0       # ×, ×, % worse at most
Q4_SIZE_TARGET, Q4_PPL_TARGET, Q8_PPL_TARGET = 6.0, 10.0, 1.0       # ×, %, %
SPECULATIVE_TARGET, K, MIN_CONFIDENCE = 1.3, 4, 0.5


def headlines():
    set_seed(0)
    model, data = decoder(), lm_data()
    prompt = data.validation.tensors[0][:1, :PROMPT]
    base = perplexity(model, data.validation)
    return [*_cache_rows(model, prompt), *_gqa_rows(model, base, data), *_quant_rows(model, base, data),
            *_speculative_rows(model, prompt)]


def _cache_rows(model, prompt):
    same = generate(model, prompt, NEW).equal(generate(model, prompt, NEW, use_cache=False))
    cached = time_per_token(lambda: generate(model, prompt, NEW), NEW, repeats=2)
    recomputed = time_per_token(lambda: generate(model, prompt, NEW, use_cache=False), NEW, repeats=1)
    speed_up = recomputed / cached
    return [Headline.at_least(f"KV cache × faster than recomputing ({NEW} new tokens after {PROMPT})", speed_up,
                              CACHE_TARGET, "×",
                              f"{1e3 * cached:.1f} vs {1e3 * recomputed:.1f} ms/token; identical tokens: {same}", also=same)]


def _gqa_rows(model, base, data):
    grouped = grouped_decoder()
    n_kv = grouped.config.n_kv_heads
    smaller = KVCache.for_model(model, 1).nbytes / KVCache.for_model(grouped, 1).nbytes
    worse = 100 * (perplexity(grouped, data.validation) / base - 1)
    return [Headline.at_least(f"GQA ({model.config.n_heads} → {n_kv} kv heads) cache × smaller", smaller,
                              GQA_SIZE_TARGET, "×"),
            Headline.at_most("GQA held-out perplexity change after uptraining", worse, GQA_PPL_TARGET, "%",
                             f"multi-head perplexity {base:.3f}")]


def _quant_rows(model, base, data):
    rows = []
    layer_bytes = lambda m: sum(model_size_bytes(layer) for layer in m.layers)   # every linear weight but the tied head
    for fmt, ppl_target in (("q8_0", Q8_PPL_TARGET), ("q4_0", Q4_PPL_TARGET)):
        quantized = quantize_model_blocks(model, fmt)
        worse = 100 * (perplexity(quantized, data.validation) / base - 1)
        smaller = layer_bytes(model) / layer_bytes(quantized)
        if fmt == "q4_0":
            rows.append(Headline.at_least("q4_0 layer weights × smaller than float32", smaller, Q4_SIZE_TARGET, "×",
                                          "biases and LayerNorms stay float32"))
        rows.append(Headline.at_most(f"{fmt} held-out perplexity change", worse, ppl_target, "%",
                                     f"{smaller:.1f}× smaller layers"))
    return rows


def _speculative_rows(model, prompt):
    draft = draft_model()
    fixed = lambda: speculative_generate(model, draft, prompt, NEW, k=K)
    unsure_stops = lambda: speculative_generate(model, draft, prompt, NEW, k=K, min_confidence=MIN_CONFIDENCE)
    result = unsure_stops()
    same = result.tokens.equal(generate(model, prompt, NEW)) and fixed().tokens.equal(result.tokens)
    timing = compare({"target alone": lambda: generate(model, prompt, NEW),     # interleaved: load hits all alike
                      "fixed k": fixed, "stops when unsure": unsure_stops},
                     baseline="target alone", warmup=1, repeats=5)
    return [Headline.at_least(f"speculative decoding (k ≤ {K}, 1-layer draft stopping below {MIN_CONFIDENCE:.0%} "
                              "confidence) × faster", timing.ratio("stops when unsure"), SPECULATIVE_TARGET, "×",
                              f"identical tokens: {same}; acceptance {result.acceptance_rate:.0%}, "
                              f"{result.target_calls} target passes for {NEW} tokens; always drafting {K}: "
                              f"{timing.ratio('fixed k'):.2f}×", also=same)]
