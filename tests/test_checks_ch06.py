"""Chapter 06's exercise checks pass correct answers however they are written (a loss as a tensor or a Python
float), and fail stubs, mistakes and the library's own losses by whatever route they are reached."""
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


def test_temperature_softmax(stub, refused):
    assert check_temperature_softmax(lambda logits, temperature: torch.softmax(logits / temperature, -1))
    assert check_temperature_softmax(lambda logits, t: (logits / t).exp() / (logits / t).exp().sum(-1, keepdim=True))
    assert not check_temperature_softmax(stub)
    refused(check_temperature_softmax, lambda logits, temperature: soft_targets(logits, temperature),
            "minilib.distill.soft_targets")
    refused(check_temperature_softmax, lambda logits, temperature: torch.softmax(logits * temperature, -1),
            "T = 4", "divide the logits by T")


def test_kd_loss(stub, refused):
    def kd_loss(student, teacher, labels, temperature, alpha):               # the chapter's model answer
        log_p_student = torch.log_softmax(student / temperature, dim=-1)
        log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
        return alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(student, labels)

    def kd_loss_float(student, teacher, labels, temperature, alpha):         # kl_div, and a Python float returned
        soft = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                        reduction="batchmean")
        return float(alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels))

    assert check_kd_loss(kd_loss)
    assert check_kd_loss(kd_loss_float)
    assert not check_kd_loss(stub)
    refused(check_kd_loss, lambda *args: distillation_loss(*args), "minilib.distill.distillation_loss")

    def without_t_squared(student, teacher, labels, temperature, alpha):
        return kd_loss(student, teacher, labels, temperature, alpha) \
            - alpha * (temperature ** 2 - 1) / temperature ** 2 * kd_loss(student, teacher, labels, temperature, 1.0)

    def kl_summed_over_batch(student, teacher, labels, temperature, alpha):
        soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                        reduction="sum", log_target=True)
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels)

    def reversed_kl(student, teacher, labels, temperature, alpha):          # KL(student ‖ teacher)
        return kd_loss(teacher, student, labels, temperature, alpha) - (1 - alpha) * F.cross_entropy(teacher, labels) \
            + (1 - alpha) * F.cross_entropy(student, labels)

    refused(check_kd_loss, without_t_squared, "T² = 4")
    refused(check_kd_loss, kl_summed_over_batch, "mean over examples")
    refused(check_kd_loss, reversed_kl, "teacher's probabilities weight")
    refused(check_kd_loss, lambda *args: None, "return a tensor of shape ()", "None")


def test_masked_cosine_loss(stub, refused):
    def masked_cosine_loss(student, teacher, mask):                          # the chapter's model answer
        per_token = 1 - F.cosine_similarity(student, teacher, dim=-1)
        return (per_token * mask).sum() / mask.sum()

    def by_selection(student, teacher, mask):                                # normalise by hand, keep real tokens
        s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        return (1 - (s * t).sum(-1))[mask.bool()].mean()

    def sentence_by_sentence(student, teacher, mask):                        # the mean of the sentences' means
        per_token = 1 - F.cosine_similarity(student, teacher, dim=-1)
        return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()

    assert check_masked_cosine_loss(masked_cosine_loss)
    assert check_masked_cosine_loss(by_selection)
    assert not check_masked_cosine_loss(stub)
    refused(check_masked_cosine_loss, lambda s, t, mask: hidden_state_loss(s, t, kind="cosine", attention_mask=mask),
            "minilib.distill.hidden_state_loss")
    refused(check_masked_cosine_loss, lambda s, t, mask: (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
            "padding ignored")
    refused(check_masked_cosine_loss, sentence_by_sentence, "all real tokens of the batch together")


def make_step(t_squared=True, reduction="batchmean", teacher_no_grad=True, zero_grad=True):
    """The model answer of Exercise 6.5, with switches for the mistakes the check must catch."""
    def distillation_step(student, teacher, batch, optimizer, temperature=2.0, alpha=0.5):
        input_ids, attention_mask, labels = batch
        with torch.set_grad_enabled(not teacher_no_grad):
            teacher_logits = teacher(input_ids, attention_mask)
        student_logits = student(input_ids, attention_mask)
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


def step_with_kd_loss(student, teacher, batch, optimizer, temperature=2.0, alpha=0.5):
    """Another correct answer: detach instead of no_grad, the learner's own loss of 6.2, the loss tensor returned."""
    input_ids, attention_mask, labels = batch
    teacher_logits = teacher(input_ids, attention_mask).detach()
    student_logits = student(input_ids, attention_mask)
    log_p_student = torch.log_softmax(student_logits / temperature, dim=-1)
    p_teacher = torch.softmax(teacher_logits / temperature, dim=-1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(-1).mean()
    loss = alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)
    for p in student.parameters():
        p.grad = None
    loss.backward()
    optimizer.step()
    return loss.detach()


def library_step(student, teacher, batch, optimizer, temperature=2.0, alpha=0.5):
    from minilib.distill import distillation_loss
    input_ids, attention_mask, labels = batch
    with torch.no_grad():
        teacher_logits = teacher(input_ids, attention_mask)
    loss = distillation_loss(student(input_ids, attention_mask), teacher_logits, labels, temperature, alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_distillation_step(stub, refused):
    assert check_distillation_step(make_step())
    assert check_distillation_step(step_with_kd_loss)
    assert not check_distillation_step(stub)
    refused(check_distillation_step, library_step, "minilib.distill")
    refused(check_distillation_step, make_step(t_squared=False), "the loss returned", "times T²")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                               # PyTorch warns about this very mistake
        refused(check_distillation_step, make_step(reduction="mean"), "not 'mean'")
    refused(check_distillation_step, make_step(teacher_no_grad=False), "teacher parameters with a gradient")
    refused(check_distillation_step, make_step(zero_grad=False), "zero_grad")


def test_distillation_step_with_gradients_off():
    """Chapters that turn gradients off globally can still run the check."""
    with torch.no_grad():
        assert check_distillation_step(make_step())
