"""Chapter 13's claims, on its trained character-level decoder (4 layers, width 256, 8 heads, context 512):

* KV cache: at least 5× faster than recomputing the prefix, for 256 new tokens after a 64-token prompt;
* grouped-query attention with n_kv_heads = n_heads / 4: a 4× smaller cache, held-out perplexity within 5% of the
  multi-head model when both are trained on for the same steps;
* q4_0 weights at least 6× smaller than float32 linear weights with perplexity within 10%; q8_0 within 1%;
* a 4-bit KV cache with KIVI's layout (keys per channel) within 5% of float perplexity;
* speculative decoding with a 5-gram table as the draft, k and the draft's stopping rule chosen from the pass costs
  measured here (the rule kept only if a short trial says it pays): identical tokens and at least 1.3× faster than
  the target alone; the one-layer network draft, planned the same way, reported beside it (on a CPU its passes are
  per-operation overhead: it must only pay at all).
"""
import functools

from minilib.experiments.artefacts import shipped_problem
from minilib.experiments.ch13_fast_generation import (
    ARTEFACTS,
    FAIR_SEEDS,
    FAIR_STEPS,
    UPTRAIN_STEPS,
    acceptance_rate,
    decoder,
    draft_model,
    fair_gqa_comparison,
    grouped_decoder,
    held_out,
    keep_rule_if_it_pays,
    lm_data,
    ngram_draft,
    pass_costs,
    plan_speculation,
    summarise_fair,
    time_per_token,
)
from minilib.generation import KVCache, QuantizedKVCache, generate, speculative_generate
from minilib.metrics import perplexity
from minilib.quant import quantize_model_blocks
from minilib.support.bench import Headline, compare, model_size_bytes
from minilib.support.train import set_seed

PROMPT, NEW = 64, 256
CACHE_TARGET, GQA_SIZE_TARGET, GQA_COST_FLOOR = 5.0, 4.0, 0.0      # ×, ×, % worse at least (grouping is not free)
Q4_SIZE_TARGET, Q4_PPL_TARGET, Q8_PPL_TARGET, KV4_PPL_TARGET = 6.0, 10.0, 1.0, 5.0   # ×, %, %, %
SPECULATIVE_TARGET, NETWORK_DRAFT_TARGET, MAX_K, CALIBRATION = 1.3, 1.0, 8, 64


def headlines():
    set_seed(0)
    model, data = decoder(), lm_data()
    prompt = data.validation.tensors[0][:1, :PROMPT]
    validation = held_out(8)
    base = perplexity(model, validation)
    return [*_cache_rows(model, prompt), *_gqa_rows(model, base, validation), *_quant_rows(model, base, validation),
            *_kv_cache_rows(model, base, validation), *_speculative_rows(model, prompt)]


def _cache_rows(model, prompt):
    same = generate(model, prompt, NEW).equal(generate(model, prompt, NEW, use_cache=False))
    cached = time_per_token(lambda: generate(model, prompt, NEW), NEW, repeats=2)
    recomputed = time_per_token(lambda: generate(model, prompt, NEW, use_cache=False), NEW, repeats=1)
    speed_up = recomputed / cached
    return [Headline.at_least(f"KV cache × faster than recomputing ({NEW} new tokens after {PROMPT})", speed_up,
                              CACHE_TARGET, "×",
                              f"{1e3 * cached:.1f} vs {1e3 * recomputed:.1f} ms/token; identical tokens: {same}", also=same)]


def _gqa_rows(model, base, validation):
    grouped = grouped_decoder()
    n_kv = grouped.config.n_kv_heads
    smaller = KVCache.for_model(model, 1).nbytes / KVCache.for_model(grouped, 1).nbytes
    size = Headline.at_least(f"GQA ({model.config.n_heads} → {n_kv} kv heads) cache × smaller", smaller,
                             GQA_SIZE_TARGET, "×")
    name = (f"GQA ({model.config.n_heads} → {n_kv} kv heads) perplexity cost against the multi-head model trained as "
            f"long: the smallest of {len(FAIR_SEEDS)} seeds")
    problem = shipped_problem(ARTEFACTS["ch13_gqa_fair"])
    if problem is not None:      # six training runs: never measured here unasked
        return [size, Headline.unavailable(name, GQA_COST_FLOOR, "%", "≥", f"ch13_gqa_fair {problem}; `python -m "
                                           "minilib zoo rebuild ch13_gqa_fair` trains its six runs")]
    runs = fair_gqa_comparison()          # shipped: both arms trained FAIR_STEPS more steps, per seed
    fair = summarise_fair(runs)
    confounded = 100 * (perplexity(grouped, validation) / base - 1)
    changes = ", ".join(f"{run.change:+.2f}" for run in runs)
    return [size, Headline.at_least(name, fair.low, GQA_COST_FLOOR, "%",
                                    f"mean {fair.mean:+.2f}%, sd {fair.sd:.2f} ({changes}), both arms {FAIR_STEPS} "
                                   f"more steps (shipped: ch13_gqa_fair); the shipped model uptrained {UPTRAIN_STEPS} "
                                   f"steps against the decoder as shipped: {confounded:+.1f}%")]


def _quant_rows(model, base, validation):
    rows = []
    layer_bytes = lambda m: sum(model_size_bytes(layer) for layer in m.layers)   # every linear weight but the tied head
    for fmt, ppl_target in (("q8_0", Q8_PPL_TARGET), ("q4_0", Q4_PPL_TARGET)):
        quantized = quantize_model_blocks(model, fmt)
        worse = 100 * (perplexity(quantized, validation) / base - 1)
        smaller = layer_bytes(model) / layer_bytes(quantized)
        if fmt == "q4_0":
            rows.append(Headline.at_least("q4_0 layer weights × smaller than float32", smaller, Q4_SIZE_TARGET, "×",
                                          "biases and LayerNorms stay float32"))
        rows.append(Headline.at_most(f"{fmt} held-out perplexity change", worse, ppl_target, "%",
                                     f"{smaller:.1f}× smaller layers"))
    return rows


def _kv_cache_rows(model, base, validation):
    worse = {layout: 100 * (perplexity(model, validation, cache_factory=lambda m, b, layout=layout:
                                       QuantizedKVCache.for_model(m, b, bits=4, layout=layout)) / base - 1)
             for layout in ("per_token", "kivi")}
    return [Headline.at_most("4-bit KV cache, keys per channel (KIVI), held-out perplexity change", worse["kivi"],
                             KV4_PPL_TARGET, "%", f"keys per token: {worse['per_token']:+.1f}%")]


def _speculative_rows(model, prompt):
    drafts = {"a 5-gram table": ngram_draft(5), "the 1-layer network": draft_model()}
    plans = {name: _plan(model, draft, prompt) for name, draft in drafts.items()}      # (plan, costs, α) each
    runs = {name: functools.partial(speculative_generate, model, draft, prompt, NEW, k=plan.k,
                                    min_confidence=plan.min_confidence)
            for (name, draft), (plan, _, _) in zip(drafts.items(), plans.values())}
    greedy = generate(model, prompt, NEW)
    same = {name: run().tokens.equal(greedy) for name, run in runs.items()}
    timing = compare({"target alone": lambda: generate(model, prompt, NEW), **runs},     # interleaved: load hits all alike
                     baseline="target alone", warmup=1, repeats=9)
    rows = []
    for (name, (plan, costs, alpha)), target in zip(plans.items(), (SPECULATIVE_TARGET, NETWORK_DRAFT_TARGET)):
        verify = ", ".join(f"{costs.verify[k]:.2f}" for k in (1, 2, 4, MAX_K))
        rows.append(Headline.at_least(f"speculative decoding, {name} as the draft (k and stopping rule chosen from "
                                      "this machine's pass costs) × faster", timing.ratio(name), target, "×",
                                      f"{plan.describe()}; identical tokens: {same[name]}; "
                                      f"draft pass {costs.draft:.3f} of a target pass, "
                                      f"verifying k = 1, 2, 4, {MAX_K} costs {verify} passes; α = {alpha:.2f}; "
                                      f"predicted {plan.predicted:.2f}×", also=same[name]))
    return rows


def _plan(model, draft, prompt):
    """(the planner's choice, the measured pass costs, α) for ``draft``."""
    costs = pass_costs(model, draft, prompt, max_k=MAX_K)
    alpha = acceptance_rate(speculative_generate(model, draft, prompt, CALIBRATION, k=4), 4)
    return keep_rule_if_it_pays(plan_speculation(costs, alpha), model, draft, prompt, CALIBRATION), costs, alpha
