"""Chapter 08's claims, on the course's fine-tuned sentiment model (MiniLM's weights in a minilib Classifier):

* removing the least important 50% of attention heads and 50% of FFN neurons makes it at least 1.6× faster
  (batch 32, sequence 128) and costs at most 2 points of accuracy against the unpruned model given the same
  one-epoch fine-tune (the control: the teacher itself was fine-tuned only in its top layer);
* 90% unstructured sparsity, baked into dense weights, is *not* faster (ratio about 1.0): a dense kernel
  multiplies zeros as fast as anything else;
* the sparsity from which a CSR sparse matmul beats the dense one on this CPU (measured, not assumed).
"""
import copy

import torch

from minilib import prune
from minilib.deploy.hf import load_tokenizer
from minilib.experiments.ch08_pruning import crossover_sparsity, sparse_vs_dense
from minilib.experiments.teacher import fine_tune_top, sentiment_teacher
from minilib.support.bench import Headline, compare, param_count
from minilib.support.data import sentiment_dataset
from minilib.support.train import TrainConfig, accuracy, set_seed

BATCH, SEQ = 32, 128
FRACTION = 0.5         # of heads and of FFN neurons
MASK_SPARSITY = 0.9    # unstructured
FINE_TUNE_LR = 1e-4    # one epoch over the training split, embeddings frozen


def headlines():
    set_seed(0)
    teacher = sentiment_teacher().eval()
    splits = sentiment_dataset(load_tokenizer())
    structured = copy.deepcopy(teacher)
    prune.prune_least_important(structured, splits.validation, head_fraction=FRACTION, neuron_fraction=FRACTION)
    masked = copy.deepcopy(teacher)
    prune.apply_masks(masked.encoder, prune.magnitude_masks(masked.encoder, MASK_SPARSITY))
    prune.remove_masks(masked)  # plain dense weights, 90% of them zero

    input_ids = torch.randint(1000, teacher.encoder.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        timing = compare({name: (lambda m=m: m(input_ids, attention_mask)) for name, m in
                          [("dense", teacher), ("structured", structured), ("masked", masked)]},
                         baseline="dense", warmup=2, repeats=10)

    accuracies = {"teacher": accuracy(teacher, splits.test), "pruned": accuracy(structured, splits.test)}
    control = copy.deepcopy(teacher)
    for model in (structured, control):
        fine_tune_top(model, splits.train, n_trainable=len(model.encoder.layers),
                      config=TrainConfig(lr=FINE_TUNE_LR, progress=False))
    accuracies["pruned, fine-tuned"] = accuracy(structured, splits.test)
    accuracies["unpruned, same fine-tune"] = accuracy(control, splits.test)
    drop = 100 * (max(accuracies["teacher"], accuracies["unpruned, same fine-tune"]) - accuracies["pruned, fine-tuned"])

    points = sparse_vs_dense(sparsities=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999))
    crossover = crossover_sparsity(points)
    speedups = ", ".join(f"{p.sparsity:.1%}: {p.speedup:.2f}×" for p in points)
    shape = f"batch {BATCH}, seq {SEQ}"
    return [
        Headline.at_least(f"remove 50% heads + 50% FFN neurons: × faster ({shape})", timing.ratio("structured"), 1.6, "×",
                 f"{param_count(teacher) / 1e6:.1f}M → {param_count(structured) / 1e6:.1f}M parameters"),
        Headline.at_most("… accuracy drop after a 1-epoch fine-tune, vs the better unpruned model (points)", drop, 2.0, "points",
                 ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in accuracies.items())),
        Headline.about(f"90% unstructured sparsity, dense kernels: × faster ({shape}; about 1 = no gain)",
                       timing.ratio("masked"), 1.0, "×",
                 "the zeros are multiplied like any other number"),
        Headline.at_most("CSR matmul beats dense from this sparsity (1536×384 weight, 256 tokens; measured)",
                         float("nan") if crossover is None else crossover, 0.999, "sparsity", f"CSR speed-up by sparsity: {speedups}"),
    ]
