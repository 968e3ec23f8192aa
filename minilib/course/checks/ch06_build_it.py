"""Chapter 06's "build it" check: one distillation training step, its loss, gradients and update."""
import copy

import torch

from minilib.course.checks.core import exercise, expect_close, expect_equal, padded_batch, with_gradients
from minilib.course.checks.guards import forbidden_calls


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
    import minilib.distill as distill
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
    targets = [(distill, "distillation_loss"), (distill, "soft_targets"), (distill, "Distiller"),
               (distill, "_label_loss")]
    with forbidden_calls(fn, targets, "write the loss yourself: α·T²·KL(p_teacher^T ‖ p_student^T) + (1 − α)·CE"):
        got_loss = fn(student, teacher, batch, torch.optim.SGD(student.parameters(), lr=0.5), temperature, alpha)
    expect_close(f"the loss returned (T = {temperature}, α = {alpha})", torch.as_tensor(float(got_loss)),
                 loss.detach(), atol=1e-5,
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
