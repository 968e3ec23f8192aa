"""Chapter 13's planner: k from the measured pass costs, the draft's stopping rule from the cost model, and the
rule kept only where a timed trial says it pays. No timing is asserted: only what the plan may contain."""
import torch

from minilib.experiments.ch13_fast_generation import (
    PassCosts,
    SpeculationPlan,
    keep_rule_if_it_pays,
    plan_speculation,
)
from minilib.generation import expected_speedup
from minilib.transformer import LanguageModel, TransformerConfig


def test_the_plan_maximises_the_cost_model_and_stops_below_its_break_even():
    costs = PassCosts(target_step=1e-3, draft=0.2, verify={1: 1.2, 2: 1.3, 3: 1.4, 4: 1.6, 5: 2.4})
    plan = plan_speculation(costs, alpha=0.75)
    best = max(costs.verify, key=lambda k: expected_speedup(0.75, k, 0.2, costs.verify[k]))
    assert plan.k == best == 3 and plan.predicted == expected_speedup(0.75, 3, 0.2, 1.4)
    assert abs(plan.min_confidence - plan.predicted * (0.2 + 0.4 / 3)) < 1e-12    # S · (c_draft + δ)
    assert plan.describe() == f"k ≤ 3, the draft stops below {plan.min_confidence:.0%} confidence"
    assert plan._replace(min_confidence=None).describe() == "k ≤ 3, the draft always drafts k"


def test_the_rule_is_kept_or_dropped_never_changed_and_a_plan_without_one_is_left_alone():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64, dropout=0.0)
    target, draft = LanguageModel(config).eval(), LanguageModel(config).eval()
    prompt = torch.randint(0, 20, (1, 8))
    plan = SpeculationPlan(k=3, min_confidence=0.4, predicted=1.2)
    chosen = keep_rule_if_it_pays(plan, target, draft, prompt, new_tokens=16, repeats=1)
    assert chosen.k == 3 and chosen.predicted == 1.2 and chosen.min_confidence in (0.4, None)
    always = plan._replace(min_confidence=None)
    assert keep_rule_if_it_pays(always, target, draft, prompt, new_tokens=16) is always
