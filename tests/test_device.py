"""One rule on every device: a function that takes a model and data moves the data to the model's device.

Checked without a GPU: the model lives on PyTorch's ``meta`` device (shapes, no data), the data on
the CPU. A helper that forgot to move its inputs stops at the first layer with a device mismatch;
one that moved them runs on meta and stops later (or not at all) with an error only meta tensors
raise ("cannot be called on meta tensors", "Cannot copy out of meta tensor").
"""
import re

import pytest
import torch
from torch.utils.data import TensorDataset

from minilib import distill, metrics, picker, prune
from minilib.deploy import hf
from minilib.experiments import ch06_distillation, ch12_capstone
from minilib.generation import generate
from minilib.support import device as devices
from minilib.support import train
from minilib.transformer import Classifier, Encoder, EncoderDecoder, LanguageModel, TransformerConfig

MISMATCH = re.compile(r"same device|expected device|Expected all tensors|device type", re.IGNORECASE)
META_ONLY = re.compile(r"cannot be called on meta tensors|Cannot copy out of meta tensor")
"""The errors only tensors on the meta device raise: what a helper that moved its inputs there runs into."""
CONFIG = TransformerConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=16, dropout=0.0)


def on_meta(model):
    return model.to("meta").eval()


def classifier():
    torch.manual_seed(0)
    return Classifier(Encoder(CONFIG), n_classes=2, dropout=0.0)


def sentences(n=8, seq=6):
    """(input_ids, attention_mask, labels) on the CPU, the last rows padded."""
    ids = torch.randint(1, CONFIG.vocab_size, (n, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[n // 2:, seq // 2:] = 0
    return TensorDataset(ids * mask, mask, torch.randint(0, 2, (n,)))


def tokens(n=4, seq=6):
    ids = torch.randint(1, CONFIG.vocab_size, (n, seq + 1), generator=torch.Generator().manual_seed(1))
    return TensorDataset(ids[:, :-1], ids[:, 1:])


def hf_tokenizer():
    return hf.load_tokenizer()


HELPERS = {
    "train.fit": lambda: train.fit(on_meta(classifier()), sentences(), train.TrainConfig(device="meta", progress=False)),
    "train.predict_logits": lambda: train.predict_logits(on_meta(classifier()), sentences()),
    "train.accuracy": lambda: train.accuracy(on_meta(classifier()), sentences()),
    "train.evaluate": lambda: train.evaluate(on_meta(classifier()), sentences(), loss_fn=train.classification_loss),
    "metrics.perplexity": lambda: metrics.perplexity(on_meta(LanguageModel(CONFIG)), tokens()),
    "EncoderDecoder.generate": lambda: on_meta(EncoderDecoder(CONFIG)).generate(
        tokens().tensors[0], max_new_tokens=3, bos_id=1, eos_id=2, src_mask=torch.ones(4, 6, dtype=torch.long)),
    "generation.generate": lambda: generate(on_meta(LanguageModel(CONFIG)), tokens().tensors[0], 3),
    "hf.sentence_embeddings": lambda: hf.sentence_embeddings(
        on_meta(Encoder(TransformerConfig(vocab_size=30522, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                                          max_len=32, type_vocab_size=2))), hf_tokenizer(), ["not bad", "good"]),
    "distill.teacher_targets": lambda: distill.teacher_targets(on_meta(classifier()), sentences()),
    "distill.distill": lambda: distill.distill(
        on_meta(classifier()), distill.teacher_targets(classifier(), sentences()), teacher_width=16,
        config=train.TrainConfig(device="meta", progress=False)),
    "prune.head_importance": lambda: prune.head_importance(on_meta(classifier()), sentences()),
    "prune.prune_least_important": lambda: prune.prune_least_important(on_meta(classifier()), sentences(),
                                                                       head_fraction=0.5),
    "picker.measure_classifiers": lambda: picker.measure_classifiers(
        {"meta": on_meta(classifier())}, {"meta": 1}, sentences(), warmup=0, repeats=1),
    "ch12_capstone.latency_seconds": lambda: ch12_capstone.latency_seconds(on_meta(classifier()), "phone", sentences(), 1),
    "ch12_capstone.changes_by_template": lambda: ch12_capstone.changes_by_template(
        on_meta(classifier()), on_meta(classifier()), sentences(), [0] * 8),
    "ch06_distillation.latency_comparison": lambda: ch06_distillation.latency_comparison(
        {"meta": on_meta(classifier())}, sentences(), repeats=1),
}


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_helper_moves_its_inputs_to_the_models_device(name):
    try:
        HELPERS[name]()
    except Exception as error:  # a meta-only error means the inputs reached the model's device
        assert not MISMATCH.search(str(error)), f"{name} left its inputs on the CPU: {error}"
        assert META_ONLY.search(str(error)), f"{name} failed for another reason: {type(error).__name__}: {error}"


def _raising(error):
    def helper():
        raise error
    return helper


def test_the_check_tells_a_meta_only_error_from_any_other():
    """A helper that breaks for an unrelated reason (a TypeError, say) must fail the test above, not pass it."""
    for error, passes in ((RuntimeError("Tensor.item() cannot be called on meta tensors"), True),
                          (TypeError("forward() got an unexpected keyword argument 'x'"), False),
                          (RuntimeError("Expected all tensors to be on the same device"), False)):
        HELPERS["broken"] = _raising(error)
        try:
            if passes:
                test_helper_moves_its_inputs_to_the_models_device("broken")
            else:
                with pytest.raises(AssertionError):
                    test_helper_moves_its_inputs_to_the_models_device("broken")
        finally:
            del HELPERS["broken"]


def test_model_device_and_to_device():
    model = on_meta(classifier())
    assert devices.model_device(model) == torch.device("meta")
    assert devices.model_device(torch.nn.ReLU()) == torch.device("cpu")   # nothing to ask: the CPU
    batch = {"ids": torch.ones(2, 3), "pair": (torch.zeros(1), "text"), "n": 3}
    moved = devices.to_device(batch, "meta")
    assert moved["ids"].is_meta and moved["pair"][0].is_meta and moved["pair"][1] == "text" and moved["n"] == 3


def test_minilib_device_overrides_the_default_and_names_what_is_there(monkeypatch):
    monkeypatch.setenv("MINILIB_DEVICE", "cpu")
    assert devices.get_device() == torch.device("cpu")
    absent = f"cuda:{torch.cuda.device_count()}"   # one past the last GPU: never present
    monkeypatch.setenv("MINILIB_DEVICE", absent)
    with pytest.raises(ValueError, match=rf"MINILIB_DEVICE='{absent}' is not a device of this machine; found: cpu"):
        devices.get_device()
    monkeypatch.setenv("MINILIB_DEVICE", "gpu please")
    with pytest.raises(ValueError, match="found: cpu"):
        devices.get_device()
