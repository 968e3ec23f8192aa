"""Checks for chapter 06 (knowledge distillation).

The chapter's "build it" check: one distillation training step, its loss, gradients and update.
"""
import copy
import math

import torch
import torch.nn.functional as F

import minilib.distill as distill
from minilib.course.checks.core import as_number, exercise, expect_close, expect_equal, padded_batch, with_gradients
from minilib.course.checks.guards import COURSE, guarded

_DISTILL = [distill, COURSE]


@exercise(points=1)
def check_temperature_softmax(fn):
    """softmax(z / T) on hand-made logits, at T = 1 and T = 4."""
    logits = torch.tensor([[math.log(4.0), 0.0], [2.0, 2.0]])
    with guarded(fn, _DISTILL, "divide by T and take the softmax yourself: minilib.distill.soft_targets is the answer"):
        cold, warm = fn(logits, 1.0), fn(logits, 4.0)
    expect_close("T = 1 on logits [[ln 4, 0], [2, 2]]", cold, torch.tensor([[0.8, 0.2], [0.5, 0.5]]),
                 hint="at T = 1 this is the ordinary softmax over the last dimension")
    softened = torch.tensor([[4 ** 0.25 / (4 ** 0.25 + 1), 1 / (4 ** 0.25 + 1)], [0.5, 0.5]])
    expect_close("T = 4 on logits [[ln 4, 0], [2, 2]]", warm, softened,
                 hint="divide the logits by T before the softmax: a higher T gives a flatter distribution")


@exercise(points=3)
def check_kd_loss(fn):
    """α · T² · KL(teacher ‖ student) at temperature T + (1 − α) · cross-entropy, on a hand case and random ones."""
    hint = "put the loss together yourself (kl_div and cross_entropy are fine): minilib.distill.distillation_loss is the answer"
    student, teacher, labels = torch.zeros(1, 2), torch.tensor([[2 * math.log(3.0), 0.0]]), torch.tensor([1])
    # at T = 2 the teacher's soft targets are [3/4, 1/4], the student's [1/2, 1/2]
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    generator = torch.Generator().manual_seed(6)
    random = torch.randn(8, 3, generator=generator), 3 * torch.randn(8, 3, generator=generator)
    random_labels = torch.randint(0, 3, (8,), generator=generator)
    settings = [(1.0, 0.5), (4.0, 0.3)]
    with guarded(fn, _DISTILL, hint):
        teacher_only, labels_only = fn(student, teacher, labels, 2.0, 1.0), fn(student, teacher, labels, 2.0, 0.0)
        got = [fn(*random, random_labels, temperature, alpha) for temperature, alpha in settings]
    expect_close("teacher only (α = 1, T = 2) on a hand case", teacher_only, torch.tensor(4 * kl),
                 hint="KL(p_teacher ‖ p_student) at temperature T (the teacher's probabilities weight the log-ratio), "
                      "multiplied by T² = 4")
    expect_close("labels only (α = 0)", labels_only, torch.tensor(math.log(2.0)),
                 hint="with α = 0 the loss is the ordinary cross-entropy with the labels, at temperature 1")
    for (temperature, alpha), answer in zip(settings, got):
        soft = F.kl_div(F.log_softmax(random[0] / temperature, -1), F.log_softmax(random[1] / temperature, -1),
                        reduction="batchmean", log_target=True)
        expected = alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(random[0], random_labels)
        expect_close(f"random batch of 8 × 3 logits, T = {temperature}, α = {alpha}", answer, expected,
                     hint="average the KL over the batch (sum over classes, mean over examples), and take the "
                          "cross-entropy at temperature 1")


@exercise(points=2)
def check_masked_cosine_loss(fn):
    """1 − cos(student, teacher) averaged over real tokens only."""
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (batch 1, seq 3, width 2)
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 7, 16, generator=generator), torch.randn(3, 7, 16, generator=generator)
    random_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    with guarded(fn, _DISTILL, "average 1 − cos over the real tokens yourself: minilib.distill.hidden_state_loss "
                               "is the answer"):
        padded, unpadded = fn(student, teacher, mask), fn(student, teacher, torch.ones(1, 3, dtype=torch.long))
        batch = fn(*hidden, random_mask)
    expect_close("two real tokens: same direction (0) and orthogonal (1), padding ignored", padded, torch.tensor(0.5),
                 hint="per token 1 − cos; then average over the tokens whose mask is 1")
    expect_close("no padding (the third pair points in opposite-ish directions)", unpadded,
                 torch.tensor((0 + 1 + 1 + 2 ** -0.5) / 3), hint="with every mask entry 1 it is the plain mean over tokens")
    per_token = 1 - F.cosine_similarity(*hidden, dim=-1)
    expect_close("3 sentences of 7, 4 and 2 real tokens", batch, per_token[random_mask.bool()].mean(),
                 hint="average over all real tokens of the batch together, not sentence by sentence")


# --- the "build it" exercise ------------------------------------------------------------

def _distillation_models(seed: int):
    """A small teacher and student (minilib Classifiers, no dropout) and one labelled batch with padding."""
    from minilib.transformer import Classifier, Encoder, TransformerConfig
    torch.manual_seed(seed)
    teacher_config = TransformerConfig(vocab_size=50, d_model=64, n_heads=2, n_layers=2, d_ff=128, dropout=0.0)
    teacher = Classifier(Encoder(teacher_config), n_classes=3, dropout=0.0)
    student = Classifier(Encoder(TransformerConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=1, d_ff=64,
                                                   dropout=0.0)), n_classes=3, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    input_ids, attention_mask = padded_batch(generator, 50, batch=6, seq=10, n_full=3, length=7)  # 3 padded
    labels = torch.randint(0, 3, (6,), generator=generator)
    return teacher, student, (input_ids, attention_mask, labels)


@exercise(points=4)
@with_gradients
def check_distillation_step(fn):
    """One step of your distillation training: same loss, same student gradients and update as the reference."""
    temperature, alpha = 4.0, 0.7
    teacher, student, batch = _distillation_models(6)
    reference = copy.deepcopy(student)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    with torch.no_grad():
        teacher_logits = teacher(batch[0], batch[1])
    loss = distill.distillation_loss(reference(batch[0], batch[1]), teacher_logits, batch[2], temperature, alpha)
    loss.backward()
    expected_grads = [p.grad.clone() for p in reference.parameters()]
    optimizer.step()

    for p in student.parameters():  # gradients left over from an earlier step: a step must start from zero
        p.grad = torch.ones_like(p)
    with guarded(fn, [distill, COURSE], "write the loss yourself: α·T²·KL(p_teacher^T ‖ p_student^T) + (1 − α)·CE"):
        got_loss = fn(student, teacher, batch, torch.optim.SGD(student.parameters(), lr=0.5), temperature, alpha)
    expect_close(f"the loss returned (T = {temperature}, α = {alpha})",
                 torch.tensor(as_number("the loss your step returns", got_loss)), loss.detach(), atol=1e-5,
                 hint="KL(p_teacher ‖ p_student) at temperature T, summed over classes and averaged over the batch "
                      "(F.kl_div(..., reduction='batchmean'), not 'mean'), times T², weighted by α; plus (1 − α) "
                      "times the cross-entropy with the labels at T = 1")
    expect_equal("teacher parameters with a gradient", sum(p.grad is not None for p in teacher.parameters()), 0,
                 hint="the teacher is fixed: compute its logits under torch.no_grad() (or detach them)")
    for (name, param), expected in zip(student.named_parameters(), expected_grads):
        expect_close(f"gradient of the student's {name}", param.grad, expected, atol=1e-5,
                     hint="call optimizer.zero_grad() before loss.backward(): gradients add up across steps")
    for (name, param), expected in zip(student.named_parameters(), reference.parameters()):
        expect_close(f"the student's {name} after the step", param.detach(), expected.detach(), atol=1e-5,
                     hint="finish with optimizer.step()")
