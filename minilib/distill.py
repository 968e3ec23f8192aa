"""Knowledge distillation: a small student learns to imitate a large teacher (chapter 06).

The pieces, in the order the chapter uses them:

1. Losses. :func:`distillation_loss` is Hinton et al. (2015): match the teacher's *softened*
   distribution at temperature T (scaled by T²) and the true labels. :func:`hidden_state_loss` and
   :func:`attention_loss` transfer intermediate layers: TinyBERT's hidden-state MSE (Jiao et al., 2019) and
   an MSE between attention distributions, closer to MiniLM's attention transfer (Wang et al., 2020).
2. Students. :func:`student_from_teacher` keeps every other teacher layer (DistilBERT, Sanh et al., 2019);
   :func:`student_from_scratch` builds a narrower, shallower encoder with random weights.
3. Training. :func:`teacher_targets` runs the teacher *once* over a dataset and stores its outputs next to
   the inputs, so that :func:`distill` (which reuses :func:`minilib.support.train.fit`) never runs the teacher again.

Unlabelled examples carry the label :data:`UNLABELLED` (-100, PyTorch's ``ignore_index``): they learn from
the teacher only.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from minilib.arch import FactorisedEmbedding
from minilib.support.device import model_device
from minilib.support.train import TrainConfig, fit, trim_padding
from minilib.transformer import Classifier, Encoder

UNLABELLED = -100


# ----------------------------------------------------------------------------------------------- losses
def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softened class probabilities p_i = exp(z_i / T) / Σ_j exp(z_j / T). logits (..., classes)."""
    _check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al. (2015): L = α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels).

    student_logits, teacher_logits: (batch, classes); labels: (batch,) class ids, or :data:`UNLABELLED`
    for examples without a label (they only get the soft term), or None when no example has one.
    alpha weighs the teacher (α = 0: labels only, α = 1: teacher only). The T² factor keeps the soft
    term's gradients the same size whatever T is: ∂KL/∂z shrinks like 1/T².
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be (batch, classes); got student "
                         f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}")
    _check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weighs the teacher against the labels and must be in [0, 1]; got {alpha}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    # KL(p_t ‖ p_s) = Σ_i p_t,i (log p_t,i − log p_s,i), averaged over the batch; kl_div takes 0 · log 0 = 0,
    # so a class the teacher rules out (logit −∞, p_t,i = 0) adds nothing instead of NaN
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * _label_loss(student_logits, labels)


def _label_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged over the labelled examples; 0 when the batch has none."""
    if labels is None:
        return logits.new_zeros(())
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be (batch,) = {tuple(logits.shape[:1])}; got {tuple(labels.shape)}")
    labelled = labels != UNLABELLED
    if not labelled.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[labelled], labels[labelled])


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (1 = the ordinary softmax); got {temperature}")


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: nn.Module | None = None,
                      kind: str = "mse", attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Match one layer's token vectors: TinyBERT's MSE(H_s W_h, H_t) or DistilBERT's 1 − cos(H_s W_h, H_t).

    student_hidden (batch, seq, d_student), teacher_hidden (batch, seq, d_teacher); ``projection`` maps
    d_student → d_teacher (TinyBERT's W_h, needed when the widths differ). attention_mask (batch, seq):
    1 = real token; padding positions are left out of the average.
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden states must have equal shapes (batch, seq, width); got student "
                         f"{tuple(student_hidden.shape)} and teacher {tuple(teacher_hidden.shape)}"
                         + ("" if projection is not None else
                            "; when the widths differ, pass projection=nn.Linear(d_student, d_teacher)"))
    teacher_hidden = teacher_hidden.detach().to(student_hidden.dtype)
    if kind == "mse":
        per_token = (student_hidden - teacher_hidden).pow(2).mean(-1)  # (batch, seq)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)
    else:
        raise ValueError(f"kind must be 'mse' or 'cosine'; got {kind!r}")
    return _masked_mean(per_token, _token_weights(attention_mask, per_token))


def attention_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention transfer: MSE between attention distributions (after the softmax), (batch, heads, seq, seq) each.

    Matching the distributions is closer to MiniLM's self-attention transfer (Wang et al., 2020, which uses
    the KL divergence between them) than to TinyBERT's, which matches the unnormalised scores QKᵀ/√d.

    The student needs the teacher's number of heads (each student head copies one teacher head).
    Rows of padding queries and columns of padding keys are left out when attention_mask is given.
    """
    if student_attention.shape != teacher_attention.shape:
        raise ValueError(f"attention maps must have equal shapes (batch, heads, seq, seq); got student "
                         f"{tuple(student_attention.shape)} and teacher {tuple(teacher_attention.shape)}")
    per_entry = (student_attention - teacher_attention.detach().to(student_attention.dtype)).pow(2)
    if attention_mask is None:
        return per_entry.mean()
    real = attention_mask.to(per_entry.dtype)
    weights = (real[:, None, :, None] * real[:, None, None, :]).expand_as(per_entry)  # query and key both real
    return _masked_mean(per_entry, weights)


def _token_weights(attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if attention_mask is None else attention_mask.to(like.dtype)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform mapping: student hidden state m ↔ teacher hidden state m · N / M (m = 0 … M).

    Index 0 is the embeddings, index m the output of layer m (as in ``EncoderOutput.hidden_states``).
    """
    if not 0 < n_student <= n_teacher:
        raise ValueError(f"a student needs between 1 and the teacher's {n_teacher} layers; got {n_student}")
    return [round(m * n_teacher / n_student) for m in range(n_student + 1)]


# --------------------------------------------------------------------------------------------- students
def student_from_teacher(teacher: Classifier, layers: list[int] | None = None,
                         embedding_rank: int | None = None) -> Classifier:
    """DistilBERT's initialisation: a copy of the teacher keeping only ``layers`` (default every other one).

    Embeddings and the classification head are copied too, so the student starts close to the teacher.
    ``embedding_rank`` r also shrinks the word-embedding table (vocab × d, half of MiniLM's parameters) to
    ALBERT's factorised form vocab × r then r × d, initialised by truncated SVD: E ≈ (U_r S_r) V_rᵀ.
    """
    n_teacher = len(teacher.encoder.layers)
    layers = list(range(0, n_teacher, 2)) if layers is None else list(layers)
    if not layers or any(not 0 <= i < n_teacher for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct indices in [0, {n_teacher}); got {layers}")
    student = copy.deepcopy(teacher)
    student.encoder.layers = nn.ModuleList(student.encoder.layers[i] for i in layers)
    student.encoder.config = dataclasses.replace(teacher.encoder.config, n_layers=len(layers))
    if embedding_rank is not None:
        student.encoder.embeddings.token = factorised_embedding(student.encoder.embeddings.token, embedding_rank)
    return student


def factorised_embedding(embedding: nn.Embedding, rank: int) -> FactorisedEmbedding:
    """The best rank-r approximation of an embedding table (Eckart–Young), as vocab × r and r × d factors."""
    vocab, width = embedding.weight.shape
    if not 0 < rank < width:
        raise ValueError(f"embedding_rank must be in [1, {width - 1}] (the table is {vocab} × {width}); got {rank}")
    u, s, vh = torch.linalg.svd(embedding.weight.detach(), full_matrices=False)
    factorised = FactorisedEmbedding(vocab, rank, width, pad_id=embedding.padding_idx)
    with torch.no_grad():
        factorised.lookup.weight.copy_(u[:, :rank] * s[:rank])   # (vocab, r) = U_r S_r
        factorised.project.weight.copy_(vh[:rank].T)            # (d, r): project(x) = x · V_rᵀ, V_rᵀ = vh[:r]
    return factorised


def student_from_scratch(teacher: Classifier, d_model: int, n_layers: int, n_heads: int | None = None,
                         d_ff: int | None = None, seed: int = 0) -> Classifier:
    """A randomly initialised student with the teacher's vocabulary and head, but its own depth and width.

    n_heads defaults to the teacher's (needed for attention transfer), d_ff to 4 · d_model; ``seed`` seeds
    torch's generator before the weights are drawn.
    """
    config = dataclasses.replace(teacher.encoder.config, d_model=d_model, n_layers=n_layers,
                                 n_heads=teacher.encoder.config.n_heads if n_heads is None else n_heads,
                                 d_ff=4 * d_model if d_ff is None else d_ff)
    torch.manual_seed(seed)
    return Classifier(Encoder(config), teacher.head.out_features, teacher.pooling, teacher.dropout.p)


# ---------------------------------------------------------------------------------------------- training
class TransferColumns(NamedTuple):
    """The columns of a :func:`teacher_targets` dataset, by name.

    ``internals``: the stacked hidden states and/or attentions, when :func:`teacher_targets` was asked for them.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor
    internals: tuple[torch.Tensor, ...] = ()

    @classmethod
    def of(cls, transfer: TensorDataset) -> "TransferColumns":
        input_ids, attention_mask, labels, teacher_logits, *internals = transfer.tensors
        return cls(input_ids, attention_mask, labels, teacher_logits, tuple(internals))

    def dataset(self, with_internals: bool = True) -> TensorDataset:
        """The columns as a dataset again (``with_internals=False``: logits only, for Hinton's loss alone)."""
        return TensorDataset(self.input_ids, self.attention_mask, self.labels, self.teacher_logits,
                             *(self.internals if with_internals else ()))


def teacher_targets(teacher: Classifier, data: TensorDataset, hidden_layers: list[int] = (),
                    attention_layers: list[int] = (), batch_size: int = 128) -> TensorDataset:
    """Run the teacher once: returns (input_ids, attention_mask, labels, teacher_logits[, hiddens][, attentions])
    (:class:`TransferColumns` names them).

    data holds (input_ids, attention_mask, labels). hidden_layers index ``hidden_states`` (0 = embeddings),
    attention_layers index ``attentions``; they come back stacked, (n, len(layers), seq, d) and
    (n, len(layers), heads, seq, seq), stored in float16 to halve their memory.
    """
    input_ids, attention_mask, labels = data.tensors
    device = model_device(teacher)
    outputs: dict[str, list[torch.Tensor]] = {"logits": [], "hidden": [], "attention": []}
    teacher.eval()
    with torch.no_grad():
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            mask = attention_mask[start:start + batch_size].to(device)
            logits, out = forward_with_internals(teacher, ids, mask, bool(hidden_layers), bool(attention_layers))
            outputs["logits"].append(logits.float().cpu())
            if hidden_layers:
                outputs["hidden"].append(torch.stack([out.hidden_states[i] for i in hidden_layers], 1).half().cpu())
            if attention_layers:
                outputs["attention"].append(torch.stack([out.attentions[i] for i in attention_layers], 1).half().cpu())
    tensors = [input_ids, attention_mask, labels] + [torch.cat(chunks) for chunks in outputs.values() if chunks]
    return TensorDataset(*tensors)


def forward_with_internals(model: Classifier, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           hidden_states: bool = True, attentions: bool = False):
    """Logits (batch, classes) and the encoder's ``EncoderOutput`` (hidden states / attentions) in one pass."""
    captured = []
    hook = model.encoder.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(input_ids, attention_mask, output_hidden_states=hidden_states, output_attentions=attentions)
    finally:
        hook.remove()
    return logits, captured[0]


class Distiller(nn.Module):
    """The student plus what is trained alongside it (TinyBERT's projections), and the distillation loss.

    ``forward`` is the student's, so :func:`minilib.support.train.fit` and :func:`minilib.support.train.accuracy` use it
    unchanged; :meth:`loss` reads a batch made by :func:`teacher_targets`.
    Total loss = distillation_loss + hidden_weight · Σ hidden_state_loss + attention_weight · Σ attention_loss.
    """

    def __init__(self, student: Classifier, teacher_width: int, temperature: float = 2.0, alpha: float = 0.5,
                 hidden_weight: float = 0.0, attention_weight: float = 0.0, hidden_kind: str = "mse"):
        super().__init__()
        _check_temperature(temperature)
        self.student, self.temperature, self.alpha = student, temperature, alpha
        self.hidden_weight, self.attention_weight, self.hidden_kind = hidden_weight, attention_weight, hidden_kind
        n_hidden = len(student.encoder.layers) + 1
        d_student = student.encoder.config.d_model
        needs_projection = hidden_weight > 0 and d_student != teacher_width
        self.projections = nn.ModuleList(nn.Linear(d_student, teacher_width) for _ in range(n_hidden)) \
            if needs_projection else None

    def forward(self, input_ids, attention_mask=None, **encoder_kwargs):
        return self.student(input_ids, attention_mask, **encoder_kwargs)

    def loss(self, batch) -> torch.Tensor:
        input_ids, attention_mask, labels, teacher_logits, *teacher_internals = batch
        input_ids, attention_mask = trim_padding(input_ids, attention_mask)  # fit's batches are padded to the longest
        seq = input_ids.shape[1]
        logits, out = forward_with_internals(self.student, input_ids, attention_mask,
                                             hidden_states=self.hidden_weight > 0, attentions=self.attention_weight > 0)
        loss = distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha)
        if self.hidden_weight > 0:
            teacher_hidden = teacher_internals.pop(0)  # (batch, layers, seq, d_teacher)
            for m, student_hidden in enumerate(out.hidden_states):
                projection = None if self.projections is None else self.projections[m]
                loss = loss + self.hidden_weight * hidden_state_loss(
                    student_hidden, teacher_hidden[:, m, :seq], projection, self.hidden_kind, attention_mask)
        if self.attention_weight > 0:
            teacher_attention = teacher_internals.pop(0)  # (batch, layers, heads, seq, seq)
            for m, student_attention in enumerate(out.attentions):
                loss = loss + self.attention_weight * attention_loss(
                    student_attention, teacher_attention[:, m, :, :seq, :seq], attention_mask)
        return loss


def _distiller_loss(model: Distiller, batch) -> torch.Tensor:
    return model.loss(batch)


def distill(student: Classifier, targets: TensorDataset, teacher_width: int, temperature: float = 2.0,
            alpha: float = 0.5, hidden_weight: float = 0.0, attention_weight: float = 0.0, hidden_kind: str = "mse",
            config: TrainConfig = TrainConfig(), val_data: TensorDataset | None = None):
    """Train ``student`` on ``targets`` (from :func:`teacher_targets`) with :func:`minilib.support.train.fit`.

    targets must hold the teacher's hidden states for every student hidden state (see :func:`layer_map`)
    when hidden_weight > 0, and its attention maps for every student layer when attention_weight > 0.
    ``config`` says how long and how fast (its loss is the distillation loss, whatever it names). Returns fit's
    History; the student is trained in place. ``val_data`` must come from :func:`teacher_targets` too: it is scored
    with the distillation loss (accuracy: :func:`minilib.support.train.accuracy`).
    """
    n_extras = len(targets.tensors) - 4
    wanted = (hidden_weight > 0) + (attention_weight > 0)
    if n_extras != wanted:
        raise ValueError(f"targets carry {n_extras} kinds of teacher internals but hidden_weight={hidden_weight} and "
                         f"attention_weight={attention_weight} need {wanted}; build them with teacher_targets("
                         f"hidden_layers=..., attention_layers=...)")
    distiller = Distiller(student, teacher_width, temperature, alpha, hidden_weight, attention_weight, hidden_kind)
    return fit(distiller, targets, dataclasses.replace(config, loss_fn=_distiller_loss, metric_fn=None), val_data)
