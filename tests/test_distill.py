"""minilib.distill against hand computations and PyTorch's own losses; chapter 06's runs (minilib.experiments.ch06_distillation)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from minilib.arch import FactorisedEmbedding
from minilib.distill import (
    UNLABELLED,
    Distiller,
    TransferColumns,
    attention_loss,
    distill,
    distillation_loss,
    factorised_embedding,
    hidden_state_loss,
    layer_map,
    soft_targets,
    student_from_scratch,
    student_from_teacher,
    teacher_targets,
)
from minilib.experiments.ch06_distillation import (
    METHODS,
    StudentRun,
    accuracy_by,
    chapter_student,
    hide_labels,
    latency_comparison,
    run_students,
    train_student,
)
from minilib.support.data import Splits
from minilib.support.train import TrainConfig, predict_logits
from minilib.transformer import Classifier, Encoder, TransformerConfig


# ------------------------------------------------------------------------------------------- the soft loss
def test_loss_on_a_hand_computed_case():
    student, teacher, labels = torch.zeros(1, 2), torch.tensor([[2 * math.log(3.0), 0.0]]), torch.tensor([1])
    # T = 2: teacher soft targets [3/4, 1/4], student [1/2, 1/2]; KL = 3/4 ln(3/2) + 1/4 ln(1/2); CE = ln 2
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * 4 * kl + 0.5 * math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_loss_matches_torch_kl_div_and_cross_entropy(temperature):
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16, 5), 3 * torch.randn(16, 5), torch.randint(0, 5, (16,))
    kl = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                  reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student, labels)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, temperature, alpha=1.0), temperature ** 2 * kl)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, temperature, alpha=0.0), ce)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, temperature, alpha=0.3),
                               0.3 * temperature ** 2 * kl + 0.7 * ce)


def test_a_class_the_teacher_rules_out_adds_nothing_like_kl_div():
    """A teacher logit of −∞ (probability 0): kl_div with a probability target takes 0 · log 0 = 0, so must we."""
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 4, requires_grad=True), 3 * torch.randn(8, 4)
    teacher[:, 2] = -math.inf                                             # e.g. a class masked out for every example
    teacher[0, 0] = -math.inf
    loss = distillation_loss(student, teacher, None, temperature=2.0, alpha=1.0)
    kl = F.kl_div(F.log_softmax(student / 2.0, -1), F.softmax(teacher / 2.0, -1), reduction="batchmean")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, 4.0 * kl)
    (gradient,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(gradient).all()


def test_t_squared_keeps_gradients_the_same_size():
    torch.manual_seed(0)
    teacher = 4 * torch.randn(64, 3)
    teacher = teacher - teacher.mean(-1, keepdim=True)

    def gradient_norm(temperature, scaled):
        student = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = distillation_loss(student, teacher, None, temperature, alpha=1.0)
        (loss if scaled else loss / temperature ** 2).backward()
        return student.grad.norm().item()

    scaled = [gradient_norm(t, scaled=True) for t in (4.0, 8.0, 16.0)]
    unscaled = [gradient_norm(t, scaled=False) for t in (4.0, 8.0, 16.0)]
    assert max(scaled) / min(scaled) < 1.3           # with T²: about the same at every T
    assert unscaled[0] / unscaled[-1] > 10            # without it: 16× smaller from T = 4 to T = 16


def test_soft_targets_flatten_with_temperature():
    logits = torch.tensor([3.0, 1.0, 0.0])
    torch.testing.assert_close(soft_targets(logits, 1.0), torch.softmax(logits, -1))
    entropies = [-(p * p.log()).sum().item() for p in (soft_targets(logits, t) for t in (0.5, 1.0, 4.0, 100.0))]
    assert entropies == sorted(entropies) and entropies[-1] == pytest.approx(math.log(3), abs=1e-3)


def test_unlabelled_examples_learn_from_the_teacher_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 2), torch.randn(4, 2)
    labels = torch.tensor([1, UNLABELLED, 0, UNLABELLED])
    soft = distillation_loss(student, teacher, None, 2.0, alpha=1.0)
    ce_on_labelled = F.cross_entropy(student[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(distillation_loss(student, teacher, labels, 2.0, 0.5), 0.5 * soft + 0.5 * ce_on_labelled)
    none_labelled = torch.full((4,), UNLABELLED)
    torch.testing.assert_close(distillation_loss(student, teacher, none_labelled, 2.0, 0.5), 0.5 * soft)


@pytest.mark.parametrize("kwargs, message", [
    (dict(student_logits=torch.zeros(4, 2), teacher_logits=torch.zeros(4, 3)), "logits"),
    (dict(student_logits=torch.zeros(4), teacher_logits=torch.zeros(4)), "logits"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), "labels"),
])
def test_loss_bad_input(kwargs, message):
    args = dict(student_logits=torch.zeros(4, 2), teacher_logits=torch.zeros(4, 2),
                labels=torch.zeros(4, dtype=torch.long)) | kwargs
    with pytest.raises(ValueError, match=message):
        distillation_loss(**args)


# ------------------------------------------------------------------------------------- intermediate layers
def test_hidden_state_loss_mse_and_cosine():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(hidden_state_loss(student, teacher), F.mse_loss(student, teacher))
    torch.testing.assert_close(hidden_state_loss(student, teacher, kind="cosine"),
                               (1 - F.cosine_similarity(student, teacher, dim=-1)).mean())
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded_elsewhere = teacher.clone()
    padded_elsewhere[0, 3:] = 100.0
    torch.testing.assert_close(hidden_state_loss(student, padded_elsewhere, attention_mask=mask),
                               hidden_state_loss(student, teacher, attention_mask=mask))
    real = mask.bool()
    torch.testing.assert_close(hidden_state_loss(student, teacher, attention_mask=mask),
                               F.mse_loss(student[real], teacher[real]))


def test_hidden_state_loss_needs_a_projection_when_widths_differ():
    student, teacher = torch.randn(2, 5, 4), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(student, teacher)
    projection = nn.Linear(4, 8)
    hidden_state_loss(student, teacher, projection).backward()
    assert projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="kind"):
        hidden_state_loss(student, teacher, projection, kind="l1")


def test_attention_loss():
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    teacher = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    assert attention_loss(teacher, teacher).item() == 0
    torch.testing.assert_close(attention_loss(student, teacher), F.mse_loss(student, teacher))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    real = mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    torch.testing.assert_close(attention_loss(student, teacher, mask),
                               F.mse_loss(student[pairs.expand_as(student)], teacher[pairs.expand_as(teacher)]))
    with pytest.raises(ValueError, match="heads"):
        attention_loss(student[:, :2], teacher)


def test_layer_map():
    assert layer_map(3, 6) == [0, 2, 4, 6]
    assert layer_map(6, 6) == list(range(7))
    assert layer_map(1, 6) == [0, 6]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="layers"):
            layer_map(bad, 6)


# ----------------------------------------------------------------------------------------------- students
def tiny_teacher(seed=0, vocab=40, d_model=32, n_layers=4, n_heads=4):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=vocab, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                               d_ff=2 * d_model, max_len=16, dropout=0.0)
    return Classifier(Encoder(config), n_classes=2, dropout=0.0).eval()


def test_student_from_teacher_copies_every_other_layer():
    teacher = tiny_teacher()
    student = student_from_teacher(teacher)
    assert len(student.encoder.layers) == 2 and student.encoder.config.n_layers == 2
    for student_layer, teacher_index in zip(student.encoder.layers, [0, 2]):
        for (name, got), expected in zip(student_layer.state_dict().items(),
                                         teacher.encoder.layers[teacher_index].state_dict().values()):
            torch.testing.assert_close(got, expected, msg=name)
    torch.testing.assert_close(student.encoder.embeddings.token.weight, teacher.encoder.embeddings.token.weight)
    torch.testing.assert_close(student.head.weight, teacher.head.weight)
    with torch.no_grad():  # a copy, not shared weights
        student.encoder.layers[0].ffn.up.weight.zero_()
    assert teacher.encoder.layers[0].ffn.up.weight.abs().sum() > 0
    chosen = student_from_teacher(teacher, layers=[1, 3])
    torch.testing.assert_close(chosen.encoder.layers[1].attn.q_proj.weight, teacher.encoder.layers[3].attn.q_proj.weight)
    ids = torch.randint(1, 40, (3, 7))
    assert student(ids, torch.ones_like(ids)).shape == (3, 2)
    for bad in ([], [0, 4], [1, 1]):
        with pytest.raises(ValueError, match="layers"):
            student_from_teacher(teacher, layers=bad)


def test_factorised_embedding_is_the_best_low_rank_table():
    torch.manual_seed(0)
    table = nn.Embedding(50, 16, padding_idx=0)
    factorised = factorised_embedding(table, rank=4)
    assert isinstance(factorised, FactorisedEmbedding) and factorised.lookup.weight.shape == (50, 4)
    rebuilt = factorised(torch.arange(50))                                     # (50, 16)
    singular_values = torch.linalg.svdvals(table.weight.detach())
    # Eckart–Young: the squared error of the best rank-4 approximation is the sum of the other σ²
    error = (rebuilt - table.weight).pow(2).sum()
    torch.testing.assert_close(error, singular_values[4:].pow(2).sum(), rtol=1e-3, atol=1e-4)
    full = factorised_embedding(table, rank=15)(torch.arange(50))
    assert (full - table.weight).pow(2).sum() < error
    for bad in (0, 16):
        with pytest.raises(ValueError, match="embedding_rank"):
            factorised_embedding(table, bad)


def test_chapter_student_keeps_evenly_spaced_layers_and_a_small_table():
    teacher = tiny_teacher(n_layers=6)
    student = chapter_student(teacher, n_layers=2, embedding_rank=8)
    torch.testing.assert_close(student.encoder.layers[1].ffn.down.weight, teacher.encoder.layers[3].ffn.down.weight)
    assert len(student.encoder.layers) == 2 and student.encoder.embeddings.token.lookup.weight.shape == (40, 8)
    ids = torch.randint(1, 40, (3, 7))
    assert student(ids, torch.ones_like(ids)).shape == (3, 2)


def test_student_from_scratch_is_smaller_and_random():
    teacher = tiny_teacher()
    student = student_from_scratch(teacher, d_model=16, n_layers=2)
    config = student.encoder.config
    assert (config.d_model, config.n_layers, config.n_heads, config.d_ff) == (16, 2, 4, 64)
    assert config.vocab_size == teacher.encoder.config.vocab_size
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2
    ids = torch.randint(1, 40, (3, 7))
    assert student(ids, torch.ones_like(ids)).shape == (3, 2)
    with pytest.raises(ValueError, match="n_heads"):
        student_from_scratch(teacher, d_model=18, n_layers=2)


# ----------------------------------------------------------------------------------------------- training
def token_data(n=256, vocab=40, seq=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=generator)
    mask = torch.ones_like(ids)
    mask[n // 2:, seq // 2:] = 0
    ids = ids * mask
    return TensorDataset(ids, mask, torch.randint(0, 2, (n,), generator=generator))


def test_teacher_targets_store_the_teachers_outputs():
    teacher, data = tiny_teacher(), token_data(n=20)
    targets = teacher_targets(teacher, data, hidden_layers=[0, 2, 4], attention_layers=[1, 3], batch_size=8)
    ids, mask, labels, logits, hidden, attention = targets.tensors
    assert hidden.shape == (20, 3, 8, 32) and attention.shape == (20, 2, 4, 8, 8)
    with torch.no_grad():
        out = teacher.encoder(ids, mask, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(logits, teacher(ids, mask))
    torch.testing.assert_close(hidden[:, 1].float(), out.hidden_states[2], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(attention[:, 1].float(), out.attentions[3], atol=1e-3, rtol=1e-2)
    assert torch.equal(labels, data.tensors[2])
    columns = TransferColumns.of(targets)
    assert columns.teacher_logits is logits and columns.internals == (hidden, attention)
    assert [len(c.tensors) for c in (columns.dataset(), columns.dataset(with_internals=False))] == [6, 4]


def agreement(student, teacher, data):
    """How often the two predict the same class; each may be on its own device (distill trains on CUDA if present)."""
    return (predict_logits(student, data).argmax(-1) == predict_logits(teacher, data).argmax(-1)).float().mean().item()


@pytest.mark.parametrize("hidden_weight, attention_weight", [(0.0, 0.0), (1.0, 1.0)])
def test_distillation_teaches_the_student_the_teachers_function(hidden_weight, attention_weight):
    teacher, train, test = tiny_teacher(), token_data(n=256), token_data(n=256, seed=1)
    student = student_from_scratch(teacher, d_model=16, n_layers=2, seed=1)
    before = agreement(student.eval(), teacher, test)
    unlabelled = TensorDataset(*train.tensors[:2], torch.full((256,), UNLABELLED))
    targets = teacher_targets(teacher, unlabelled, hidden_layers=layer_map(2, 4) if hidden_weight else (),
                              attention_layers=[1, 3] if attention_weight else ())
    history = distill(student, targets, teacher_width=32, temperature=2.0, alpha=1.0, hidden_weight=hidden_weight,
                      attention_weight=attention_weight,
                      config=TrainConfig(epochs=4, batch_size=64, lr=3e-3, progress=False))
    after = agreement(student.eval(), teacher, test)
    assert sum(history.losses[-5:]) < sum(history.losses[:5])
    assert after > max(before, 0.8), (before, after)


def test_distill_refuses_targets_without_the_internals_it_needs():
    teacher, data = tiny_teacher(), token_data(n=16)
    student = student_from_scratch(teacher, d_model=16, n_layers=2)
    with pytest.raises(ValueError, match="hidden_layers"):
        distill(student, teacher_targets(teacher, data), teacher_width=32, hidden_weight=1.0)


def test_distiller_projects_only_when_widths_differ():
    teacher = tiny_teacher()
    assert Distiller(student_from_teacher(teacher), 32, hidden_weight=1.0).projections is None
    narrow = Distiller(student_from_scratch(teacher, d_model=16, n_layers=2), 32, hidden_weight=1.0)
    assert len(narrow.projections) == 3 and narrow.projections[0].weight.shape == (32, 16)


# ----------------------------------------------------------------------------------------- the experiment
def test_hide_labels_keeps_a_balanced_few():
    data = token_data(n=100)
    hidden = hide_labels(data, n_labelled=10, seed=3)
    labels, original = hidden.tensors[2], data.tensors[2]
    kept = labels != UNLABELLED
    assert kept.sum() == 10 and (labels[kept] == 1).sum() == 5
    assert torch.equal(labels[kept], original[kept]) and torch.equal(hidden.tensors[0], data.tensors[0])
    assert torch.equal(hide_labels(data, 10, seed=3).tensors[2], labels)
    assert not torch.equal(hide_labels(data, 10, seed=4).tensors[2], labels)
    for bad in (0, 11, 101):
        with pytest.raises(ValueError, match="n_labelled"):
            hide_labels(data, bad)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_for_the_same_number_of_steps(method):
    teacher = tiny_teacher()
    data = hide_labels(token_data(n=64), n_labelled=16)
    transfer = teacher_targets(teacher, data, hidden_layers=layer_map(1, 4), attention_layers=[3])
    student = student_from_scratch(teacher, d_model=16, n_layers=1)
    history = train_student(method, student, transfer, teacher_width=32,
                            config=TrainConfig(epochs=2, batch_size=16, progress=False))
    assert len(history.losses) == 2 * 64 // 16


def test_train_student_rejects_an_unknown_method():
    teacher = tiny_teacher()
    transfer = teacher_targets(teacher, token_data(n=16))
    with pytest.raises(ValueError, match="method"):
        train_student("dark magic", student_from_scratch(teacher, 16, 1), transfer, 32)


def test_accuracy_by_groups_mean_and_spread():
    results = [{"method": "a", "accuracy": 0.8}, {"method": "a", "accuracy": 0.9}, {"method": "b", "accuracy": 0.5}]
    summary = accuracy_by(results)
    assert summary["a"][0] == pytest.approx(0.85) and summary["a"][1] == pytest.approx(0.0707, abs=1e-4)
    assert summary["b"] == (0.5, 0.0, 1)


def test_run_students_caches_results_per_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path))
    teacher = tiny_teacher()
    splits = Splits(hide_labels(token_data(n=64), 64), token_data(n=16, seed=1), token_data(n=32, seed=2))
    run = StudentRun("logits", n_sentences=48, n_labelled=16, n_layers=1, embedding_rank=8, epochs=1)
    first = run_students(teacher, splits, [run], progress=False)
    assert first[0]["method"] == "logits" and 0 <= first[0]["accuracy"] <= 1
    monkeypatch.setattr("minilib.experiments.ch06_distillation.train_student", lambda *args, **kwargs: pytest.fail("retrained"))
    assert run_students(teacher, splits, [run], progress=False) == first
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # another teacher: its own results
        run_students(tiny_teacher(seed=1), splits, [run], progress=False)


def test_latency_comparison_times_each_model_against_the_first():
    teacher = tiny_teacher()
    comparison = latency_comparison({"teacher": teacher, "student": student_from_teacher(teacher)},
                                    token_data(n=40), repeats=3)
    assert set(comparison.timings) == {"teacher", "student"} and comparison.ratio("teacher") == 1.0
    assert len(comparison.timings["student"].times) == 3
