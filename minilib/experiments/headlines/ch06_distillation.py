"""Chapter 06's headline: a distilled student keeps ≥ 97% of its teacher at a fraction of the cost.

DistilBERT (Sanh et al., 2019) kept 97% of BERT's GLUE score with 40% fewer parameters, 60% faster.
Here the bar is higher: at most 40% of the teacher's parameters and at least 2× faster. The student keeps
2 of the teacher's 6 layers and a rank-96 factorised embedding table (see ``minilib.experiments.ch06_distillation.chapter_student``).
The setting is the classic one where distillation pays: 2000 sentences of which 200 keep their label; the
distilled student also learns the teacher's soft targets and layers on all 2000, the label-only student
trains on the 200 alone, for as many steps. Results over 3 seeds are cached (``minilib.experiments.ch06_distillation.run_students``).
"""
from __future__ import annotations

from minilib.deploy.hf import load_tokenizer
from minilib.experiments.ch06_distillation import (
    accuracy_by,
    chapter_runs,
    chapter_student,
    latency_comparison,
    run_students,
    teacher_accuracy,
)
from minilib.experiments.teacher import sentiment_teacher
from minilib.support.bench import Headline, param_count
from minilib.support.data import sentiment_dataset

DISTILLED, BASELINE = "logits + layers", "labels only"


def headlines() -> list[Headline]:
    teacher = sentiment_teacher()
    splits = sentiment_dataset(load_tokenizer())
    runs = chapter_runs()["methods"]
    by_method = accuracy_by(run_students(teacher, splits, runs))
    student = chapter_student(teacher, runs[0].n_layers, runs[0].embedding_rank)
    teacher_acc = teacher_accuracy(teacher, splits.test)
    (mean, spread, n), (base_mean, base_spread, _) = by_method[DISTILLED], by_method[BASELINE]
    speed = latency_comparison({"teacher": teacher, "student": student}, splits.test).ratio("student")
    size = 100 * param_count(student) / param_count(teacher)
    shape = f"{runs[0].n_layers} of 6 layers, rank-{runs[0].embedding_rank} embedding table"
    return [
        Headline.at_most("distilled student's parameters", size, 40.0, "% of teacher",
                 f"{param_count(student) / 1e6:.1f}M vs {param_count(teacher) / 1e6:.1f}M ({shape})"),
        Headline.at_least("distilled student's speed-up", speed, 2.0, "×",
                 "batch 32 × the test set's padded length, median, interleaved with the teacher"),
        Headline.at_least("distilled student's accuracy", 100 * mean / teacher_acc, 97.0, "% of teacher",
                 f"{100 * mean:.1f} ± {100 * spread:.1f}% over {n} seeds vs teacher {100 * teacher_acc:.1f}%"),
        Headline.at_least("gain over the label-only student", 100 * (mean - base_mean), 100 * (spread + base_spread),
                          "points",
                 f"{DISTILLED} vs {BASELINE} ({100 * base_mean:.1f} ± {100 * base_spread:.1f}%); "
                 "target: the two seed spreads added"),
    ]
