"""Chapter 14's compression claims, on its trained Llama-style decoder (6 layers, width 384, BPE vocabulary 8,192):

* 4-bit GPTQ (groups of 128): a perplexity increase at most half of round-to-nearest's at the same bytes, and a
  perplexity within 2% of llmcompressor's with the same settings (AWQ too, where llmcompressor's AWQ can run: it
  needs a GPU);
* 3-bit, where this small decoder separates the methods (at 4 bits round-to-nearest costs only +0.08%): GPTQ's and
  AWQ's increase clearly below round-to-nearest's (at most three quarters of it);
* SmoothQuant W8A8: perplexity within 2% of float32's and of llmcompressor's; its speed with chapter 07's int8
  kernel against float32, measured here (one forward pass of 4 × 256 tokens);
* Wanda and SparseGPT at 50% and 2:4: perplexity below magnitude pruning's, and within 2% of llmcompressor's.

The perplexities come from the chapter's shipped table (``ch14_compression``: every method run once by minilib and
by llmcompressor, the same calibration and held-out text; ``python -m minilib zoo rebuild
ch14_compression`` measures it again, in tens of minutes); the speed is measured on this machine.
"""
from minilib.experiments.artefacts import ArtefactError, shipped_problem
from minilib.experiments.ch14_modern_decoders import (
    COMPRESSION,
    calibration_ids,
    compression_results,
    decoder,
    held_out,
)
from minilib.experiments.llm_compression import forward_speed
from minilib.quant.smoothquant import smoothquant_w8a8
from minilib.support.bench import Headline
from minilib.support.train import set_seed

HALF_OF_RTN, THREE_QUARTERS, WITHIN = 0.5, 0.75, 2.0      # × round-to-nearest's increase, ×, % at most
SPEED_SEQUENCES = 4


def headlines():
    problem = shipped_problem(COMPRESSION)
    if problem is not None:      # never measure the whole table here unasked: hours on a busy laptop
        raise ArtefactError(f"{problem}; `python -m minilib zoo rebuild ch14_compression` measures "
                            "every row (tens of minutes on a quiet CPU)", COMPRESSION.name)
    set_seed(0)
    table = compression_results()
    return [*_quantizer_rows(table), *_w8a8_rows(table), *_pruner_rows(table)]


def _beside_llmcompressor(table, label: str) -> Headline:
    ours, theirs = table.perplexity(label), table.perplexity(label, "llmcompressor")
    name = f"{label} perplexity above llmcompressor's"
    if "unavailable" in table.rows[label]["llmcompressor"]:     # e.g. its AWQ without a GPU
        return Headline.unavailable(name, WITHIN, "%", "≤", table.rows[label]["llmcompressor"]["unavailable"])
    return Headline.at_most(name, 100 * (ours / theirs - 1), WITHIN, "%",
                            f"{ours:.3f} vs {theirs:.3f}")


def _increase_ratio(table, label: str, floor: str, target: float) -> Headline:
    ratio = table.increase(label) / table.increase(floor)
    same_bytes = table.rows[label]["ours"]["bytes"] == table.rows[floor]["ours"]["bytes"]
    return Headline.at_most(f"{label} perplexity increase / {floor}'s", ratio, target, "×",
                            f"+{table.increase(label):.2f}% vs +{table.increase(floor):.2f}% over float32; "
                            f"same bytes: {same_bytes}", also=same_bytes)


def _quantizer_rows(table):
    return [_increase_ratio(table, "GPTQ 4-bit g128", "round-to-nearest 4-bit g128", HALF_OF_RTN),
            _beside_llmcompressor(table, "GPTQ 4-bit g128"),
            _beside_llmcompressor(table, "AWQ 4-bit g128"),
            _increase_ratio(table, "GPTQ 3-bit g128 act-order", "round-to-nearest 3-bit g128", THREE_QUARTERS),
            _increase_ratio(table, "AWQ 3-bit g128", "round-to-nearest 3-bit g128", THREE_QUARTERS)]


def _w8a8_rows(table):
    label = "SmoothQuant W8A8 α=0.5"
    model = decoder()
    smoothed = smoothquant_w8a8(model, calibration_ids()[:SPEED_SEQUENCES])
    speed = forward_speed({"float32": model, "W8A8": smoothed}, held_out().tensors[0][:SPEED_SEQUENCES])
    ratio = speed.ratio("W8A8")
    return [Headline.at_most(f"{label} perplexity above float32's", table.increase(label), WITHIN, "%",
                             f"plain W8A8: +{table.increase('W8A8'):.2f}%"),
            _beside_llmcompressor(table, label),
            Headline.at_least("SmoothQuant W8A8 forward speed / float32's (4 × 256 tokens, our int8 kernel)", ratio,
                              1.0, "×", f"{1e3 * speed.timings['W8A8'].median:.0f} vs "
                                        f"{1e3 * speed.timings['float32'].median:.0f} ms")]


def _pruner_rows(table):
    rows = []
    for pattern in ("50%", "2:4"):
        magnitude = table.perplexity(f"magnitude {pattern}")
        for method in ("Wanda", "SparseGPT"):
            label = f"{method} {pattern}"
            rows += [Headline.at_most(f"{label} perplexity / magnitude pruning's", table.perplexity(label) / magnitude,
                                      1.0, "×", f"{table.perplexity(label):.3f} vs {magnitude:.3f}"),
                     _beside_llmcompressor(table, label)]
    return rows
