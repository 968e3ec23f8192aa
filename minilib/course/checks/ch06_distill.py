"""Checks for chapter 06 (knowledge distillation)."""
import math

import torch
import torch.nn.functional as F

from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import forbidden_calls
import minilib.distill as distill


@exercise(points=1)
def check_temperature_softmax(fn):
    """softmax(z / T) on hand-made logits, at T = 1 and T = 4."""
    with forbidden_calls(fn, [(distill, "soft_targets")],
                         "divide by T and take the softmax yourself: minilib.distill.soft_targets is the answer"):
        logits = torch.tensor([[math.log(4.0), 0.0], [2.0, 2.0]])
        expect_close("T = 1 on logits [[ln 4, 0], [2, 2]]", fn(logits, 1.0), torch.tensor([[0.8, 0.2], [0.5, 0.5]]),
                     hint="at T = 1 this is the ordinary softmax over the last dimension")
        softened = torch.tensor([[4 ** 0.25 / (4 ** 0.25 + 1), 1 / (4 ** 0.25 + 1)], [0.5, 0.5]])
        expect_close("T = 4 on logits [[ln 4, 0], [2, 2]]", fn(logits, 4.0), softened,
                     hint="divide the logits by T before the softmax: a higher T gives a flatter distribution")


@exercise(points=3)
def check_kd_loss(fn):
    """α · T² · KL(teacher ‖ student) at temperature T + (1 − α) · cross-entropy, on a hand case and random ones."""
    with forbidden_calls(fn, [(distill, "distillation_loss")],
                         "put the loss together yourself (kl_div and cross_entropy are fine): minilib.distill.distillation_loss is the answer"):
        student, teacher, labels = torch.zeros(1, 2), torch.tensor([[2 * math.log(3.0), 0.0]]), torch.tensor([1])
        # at T = 2 the teacher's soft targets are [3/4, 1/4], the student's [1/2, 1/2]
        kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
        expect_close("teacher only (α = 1, T = 2) on a hand case", fn(student, teacher, labels, 2.0, 1.0),
                     torch.tensor(4 * kl), hint="KL(p_teacher ‖ p_student) at temperature T, multiplied by T² = 4")
        expect_close("labels only (α = 0)", fn(student, teacher, labels, 2.0, 0.0), torch.tensor(math.log(2.0)),
                     hint="with α = 0 the loss is the ordinary cross-entropy with the labels, at temperature 1")
        generator = torch.Generator().manual_seed(6)
        student, teacher = torch.randn(8, 3, generator=generator), 3 * torch.randn(8, 3, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        for temperature, alpha in [(1.0, 0.5), (4.0, 0.3)]:
            soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                            reduction="batchmean", log_target=True)
            expected = alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels)
            expect_close(f"random batch of 8 × 3 logits, T = {temperature}, α = {alpha}",
                         fn(student, teacher, labels, temperature, alpha), expected,
                         hint="average the KL over the batch (sum over classes, mean over examples)")


@exercise(points=2)
def check_masked_cosine_loss(fn):
    """1 − cos(student, teacher) averaged over real tokens only."""
    with forbidden_calls(fn, [(distill, "hidden_state_loss")],
                         "average 1 − cos over the real tokens yourself: minilib.distill.hidden_state_loss is the answer"):
        student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (batch 1, seq 3, width 2)
        teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
        mask = torch.tensor([[1, 1, 0]])  # the third token is padding
        expect_close("two real tokens: same direction (0) and orthogonal (1), padding ignored",
                     fn(student, teacher, mask), torch.tensor(0.5),
                     hint="per token 1 − cos; then average over the tokens whose mask is 1")
        expect_close("no padding (the third pair points in opposite-ish directions)", fn(student, teacher, torch.ones(1, 3)),
                     torch.tensor((0 + 1 + 1 + 2 ** -0.5) / 3),
                     hint="with every mask entry 1 it is the plain mean over tokens")
