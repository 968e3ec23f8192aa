"""Checks for chapter 10 (Hugging Face in practice): tiny random BERTs stand in for MiniLM, so each check takes a second.

The chapter's "build it" check: fine-tune a classifier's head and export it to ONNX.
"""
from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import torch

from minilib.course.checks.core import (
    CheckFailed,
    exercise,
    expect_close,
    expect_equal,
    expect_number,
    padded_batch,
    with_gradients,
)
from minilib.course.checks.guards import COURSE, guarded

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["This is a great movie!", "Not bad at all.", "Boring, far too long.", "I loved the music but not the plot.",
         "An average film.", "Terrible acting."]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from minilib.deploy.hf import load_tokenizer

    return load_tokenizer()


def padded_texts() -> tuple[torch.Tensor, torch.Tensor]:
    """TEXTS through MiniLM's tokenizer, padded to the longest: (input_ids, attention_mask), both (6, longest)."""
    batch = _tokenizer()(TEXTS, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def tiny_bert(n_layers: int = 2, seed: int = 0):
    """A randomly initialised ``BertForSequenceClassification`` with MiniLM's vocabulary and three named labels."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=_tokenizer().vocab_size, hidden_size=32, num_hidden_layers=n_layers,
                        num_attention_heads=2, intermediate_size=64, num_labels=3, id2label=LABELS,
                        label2id={name: i for i, name in LABELS.items()},
                        initializer_range=0.2)  # larger random weights than BERT's 0.02: texts get different classes
    return BertForSequenceClassification(config).eval()


@exercise(points=1)
def check_predict_label(fn):
    """The label name of the arg-max class, on a tiny random 3-class BERT and six texts."""
    model, tokenizer = tiny_bert(), _tokenizer()
    for text in TEXTS:
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits
        expected = LABELS[logits.argmax(-1).item()]
        got = fn(model, tokenizer, text)
        if isinstance(got, int) or (isinstance(got, torch.Tensor) and got.numel() == 1):
            raise CheckFailed(f"label of {text!r}", repr(expected), repr(got),
                              hint="argmax gives a class id; model.config.id2label turns it into a name")
        expect_equal(f"label of {text!r}", got, expected, hint="tokenize, run the model, take argmax of .logits, look it up in id2label")


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@exercise(points=2)
def check_freeze_all_but_top(fn):
    """Only the pooler, the classifier and the top n_top layers keep requires_grad, for n_top = 0, 1, 3 of 3 layers."""
    for n_top in (0, 1, 3):
        model = tiny_bert(n_layers=3)
        count = fn(model, n_top)
        expected_modules = [model.bert.pooler, model.classifier, *list(model.bert.encoder.layer)[3 - n_top:]]
        expected = {name for name, p in model.named_parameters()
                    if any(p is q for module in expected_modules for q in module.parameters())}
        got = _trainable(model)
        expect_equal(f"parameters left trainable with n_top={n_top} (names, sorted)", sorted(got), sorted(expected),
                     hint="freeze everything first; then unfreeze pooler, classifier and the last n_top layers "
                          "(careful: layer[-0:] is every layer)")
        expect_number(f"returned count with n_top={n_top}", count,
                      sum(p.numel() for p in model.parameters() if p.requires_grad),
                      hint="count the elements (p.numel()) of the parameters with requires_grad")


@exercise(points=2)
def check_onnx_logits(fn):
    """Logits of a tiny BERT exported to ONNX, run through your call, equal the PyTorch model's."""
    import onnxruntime as ort

    from minilib.deploy.export import LogitsOnly, export_onnx

    model = LogitsOnly(tiny_bert()).eval()
    ids, mask = padded_texts()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, ids[:2, :5], mask[:2, :5], Path(folder) / "tiny.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(ids, mask)
        expect_close(f"logits of {len(TEXTS)} padded texts", fn(session, ids, mask), expected, atol=1e-4,
                     hint="session.run(['logits'], {'input_ids': ..., 'attention_mask': ...}) with int64 NumPy arrays; "
                          "convert the first output back with torch.from_numpy")


# --- the "build it" exercise ------------------------------------------------------------

def _tiny_bert_classifier():
    """A small randomly initialised BertForSequenceClassification without dropout, and four labelled batches.

    The head's weights are of size ~1 (not BERT's 0.02), so that AdamW's weight decay (lr · 0.01 · w a step) is
    far above the comparison's tolerance: Adam, which has none, is told apart.
    """
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(10)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for p in [*model.bert.pooler.parameters(), *model.classifier.parameters()]:
            p.normal_(0, 1, generator=generator)
    batches = []
    for _ in range(4):
        input_ids, attention_mask = padded_batch(generator, 120, batch=8, seq=12, n_full=4, length=9)
        batches.append((input_ids, attention_mask, torch.randint(0, 2, (8,), generator=generator)))
    return model, batches


def _train_head(model, batches, optimizer_class, lr):
    """The check's own pass: a copy of ``model`` whose head alone trains, one step per batch."""
    trained = copy.deepcopy(model)
    head = [*trained.bert.pooler.parameters(), *trained.classifier.parameters()]
    optimizer = optimizer_class(head, lr=lr)
    for input_ids, attention_mask, labels in batches:
        optimizer.zero_grad()
        trained(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
    return trained


def _same_parameters(model, other) -> bool:
    return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), other.parameters()))


@exercise(points=4)
@with_gradients
def check_fine_tune_head_and_export(fn):
    """Only the head trains, exactly as AdamW on the model's loss would; the ONNX file gives the model's logits."""
    import onnxruntime

    import minilib.deploy.export as export
    import minilib.support.train as train
    model, batches = _tiny_bert_classifier()
    lr = 1e-2
    reference, with_adam = _train_head(model, batches, torch.optim.AdamW, lr), _train_head(model, batches, torch.optim.Adam, lr)
    with tempfile.TemporaryDirectory() as folder, guarded(
            fn, [export, train, COURSE, "optimum"], "write the training loop and the export yourself: this is what "
                                                   "minilib.deploy.export and minilib.support.train do for the chapter",
            record=False):
        path = fn(model, batches, Path(folder) / "head.onnx", lr=lr)
        if not isinstance(path, (str, Path)) or not Path(path).is_file():
            raise CheckFailed("the path your function returns", "the path of the ONNX file it wrote",
                              repr(path), "return the path you exported to (the `path` argument)")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if _same_parameters(model, with_adam) and not _same_parameters(model, reference):
        raise CheckFailed("the head trained as torch.optim.Adam would", "AdamW's update", "Adam's update",
                          "use torch.optim.AdamW: it decays the weights (weight_decay=0.01 by default, lr · 0.01 · w "
                          "a step, apart from the gradient); Adam has no weight decay by default, and its "
                          "weight_decay is an L2 term inside the gradient, not the same thing")
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        trains = name.startswith(("bert.pooler.", "classifier."))
        expect_close(f"{name} after the pass ({'trained' if trains else 'frozen'})", ours.detach(), theirs.detach(),
                     atol=1e-5, hint="only model.bert.pooler and model.classifier train: requires_grad_(False) on the "
                                     "rest, AdamW(lr=lr) on the head's parameters, one step per batch, zero_grad "
                                     "before each backward" if trains else
                                     "this parameter must stay as it was: freeze it (requires_grad_(False)) and give "
                                     "the optimizer only the head's parameters (AdamW's weight decay moves every "
                                     "parameter it is given)")
    expect_equal("the ONNX graph's inputs", [i.name for i in session.get_inputs()], ["input_ids", "attention_mask"],
                 hint='torch.onnx.export(..., input_names=["input_ids", "attention_mask"], output_names=["logits"])')
    generator = torch.Generator().manual_seed(11)
    input_ids, attention_mask = torch.randint(1, 120, (3, 17), generator=generator), torch.ones(3, 17, dtype=torch.long)
    attention_mask[0, 10:] = 0
    with torch.no_grad():
        expected = model.eval()(input_ids=input_ids, attention_mask=attention_mask).logits
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    try:
        got = torch.from_numpy(session.run(None, feeds)[0])
    except Exception as error:  # onnxruntime rejects a shape that was fixed at export
        raise CheckFailed("running the ONNX file on a batch of 3 sentences of 17 tokens", "the model's logits",
                          f"{type(error).__name__}: {str(error)[:160]}",
                          hint="mark batch (0) and sequence (1) dynamic for both inputs: with dynamo=True, "
                               "dynamic_shapes={name: {0: batch, 1: seq}} where batch, seq = torch.export.Dim('batch'), "
                               "torch.export.Dim('seq'); with the older dynamo=False exporter, "
                               "dynamic_axes={name: {0: 'batch', 1: 'seq'}}") from None
    expect_close("ONNX logits on a batch of 3 sentences of 17 tokens (exported with a different shape)", got, expected,
                 atol=1e-4, hint="export the model in eval mode, returning .logits")
