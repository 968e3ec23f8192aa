"""Checks for chapter 10 (Hugging Face in practice): tiny random BERTs stand in for MiniLM, so each check takes a second."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["This is a great movie!", "Not bad at all.", "Boring, far too long.", "I loved the music but not the plot.",
         "An average film.", "Terrible acting."]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from minilib.hf import load_tokenizer

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
        expect_equal(f"returned count with n_top={n_top}", count,
                     sum(p.numel() for p in model.parameters() if p.requires_grad),
                     hint="count the elements (p.numel()) of the parameters with requires_grad")


@exercise(points=2)
def check_onnx_logits(fn):
    """Logits of a tiny BERT exported to ONNX, run through your call, equal the PyTorch model's."""
    import onnxruntime as ort

    from minilib.export import LogitsOnly, export_onnx

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
