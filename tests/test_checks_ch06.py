"""Chapter 06's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import warnings

import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_distillation_step,
    check_kd_loss,
    check_masked_cosine_loss,
    check_temperature_softmax,
)
from minilib.distill import distillation_loss, hidden_state_loss, soft_targets


def test_temperature_softmax(stub):
    assert check_temperature_softmax(lambda logits, temperature: torch.softmax(logits / temperature, -1))
    assert not check_temperature_softmax(lambda logits, temperature: soft_targets(logits, temperature))   # the library's
    assert not check_temperature_softmax(stub)
    assert not check_temperature_softmax(lambda logits, temperature: torch.softmax(logits * temperature, -1))


def test_kd_loss(stub):
    def kd_loss(student, teacher, labels, temperature, alpha):               # the chapter's model answer
        log_p_student = torch.log_softmax(student / temperature, dim=-1)
        log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
        return alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(student, labels)

    assert check_kd_loss(kd_loss)
    assert not check_kd_loss(lambda *args: distillation_loss(*args))                    # the library's own loss
    assert not check_kd_loss(stub)

    def without_t_squared(student, teacher, labels, temperature, alpha):
        return distillation_loss(student, teacher, labels, temperature, alpha) \
            - alpha * (temperature ** 2 - 1) * distillation_loss(student, teacher, labels, temperature, 1.0) / temperature ** 2

    def kl_summed_over_batch(student, teacher, labels, temperature, alpha):
        soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                        reduction="sum", log_target=True)
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels)

    assert not check_kd_loss(without_t_squared)
    assert not check_kd_loss(kl_summed_over_batch)


def test_masked_cosine_loss(stub):
    def masked_cosine_loss(student, teacher, mask):                          # the chapter's model answer
        per_token = 1 - F.cosine_similarity(student, teacher, dim=-1)
        return (per_token * mask).sum() / mask.sum()

    assert check_masked_cosine_loss(masked_cosine_loss)
    assert not check_masked_cosine_loss(lambda s, t, mask: hidden_state_loss(s, t, kind="cosine", attention_mask=mask))
    assert not check_masked_cosine_loss(stub)
    assert not check_masked_cosine_loss(lambda s, t, mask: (1 - F.cosine_similarity(s, t, dim=-1)).mean())


def make_step(t_squared=True, reduction="batchmean", teacher_no_grad=True, zero_grad=True, library=False):
    """The model answer of Exercise 6.5, with switches for the mistakes the check must catch."""
    def distillation_step(student, teacher, batch, optimizer, temperature=2.0, alpha=0.5):
        input_ids, attention_mask, labels = batch
        with torch.set_grad_enabled(not teacher_no_grad):
            teacher_logits = teacher(input_ids, attention_mask)
        student_logits = student(input_ids, attention_mask)
        if library:
            from minilib.distill import distillation_loss
            loss = distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)
        else:
            soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                            F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction=reduction)
            loss = (alpha * (temperature ** 2 if t_squared else 1.0) * soft
                    + (1 - alpha) * F.cross_entropy(student_logits, labels))
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()
    return distillation_step


def test_distillation_step(stub):
    assert check_distillation_step(make_step())
    assert not check_distillation_step(stub)
    assert not check_distillation_step(make_step(library=True))
    assert not check_distillation_step(make_step(t_squared=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                               # PyTorch warns about this very mistake
        assert not check_distillation_step(make_step(reduction="mean"))  # divides by the classes too
    assert not check_distillation_step(make_step(teacher_no_grad=False))
    assert not check_distillation_step(make_step(zero_grad=False))


def test_distillation_step_with_gradients_off():
    """Chapters that turn gradients off globally can still run the check."""
    with torch.no_grad():
        assert check_distillation_step(make_step())
