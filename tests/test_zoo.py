"""The fast top-layer fine-tuning behind the sentiment teacher, and its first use without a shipped copy."""
import pytest
import torch
from torch.utils.data import TensorDataset

from minilib.experiments import teacher as teacher_module
from minilib.support.train import TrainConfig
from minilib.transformer import Classifier


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------- top-layer fine-tuning

@pytest.fixture
def tiny_task(padded_tokens):
    """Makes a task: label 1 when token 7 comes before token 8 (order matters: attention is needed)."""
    def make(n=256, seed=0):
        ids, mask = padded_tokens(n, seq_len=10, vocab_size=30, min_len=5, seed=seed)
        first_seven = torch.where(ids == 7, torch.arange(10), 99).min(1).values
        first_eight = torch.where(ids == 8, torch.arange(10), 99).min(1).values
        return TensorDataset(ids, mask, (first_seven < first_eight).long())

    return make


@pytest.fixture
def zoo_classifier(tiny_classifier):
    """A three-layer tiny classifier without dropout, for the top-layer tests."""
    return tiny_classifier(vocab_size=30, n_layers=3, max_len=16, head_dropout=0.0)


@pytest.fixture
def model_and_task(zoo_classifier, tiny_task):
    """The zoo classifier and a 40-sentence task: (model, (ids, mask, labels))."""
    return zoo_classifier, tiny_task(40)


def test_lower_layer_features_equal_the_encoders_hidden_states(model_and_task):
    model, data = model_and_task
    ids, mask, labels = data.tensors
    features = teacher_module.lower_layer_features(model.encoder, 2, data, batch_size=16)
    expected = model.encoder(ids, mask, output_hidden_states=True).hidden_states[2]
    real = mask.bool()
    assert torch.allclose(features.tensors[0][real], expected[real], atol=1e-5)
    assert torch.equal(features.tensors[1], mask) and torch.equal(features.tensors[2], labels)


def test_top_layers_on_features_equal_the_whole_classifier(model_and_task):
    model, data = model_and_task
    ids, mask, _ = data.tensors
    features = teacher_module.lower_layer_features(model.encoder, 1, data)
    top = teacher_module.TopLayers(model, 1)
    assert torch.allclose(top(features.tensors[0], mask), model(ids, mask), atol=1e-5)


def test_fine_tune_top_trains_only_the_top(zoo_classifier, tiny_task):
    model = zoo_classifier
    before = {name: p.clone() for name, p in model.named_parameters()}
    history = teacher_module.fine_tune_top(model, tiny_task(128), tiny_task(64, seed=1), n_trainable=1,
                                config=TrainConfig(epochs=2, lr=1e-2, progress=False))
    assert len(history.val) == 2
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.cpu(), before[name])}  # fit: CUDA if present
    assert changed and all(name.startswith(("encoder.layers.2.", "head.")) for name in changed)
    assert any(name.startswith("encoder.layers.2.") for name in changed) and "head.weight" in changed
    assert all(p.requires_grad for p in model.parameters())  # handed back ready for full training


def test_sentiment_teacher_wiring_and_first_use_training(monkeypatch, tmp_path):
    """The real MiniLM skeleton, with training replaced by a stand-in that only perturbs the head.

    With no shipped copy (an empty data folder) the teacher is trained on first use, with a warning that
    says how to ship it, and then loaded from the learner's own cache.
    """
    builds = []

    def stand_in(classifier, tokenizer):
        builds.append(tokenizer.name_or_path)
        with torch.no_grad():
            classifier.head.bias.fill_(0.5)

    monkeypatch.setenv("MINILIB_DATA", str(tmp_path / "no data"))
    monkeypatch.setattr(teacher_module, "_train_teacher", stand_in)
    with pytest.warns(UserWarning, match="not shipped yet.*rebuild sentiment_teacher"):
        teacher = teacher_module.sentiment_teacher()
    again = teacher_module.sentiment_teacher()
    assert len(builds) == 1
    assert isinstance(teacher, Classifier) and len(teacher.encoder.layers) == 6 and teacher.head.out_features == 2
    assert (again.head.bias == 0.5).all() and not again.training
    ids = torch.tensor([[101, 2025, 2919, 102]])
    assert torch.equal(teacher(ids), again(ids))
