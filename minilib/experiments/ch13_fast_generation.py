"""Chapter 13's models and measurements: a character-level decoder on Python's documentation, its draft.

``decoder()`` (4 layers, width 256, 8 heads, context 512, 3.3 M parameters), ``draft_model()`` (1 layer,
width 128, distilled from the decoder) and ``grouped_decoder()`` (the decoder with 2 key/value heads,
uptrained) are shipped artefacts (``minilib.experiments.artefacts``): their recipes (``train_decoder``,
``train_draft``, ``uptrain``, seeded) take about a minute on a GPU together, an hour or more on a laptop CPU.
The chapter and its headline rows measure them with the functions below.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from minilib.attention import fold_query_groups, scaled_dot_product_attention, unfold_query_groups
from minilib.experiments.artefacts import Artefact, cached_result, load_model
from minilib.generation import (
    KVCache,
    NGramDraft,
    SpeculativeResult,
    expected_speedup,
    expected_tokens_per_round,
    grouped_query_model,
    new_cache,
    speculative_generate,
)
from minilib.metrics import perplexity
from minilib.support import cache
from minilib.support.bench import compare
from minilib.support.data import CharLMData, char_lm_dataset
from minilib.support.threads import decoding_threads, threads
from minilib.support.train import TrainConfig, fit, init_weights, lm_loss, set_seed
from minilib.transformer import LanguageModel, TransformerConfig

UPTRAIN_STEPS = 320         # 13% of the decoder's 2,490 training steps (the GQA paper uptrains with 5%)
CONTEXT = 512
DECODER = dict(d_model=256, n_heads=8, n_layers=4, d_ff=1024, dropout=0.1)
DRAFT = dict(d_model=128, n_heads=2, n_layers=1, d_ff=512)
GQA_KV_HEADS = 2            # n_heads / 4
FAIR_SEEDS = (0, 1, 2)      # the fair grouped-query comparison: three seeds of each arm
FAIR_STEPS = 120            # 5% of the decoder's training, as the GQA paper uptrains


@functools.cache
def lm_data() -> CharLMData:
    """Python's help topics in blocks of 512 characters (train / validation / test by whole documents)."""
    return char_lm_dataset(block_size=CONTEXT, seed=0)


def lm_config(dropout: float = 0.0, **sizes) -> TransformerConfig:
    """A GPT-2-style (pre-norm) character-level decoder config with the course's vocabulary and context 512."""
    return TransformerConfig(vocab_size=len(lm_data().vocab), max_len=CONTEXT, dropout=dropout, norm_first=True,
                             layer_norm_eps=1e-5, **sizes)


def _fresh(sizes: dict, seed: int):
    def skeleton():
        set_seed(seed)
        return init_weights(LanguageModel(lm_config(**sizes)))
    return skeleton


def train_decoder(model: LanguageModel, epochs: int = 30, seed: int = 0, device=None) -> None:
    """The decoder's recipe: AdamW, lr 2e-3, warm-up then cosine, batches of 8 × 512 characters, 30 epochs.

    About 20 s on a GPU (2,490 steps); on a laptop CPU an hour or more: the trained weights are shipped.
    """
    fit(model, lm_data().train, TrainConfig(loss_fn=lm_loss, metric_fn=None, epochs=epochs, batch_size=8, lr=2e-3,
                                            warmup=0.05, seed=seed, device=device, desc="training chapter 13's decoder"))
    model.cpu().eval()


def distillation_loss(teacher: LanguageModel):
    """loss_fn for ``fit``: KL(teacher ‖ student) of the next-character distributions (chapter 06's soft targets).

    A draft trained to imitate the decoder agrees with its greedy choices more often than one trained on the text.
    """
    def loss(student, batch):
        inputs, _ = batch
        with torch.no_grad():
            target = torch.log_softmax(teacher.to(inputs.device)(inputs), dim=-1)
        return F.kl_div(torch.log_softmax(student(inputs), dim=-1), target, log_target=True, reduction="batchmean") / inputs.shape[1]
    return loss


def train_draft(model: LanguageModel, epochs: int = 24, seed: int = 0, device=None) -> None:
    """The draft's recipe: distilled from :func:`decoder` on the training text, lr 3e-3, 24 epochs (seconds on a GPU)."""
    teacher = decoder()
    fit(model, lm_data().train, TrainConfig(loss_fn=distillation_loss(teacher), metric_fn=None, epochs=epochs,
                                            batch_size=8, lr=3e-3, warmup=0.05, seed=seed, device=device,
                                            desc="distilling chapter 13's draft model"))
    model.cpu().eval()
    teacher.cpu()


def decoder(retrain: bool | None = None) -> LanguageModel:
    """Chapter 13's decoder (eval mode, CPU), as shipped in ``data/``."""
    return load_model(ARTEFACTS["ch13_decoder"], _fresh(DECODER, 0), train_decoder, retrain)


def draft_model(retrain: bool | None = None) -> LanguageModel:
    """Chapter 13's one-layer draft model for speculative decoding (same vocabulary), as shipped."""
    return load_model(ARTEFACTS["ch13_draft"], _fresh(DRAFT, 1), train_draft, retrain)


def ngram_draft(n: int = 5) -> NGramDraft:
    """A draft that is a table: the characters that followed each context of up to n − 1 in the training text,
    counted (a fraction of a second; nothing to ship). n = 5 agreed most often with the decoder's greedy choices."""
    data = lm_data()
    return NGramDraft(data.train.tensors[0], len(data.vocab), n)


def _grouped_and_uptrained(model: LanguageModel) -> None:
    model.load_state_dict(grouped_query_model(decoder(), GQA_KV_HEADS).state_dict())
    uptrain(model, steps=UPTRAIN_STEPS, device=None)


def grouped_decoder(retrain: bool | None = None) -> LanguageModel:
    """The decoder with its key/value heads mean-pooled to 2 and uptrained for ``UPTRAIN_STEPS`` steps, as shipped."""
    return load_model(ARTEFACTS["ch13_decoder_gqa2"], _fresh(dict(DECODER, n_kv_heads=GQA_KV_HEADS), 0),
                      _grouped_and_uptrained, retrain)


def validation_loss(model, n_blocks: int = 22) -> float:
    """Mean next-character loss (nats) on the first ``n_blocks`` held-out blocks; perplexity = exp of it."""
    return math.log(perplexity(model, held_out(n_blocks), batch_size=8))


def held_out(n_blocks: int = 8) -> TensorDataset:
    """The first ``n_blocks`` validation blocks of 512 characters (22 in all)."""
    return TensorDataset(*lm_data().validation[:n_blocks])


def _validation_loss(model) -> dict:
    """The recorded metric of a model artefact."""
    return {"validation_loss": validation_loss(model)}


def uptrain(model: LanguageModel, steps: int = 30, batch_size: int = 8, seed: int = 0, lr: float = 1e-3,
            device="cpu") -> LanguageModel:
    """A short uptraining run (the GQA paper's): ``steps`` batches of ``batch_size`` × 512 training characters."""
    train = lm_data().train
    subset = Subset(train, [i % len(train) for i in range(batch_size * steps)])   # wraps round after an epoch
    fit(model, subset, TrainConfig(loss_fn=lm_loss, metric_fn=None, batch_size=batch_size, lr=lr, warmup=0.1,
                                   seed=seed, device=device, progress=False))
    return model.cpu().eval()


def fair_gqa_loss(n_kv_heads: int, seed: int, steps: int = FAIR_STEPS) -> float:
    """Held-out loss (nats) of the trained decoder after ``steps`` more steps of :func:`uptrain` (seed ``seed``).

    With ``n_kv_heads`` equal to the decoder's heads this trains the multi-head decoder on; with fewer it
    mean-pools the key/value heads first (grouped-query attention). Same data, schedule and seed in both arms,
    so their difference is what grouping costs, not what the extra steps gain. Shipped (``ch13_gqa_fair``).
    """
    def train() -> float:
        model = decoder() if n_kv_heads == DECODER["n_heads"] else grouped_query_model(decoder(), n_kv_heads)
        return validation_loss(uptrain(model, steps=steps, seed=seed, device=None))
    return cached_result(_GQA_FAIR, ["fair", n_kv_heads, seed, steps], train)


class FairRun(NamedTuple):
    seed: int
    multi_head: float           # held-out perplexity of the multi-head decoder trained FAIR_STEPS more steps
    grouped: float              # the same for the grouped decoder, uptrained as many steps

    @property
    def change(self) -> float:
        """Perplexity change of grouping, in percent of the multi-head model trained as long."""
        return 100 * (self.grouped / self.multi_head - 1)


def fair_gqa_comparison(n_kv_heads: int = GQA_KV_HEADS, seeds=FAIR_SEEDS, steps: int = FAIR_STEPS) -> list[FairRun]:
    """Both arms of the fair grouped-query experiment for each seed (perplexities, shipped)."""
    return [FairRun(seed, math.exp(fair_gqa_loss(DECODER["n_heads"], seed, steps)),
                    math.exp(fair_gqa_loss(n_kv_heads, seed, steps))) for seed in seeds]


class FairSummary(NamedTuple):
    mean: float                 # mean perplexity change of grouping over the seeds, percent
    sd: float                   # its sample standard deviation over the seeds (the seed spread), percent
    low: float                  # the smallest and largest change of a seed, percent
    high: float

    @property
    def verdict(self) -> str:
        """What the seeds say together: a cost, a gain, or no difference they can tell from their spread."""
        if self.low > 0:
            return f"every seed's grouped model is worse, by {self.low:.2f}% to {self.high:.2f}%"
        if self.high < 0:
            return f"every seed's grouped model is better, by {-self.high:.2f}% to {-self.low:.2f}%"
        return (f"the seeds disagree in sign ({self.low:+.2f}% to {self.high:+.2f}%): grouping's cost is within "
                "the seed spread here")


def summarise_fair(runs: list[FairRun]) -> FairSummary:
    """Mean, seed spread and range of the perplexity changes of :func:`fair_gqa_comparison`'s runs (2 or more)."""
    changes = [run.change for run in runs]
    return FairSummary(statistics.mean(changes), statistics.stdev(changes), min(changes), max(changes))


def _fair_metrics(results: dict) -> dict:
    """The recorded metric of the shipped results ``{key id: loss}``, read from them (nothing trains here)."""
    def perplexity_of(n_kv_heads: int, seed: int) -> float:
        return math.exp(results[cache.key_id(["fair", n_kv_heads, seed, FAIR_STEPS])])
    runs = [FairRun(seed, perplexity_of(DECODER["n_heads"], seed), perplexity_of(GQA_KV_HEADS, seed))
            for seed in FAIR_SEEDS]
    return {"mean_change_percent": summarise_fair(runs).mean}


def time_per_token(fn, n_tokens: int, repeats: int = 3) -> float:
    """Best of ``repeats`` wall-clock times of ``fn()`` divided by ``n_tokens``: seconds per token."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n_tokens


# ------------------------------------------------------------------------------------------------
# Prefill and decode, apart
# ------------------------------------------------------------------------------------------------

class PrefillDecode(NamedTuple):
    prompt: int                 # prompt length
    batch: int                  # sequences generated together
    first_token: float          # seconds to the first new token: the prefill (time to first token, TTFT)
    per_token: float            # seconds per further token: one decoding step (time per output token, TPOT)

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second while decoding, over the whole batch."""
        return self.batch / self.per_token


@torch.no_grad()
def prefill_and_decode(model, prompt: int, batch: int, new_tokens: int = 16, repeats: int = 3) -> PrefillDecode:
    """Time a prefill of ``batch`` prompts of ``prompt`` held-out characters and the ``new_tokens`` steps after it.

    The prefill runs the output head on the last position only (``logits_to_keep=1``). Medians of ``repeats``.
    """
    inputs = lm_data().validation.tensors[0]
    prompts = inputs[torch.arange(batch) % len(inputs), :prompt]                   # (batch, prompt)
    first, steps = [], []
    for _ in range(repeats):
        cache = KVCache.for_model(model, batch, prompt + new_tokens)
        start = time.perf_counter()
        token = model(prompts, cache=cache, logits_to_keep=1)[:, -1:].argmax(-1)   # (batch, 1)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = model(token, cache=cache)[:, -1:].argmax(-1)
        steps.append((time.perf_counter() - start) / (new_tokens - 1))
    return PrefillDecode(prompt, batch, statistics.median(first), statistics.median(steps))


# ------------------------------------------------------------------------------------------------
# Speculative decoding: what a pass costs here, and the k it calls for
# ------------------------------------------------------------------------------------------------

class PassCosts(NamedTuple):
    """Forward-pass costs measured at one position of a sequence, relative to the target's one-token step."""

    target_step: float          # seconds of the target's one-token pass (with its cache)
    draft: float                # the draft's one-token pass / the target's
    verify: dict                # {k: the target's pass over k + 1 tokens / its one-token pass}

    def speedup(self, alpha: float, k: int) -> float:
        """The cost model's speed-up for drafting k tokens that are each accepted with probability alpha."""
        return expected_speedup(alpha, k, self.draft, self.verify[k])


@torch.no_grad()
def pass_costs(target, draft, prompt, max_k: int = 8, repeats: int = 15) -> PassCosts:
    """Time the target over 1, 2, …, max_k + 1 new tokens and the draft over 1, after ``prompt`` (1, seq) is cached.

    Interleaved (:func:`minilib.support.bench.compare`): a busy spell slows every variant alike.
    """
    caches = {name: new_cache(model, 1, prompt.shape[1] + max_k + 1)
              for name, model in (("target", target), ("draft", draft))}
    for name, model in (("target", target), ("draft", draft)):
        model(prompt, cache=caches[name], logits_to_keep=1)
    seen = prompt.shape[1]
    extra = lm_data().validation.tensors[0][1:2, :max_k + 1]                      # tokens to verify

    def run(model, cache, n):
        def step():
            model(extra[:, :n], cache=cache, logits_to_keep=n)
            cache.truncate(seen)
        return step

    variants = {f"target, {n} tokens": run(target, caches["target"], n) for n in range(1, max_k + 2)}
    variants["draft, 1 token"] = run(draft, caches["draft"], 1)
    with threads(decoding_threads(target, max_k + 1)):         # as speculative_generate runs them
        timing = compare(variants, baseline="target, 1 tokens", warmup=2, repeats=repeats)
    step = timing.timings["target, 1 tokens"].median
    return PassCosts(step, 1 / timing.ratio("draft, 1 token"),
                     {k: 1 / timing.ratio(f"target, {k + 1} tokens") for k in range(1, max_k + 1)})


def acceptance_rate(result: SpeculativeResult, k: int) -> float:
    """The per-token acceptance α that makes the cost model's expected accepted tokens per round equal what a run of
    fixed ``k`` (no early stop) measured: α(1 − α^k) / (1 − α) = accepted / rounds, solved by bisection."""
    per_round = result.accepted / max(result.target_calls, 1)
    low, high = 0.0, 1.0
    for _ in range(50):
        alpha = (low + high) / 2
        low, high = (alpha, high) if expected_tokens_per_round(alpha, k) - 1 < per_round else (low, alpha)
    return (low + high) / 2


class SpeculationPlan(NamedTuple):
    k: int                      # tokens to draft per round, at most
    min_confidence: float | None   # the draft ends its round after a token it is less sure of (None: never)
    predicted: float            # the cost model's speed-up at k

    def describe(self) -> str:
        rule = (f"the draft stops below {self.min_confidence:.0%} confidence" if self.min_confidence is not None
                else "the draft always drafts k")
        return f"k ≤ {self.k}, {rule}"


def plan_speculation(costs: PassCosts, alpha: float) -> SpeculationPlan:
    """The k that maximises the cost model's speed-up with the measured costs, and the draft's stopping rule.

    Drafting one more token costs a draft pass and a longer verification, c_draft + δ (δ: the verification's cost
    per token at k); it earns at most the probability that the token is kept. At the planned speed-up S a round
    earns S per unit of cost, so a token the draft gives a probability below S · (c_draft + δ) costs more than it
    brings: the draft stops there.
    """
    k = max(costs.verify, key=lambda k: costs.speedup(alpha, k))
    predicted = costs.speedup(alpha, k)
    per_token = costs.draft + (costs.verify[k] - 1) / k
    return SpeculationPlan(k, min(predicted * per_token, 0.99), predicted)      # a probability: at most 0.99


def keep_rule_if_it_pays(plan: SpeculationPlan, target, draft, prompt, new_tokens: int = 64,
                         repeats: int = 3) -> SpeculationPlan:
    """``plan``, without its stopping rule unless a short trial says the rule pays here.

    The cost model counts passes, not rounds: each round also costs the verification's call and its bookkeeping,
    so stopping early (more, shorter rounds) can lose what it saves. Both ways are timed on ``new_tokens`` tokens
    after ``prompt``, interleaved (median of ``repeats``); the output is the same either way.
    """
    if plan.min_confidence is None:
        return plan
    run = functools.partial(speculative_generate, target, draft, prompt, new_tokens, k=plan.k)
    timing = compare({"always k": run, "stopping rule": functools.partial(run, min_confidence=plan.min_confidence)},
                     baseline="always k", warmup=1, repeats=repeats)
    return plan if timing.ratio("stopping rule") > 1 else plan._replace(min_confidence=None)


def speedup_explorer(k: int = 4, alpha: float = 0.6, draft_cost: float = 0.15, verify_per_token: float = 0.0,
                     measured: dict | None = None, verify: dict | None = None, max_k: int = 10,
                     planned: float | None = None):
    """The cost model's speed-up against k (1 … max_k): acceptance ``alpha``, a draft pass costing ``draft_cost``
    target passes, verifying k + 1 tokens costing ``verify[k]`` passes when given (measured), else
    1 + ``verify_per_token`` · k (0 where reading the weights dominates, as on a GPU). ``measured``: {k: speed-up
    measured with k drafted every round} drawn on top; ``planned``: the speed-up measured with the planner's
    choice (k at most, the draft stopping early when unsure if that pays), a point of its own. Returns the figure (the chapter's widget redraws it)."""
    import matplotlib.pyplot as plt

    ks = [n for n in range(1, max_k + 1) if verify is None or n in verify]
    cost = (lambda n: verify[n]) if verify is not None else (lambda n: 1 + verify_per_token * n)
    label = "verification measured" if verify is not None else f"verify 1 + {verify_per_token:.2f}·k"
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(ks, [expected_speedup(alpha, n, draft_cost, cost(n)) for n in ks], "-", color="#2b6cb0",
            label=f"predicted: α = {alpha:.2f}, draft {draft_cost:.2f}, {label}")
    chosen = expected_speedup(alpha, k, draft_cost, cost(k))
    ax.plot([k], [chosen], "o", color="#2b6cb0", ms=9)
    right_half = k > (ks[0] + ks[-1]) / 2                        # label towards the middle: never off the figure
    ax.annotate(f"k = {k}: {chosen:.2f}×", (k, chosen), textcoords="offset points", xytext=(-8 if right_half else 8, 8),
                ha="right" if right_half else "left")
    if measured:
        ax.plot(list(measured), list(measured.values()), "x", color="#c53030", ms=10, mew=2,
                label="measured here, k drafted every round")
    if planned is not None:
        ax.plot([k], [planned], "*", color="#2f855a", ms=13, label=f"measured here, the planner's choice (k ≤ {k})")
    ax.axhline(1, color="gray", ls="--", lw=1)
    shown = [chosen, *(measured or {}).values(), *([] if planned is None else [planned])]
    ax.set(xlabel="k, tokens drafted per round", ylabel="speed-up over the target alone", xticks=ks,
           ylim=(0, max(2.0, 1.15 * max(shown))))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Grouped-query attention: bytes read per decoding step, with and without copying the shared heads
# ------------------------------------------------------------------------------------------------

def attention_bytes_per_step(batch: int, n_heads: int, n_kv_heads: int, length: int, head_dim: int,
                             bytes_per_number: int = 4, copy: bool = False) -> int:
    """Bytes one layer's attention moves in one decoding step over ``length`` cached positions.

    Reading the cache: 2 · B · H_kv · T · d. Copying each shared key/value head for its group of query heads
    (``repeat_interleave``) writes 2 · B · H · T · d more and reads them again for the products.
    """
    cache = 2 * batch * n_kv_heads * length * head_dim * bytes_per_number
    copies = 2 * (2 * batch * n_heads * length * head_dim * bytes_per_number)
    return cache + (copies if copy else 0)


@torch.no_grad()
def grouped_step_times(batch: int = 8, n_heads: int = 8, n_kv_heads: int = 2, length: int = 4096,
                       head_dim: int = 32, repeats: int = 10):
    """One decoding step's attention over a cache of ``length`` positions, with the shared heads copied
    (``repeat_interleave``) and indexed in place (queries folded), timed interleaved → a Comparison."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, n_heads, 1, head_dim, generator=generator)
    k, v = (torch.randn(batch, n_kv_heads, length, head_dim, generator=generator) for _ in range(2))
    group = n_heads // n_kv_heads

    def copied():
        return scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))

    def folded():
        return unfold_query_groups(scaled_dot_product_attention(fold_query_groups(q, n_kv_heads), k, v), n_heads)

    torch.testing.assert_close(copied(), folded())
    return compare({"copied heads": copied, "shared heads": folded}, baseline="copied heads", repeats=repeats)


_DATA = "char_lm_dataset(block_size=512, seed=0) of Python's help topics"
_DECODER = Artefact("ch13_decoder", "chapter 13's character-level decoder (4 layers, width 256, 8 heads, context 512)",
                    "model", run=decoder, metrics=_validation_loss, depends=(train_decoder, lm_config, _fresh, lm_data),
                    params={"seed": 0, "sizes": DECODER, "epochs": 30, "lr": 2e-3, "batch_size": 8, "data": _DATA})
ARTEFACTS = {
    "ch13_decoder": _DECODER,
    "ch13_draft": Artefact("ch13_draft", "chapter 13's one-layer draft model, distilled from its decoder", "model",
                           run=draft_model, metrics=_validation_loss,
                           depends=(train_draft, distillation_loss, lm_config, _fresh, lm_data),
                           params={"seed": 0, "init_seed": 1, "sizes": DRAFT, "epochs": 24, "lr": 3e-3, "batch_size": 8,
                                   "data": _DATA},
                           upstream=(_DECODER,)),
    "ch13_decoder_gqa2": Artefact("ch13_decoder_gqa2", "chapter 13's decoder with 2 key/value heads (mean-pooled), "
                                  "uptrained", "model", run=grouped_decoder, metrics=_validation_loss,
                                  depends=(_grouped_and_uptrained, uptrain, lm_config, _fresh, lm_data),
                                  params={"seed": 0, "n_kv_heads": GQA_KV_HEADS, "steps": UPTRAIN_STEPS, "lr": 1e-3,
                                          "batch_size": 8, "data": _DATA},
                                  upstream=(_DECODER,)),
}
_GQA_FAIR = Artefact("ch13_gqa_fair", "chapter 13's fair grouped-query experiment: the decoder trained on and its "
                     "2-key/value-head copy uptrained the same steps, three seeds", "results",
                     run=fair_gqa_comparison, metrics=_fair_metrics,
                     depends=(fair_gqa_loss, fair_gqa_comparison, uptrain, validation_loss, held_out, lm_data),
                     params={"seeds": list(FAIR_SEEDS), "steps": FAIR_STEPS, "n_kv_heads": GQA_KV_HEADS,
                             "lr": 1e-3, "batch_size": 8, "data": _DATA},
                     upstream=(_DECODER,))
ARTEFACTS["ch13_gqa_fair"] = _GQA_FAIR
