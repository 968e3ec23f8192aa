"""Pruning: removing weights, heads and neurons from a Transformer (chapter 08).

Two families, with very different effects on speed:

* **Unstructured** pruning zeroes individual weights (magnitude masks, global or per layer; gradual
  pruning on a cubic schedule, Zhu & Gupta 2017; N:M patterns such as 2:4). The matrices keep their
  shape, so a dense kernel does exactly the same work: masks make a model *compressible*, not faster.
  Speed needs a sparse format (CSR) and enough zeros to beat the dense kernel, or hardware that
  understands the pattern (2:4 on recent NVIDIA GPUs).
* **Structured** pruning removes whole attention heads (Michel et al., 2019, "Are Sixteen Heads
  Really Better than One?") and whole FFN neurons. The matrices shrink, so every kernel does less work.

Both work on ``minilib`` encoders (``Encoder``, ``Classifier``) and on Hugging Face BERT models
(``BertModel``, ``BertForSequenceClassification``, ...): a Transformer layer is found wherever it sits.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from minilib.prune.layer_parts import encoder_layer_parts
from minilib.support.device import model_device
from minilib.support.train import classification_loss

# --------------------------------------------------------------------------------------------------
# Unstructured pruning: masks on individual weights
# --------------------------------------------------------------------------------------------------


def _check_fraction(value, name: str = "sparsity") -> float:
    """``value`` as a float in [0, 1) (the fraction removed), or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction removed), got {value}")
    return float(value)


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight matrix ``(out_features, in_features)`` of every ``nn.Linear`` in ``model``, by module name.

    These are what unstructured pruning prunes. Embeddings are not ``nn.Linear`` and stay dense; to leave a
    classifier head dense too, pass the encoder only (``magnitude_masks(classifier.encoder, 0.9)``).
    For a masked layer this is the *effective* weight (original ⊙ mask).
    """
    weights = {name: module.weight for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if not weights:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to prune")
    return weights


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask (True = keep) shaped like ``weight`` that zeroes exactly round(sparsity · numel) smallest |w|."""
    n_pruned = round(_check_fraction(sparsity) * weight.numel())
    scores = weight.detach().abs().flatten()
    if n_pruned == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = scores.kthvalue(n_pruned).values  # τ = the n_pruned-th smallest |w|
    keep = scores > threshold
    # weights equal to τ (e.g. many zeros): prune just enough of them, the first by position, to be exact
    tied = (scores == threshold).nonzero().squeeze(1)
    keep[tied[n_pruned - int((scores < threshold).sum()):]] = True
    return keep.view_as(weight)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) that zero the fraction ``sparsity`` of ``model``'s linear weights with smallest |w|.

    scope="global": one threshold over all layers together (layers with many small weights lose more);
    scope="layer":  every layer loses exactly round(sparsity · its size) weights.
    Returns ``{module name: bool tensor (out_features, in_features)}``; apply it with :func:`apply_masks`.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = linear_weights(model)
    if scope == "layer":
        return {name: magnitude_mask(w, sparsity) for name, w in weights.items()}
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    keep = magnitude_mask(flat, sparsity)
    sizes = [w.numel() for w in weights.values()]
    return {name: part.view_as(w) for (name, w), part in zip(weights.items(), keep.split(sizes))}


@torch.no_grad()
def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M semi-structured keep-mask: in every group of ``m`` consecutive inputs keep the ``n`` largest |w|.

    weight ``(out_features, in_features)``; groups run along ``in_features``, which ``m`` must divide.
    2:4 is the pattern NVIDIA's sparse tensor cores (Ampere and later) execute at up to 2× the dense
    rate; a CPU has no such instruction, so here 2:4 is 50% sparsity with a layout, not a speed-up.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"N:M needs integers 0 < n <= m, got n={n!r}, m={m!r}")
    if weight.dim() != 2:
        raise ValueError(f"nm_mask expects a weight matrix (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if in_features % m:
        raise ValueError(f"N:M with m={m} needs in_features divisible by {m}, got in_features={in_features}")
    groups = weight.abs().view(out_features, in_features // m, m)  # (out, groups, m)
    kept = groups.topk(n, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, kept, True).view_as(weight)


def nm_masks(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """:func:`nm_mask` for every linear weight of ``model``, by module name (same form as :func:`magnitude_masks`)."""
    masks = {}
    for name, weight in linear_weights(model).items():
        try:
            masks[name] = nm_mask(weight, n, m)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
    return masks


class WeightMask(nn.Module):
    """A parametrization ``weight = original ⊙ mask``: pruned weights read as zero and get zero gradient."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def _mask_of(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, WeightMask)), None)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask ``model``'s linear weights in place: ``weight`` becomes ``original ⊙ mask``.

    Masked weights stay zero while fine-tuning (their gradient is zero). Applying new masks to a masked
    layer replaces its mask. Undo or make permanent with :func:`remove_masks`. Returns ``model``.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"no nn.Linear named {name!r} in {type(model).__name__} to mask")
        if mask.shape != module.weight.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask for {name!r} must be a bool tensor of shape {tuple(module.weight.shape)}, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        mask = mask.to(module.weight.device)
        existing = _mask_of(module)
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask))
        else:
            existing.mask = mask
    return model


def remove_masks(model: nn.Module, keep_pruned: bool = True) -> nn.Module:
    """Remove the masks of :func:`apply_masks`. keep_pruned=True bakes the zeros into plain dense weights
    (what you deploy); keep_pruned=False restores the original weights (undo). Returns ``model``."""
    for module in model.modules():
        if _mask_of(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_pruned)
    return model


@dataclass
class LayerSparsity:
    """One row of a :class:`SparsityReport`."""

    name: str
    shape: tuple[int, ...]
    zeros: int
    size: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size


@dataclass
class SparsityReport:
    """Zeros per linear layer and overall; ``print`` it for a table."""

    layers: list[LayerSparsity]

    @property
    def overall(self) -> float:
        return sum(row.zeros for row in self.layers) / sum(row.size for row in self.layers)

    def __str__(self) -> str:
        width = max(len(row.name) for row in self.layers)
        lines = [f"{'layer':<{width}}  {'shape':>12}  {'sparsity':>8}"]
        lines += [f"{row.name:<{width}}  {str(row.shape):>12}  {row.sparsity:>8.1%}" for row in self.layers]
        lines.append(f"{'overall':<{width}}  {'':>12}  {self.overall:>8.1%}")
        return "\n".join(lines)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """The fraction of zero weights in each linear layer of ``model`` (masked or not) and overall."""
    return SparsityReport([
        LayerSparsity(name, tuple(w.shape), int((w == 0).sum()), w.numel()) for name, w in linear_weights(model).items()
    ])


def cubic_sparsity(step: int, n_steps: int, final_sparsity: float, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − t/n)³ for t = 0 … n.

    Prunes fast at first, while there are many redundant weights, and slowly near the end.
    """
    if not 0 <= step <= n_steps:
        raise ValueError(f"step must be in [0, n_steps={n_steps}], got {step}")
    final_sparsity = _check_fraction(final_sparsity, "final_sparsity")
    initial_sparsity = _check_fraction(initial_sparsity, "initial_sparsity")
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - step / n_steps) ** 3


def gradual_prune(
    model: nn.Module,
    final_sparsity: float,
    n_steps: int,
    fine_tune: Callable[[nn.Module], object],
    scope: str = "global",
    initial_sparsity: float = 0.0,
) -> list[float]:
    """Iterative magnitude pruning: n_steps times, raise the sparsity on the cubic schedule and fine-tune.

    ``fine_tune(model)`` trains the masked model for a while (e.g. a few steps of ``minilib.support.train.fit``);
    the masks stay applied afterwards (see :func:`remove_masks`). Returns the sparsity after each step.
    """
    schedule = [cubic_sparsity(t, n_steps, final_sparsity, initial_sparsity) for t in range(1, n_steps + 1)]
    for sparsity in schedule:
        # weights pruned earlier are zero, hence the smallest: they stay pruned
        apply_masks(model, magnitude_masks(model, sparsity, scope))
        fine_tune(model)
    return schedule


# --------------------------------------------------------------------------------------------------
# Sparse storage: does a sparse matmul beat the dense one?
# --------------------------------------------------------------------------------------------------


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """Compressed Sparse Row form of a 2-D tensor: values, their column indices and row offsets."""
    if weight.dim() != 2:
        raise ValueError(f"CSR needs a 2-D tensor, got shape {tuple(weight.shape)}")
    with warnings.catch_warnings():  # PyTorch warns that CSR support is "beta"; it works for what we do
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.detach().to_sparse_csr()


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes a dense or CSR tensor really occupies (CSR: values + column indices + row offsets)."""
    if tensor.layout == torch.sparse_csr:
        parts = (tensor.values(), tensor.col_indices(), tensor.crow_indices())
        return sum(p.numel() * p.element_size() for p in parts)
    return tensor.numel() * tensor.element_size()


# --------------------------------------------------------------------------------------------------
# Structured pruning: heads and FFN neurons
# --------------------------------------------------------------------------------------------------


def _keep_rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    """A smaller Linear computing only outputs ``index``: W[index, :], b[index]."""
    return linear_from(linear.weight[index], None if linear.bias is None else linear.bias[index])


def _keep_columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    """A smaller Linear reading only inputs ``index``: W[:, index], same bias."""
    return linear_from(linear.weight[:, index], linear.bias)


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding copies of ``weight`` (out, in) and ``bias`` (out,) or None, on their device and dtype."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _check_removal(removal: dict, counts: list[int], what: str) -> dict[int, list[int]]:
    """Validate ``{layer: [indices]}`` against each layer's count; return it with sorted, unique indices."""
    if not isinstance(removal, dict):
        raise TypeError(f"expected {{layer: [{what} indices]}}, got {type(removal).__name__}")
    checked = {}
    for layer, indices in removal.items():
        if not (isinstance(layer, int) and 0 <= layer < len(counts)):
            raise ValueError(f"layer index must be an int in [0, {len(counts) - 1}], got {layer!r}")
        indices = sorted({int(i) for i in indices})
        bad = [i for i in indices if not 0 <= i < counts[layer]]
        if bad:
            raise ValueError(f"layer {layer} has {counts[layer]} {what}s (indices 0…{counts[layer] - 1}), got {bad}")
        if len(indices) == counts[layer]:
            raise ValueError(
                f"refusing to prune all {counts[layer]} {what}s of layer {layer}: the block would compute nothing "
                f"but its bias. Keep at least one {what}, or remove the whole layer from the model instead."
            )
        if indices:
            checked[layer] = indices
    return checked


def _kept(n: int, removed: list[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in set(removed)], dtype=torch.long)


def head_columns(kept_heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices of the kept heads in a (…, heads·head_dim) tensor: h·d_h + 0 … h·d_h + d_h − 1 per head.

    kept_heads ``(k,)`` long -> ``(k·head_dim,)`` long. E.g. heads [0, 2] with d_h = 2 -> [0, 1, 4, 5].
    """
    return (kept_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


@torch.no_grad()
def prune_heads(model: nn.Module, heads: dict[int, list[int]]) -> nn.Module:
    """Physically remove attention heads, in place: ``{layer: [head indices]}``.

    For each removed head h (columns h·d_h … (h+1)·d_h − 1) the Q, K, V projections lose those output rows
    and the output projection loses those input columns, so every matmul of the layer shrinks.
    The result equals the unpruned model with those heads masked (``head_mask`` = 0).
    Indices refer to the layer's current heads (after an earlier pruning they are renumbered 0 … n−1).
    Works on minilib encoders and on Hugging Face BERT models. Returns ``model``.
    """
    layers = encoder_layer_parts(model)
    for layer, removed in _check_removal(heads, [p.n_heads for p in layers], "head").items():
        parts = layers[layer]
        keep_heads = _kept(parts.n_heads, removed)
        index = head_columns(keep_heads, parts.head_dim).to(parts.head_output.linear.weight.device)
        for slot in parts.head_inputs:
            slot.replace(_keep_rows(slot.linear, index))
        parts.head_output.replace(_keep_columns(parts.head_output.linear, index))
        parts.set_head_count(len(keep_heads))
    return model


@torch.no_grad()
def prune_neurons(model: nn.Module, neurons: dict[int, list[int]]) -> nn.Module:
    """Physically remove FFN neurons, in place: ``{layer: [neuron indices]}``.

    Neuron j is row j of the up projection (d_model → d_ff) and column j of the down projection
    (d_ff → d_model); removing both equals masking the neuron's activation. Returns ``model``.
    """
    layers = encoder_layer_parts(model)
    for layer, removed in _check_removal(neurons, [p.n_neurons for p in layers], "neuron").items():
        parts = layers[layer]
        index = _kept(parts.n_neurons, removed).to(parts.ffn_up.linear.weight.device)
        parts.ffn_up.replace(_keep_rows(parts.ffn_up.linear, index))
        parts.ffn_down.replace(_keep_columns(parts.ffn_down.linear, index))
    return model


@contextlib.contextmanager
def gates(model: nn.Module, heads: list[torch.Tensor] | None = None, neurons: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Multiply each head's output and/or each FFN neuron's activation by a gate while inside the block.

    heads[l] ``(n_heads_l,)`` scales head h's output just before layer l's output projection (the gate ξ_h of
    Michel et al., 2019); neurons[l] ``(d_ff_l,)`` scales the activations entering the down projection.
    A gate of 0 is a mask; gates that require grad give importance scores. Works on minilib and HF models.
    """
    layers = encoder_layer_parts(model)
    handles = []

    def gate_heads(gate, parts):
        def hook(module, args):
            x = args[0]  # (batch, seq, heads·d_h) — heads concatenated
            gated = x.unflatten(-1, (parts.n_heads, parts.head_dim)) * gate[:, None]
            return (gated.flatten(-2), *args[1:])
        return hook

    def gate_neurons(gate):
        return lambda module, args: (args[0] * gate, *args[1:])  # (batch, seq, d_ff) · (d_ff,)

    try:
        for name, gate_list, expected in (("heads", heads, "n_heads"), ("neurons", neurons, "n_neurons")):
            if gate_list is None:
                continue
            if len(gate_list) != len(layers):
                raise ValueError(f"{name} needs one gate tensor per layer ({len(layers)}), got {len(gate_list)}")
            for index, (gate, parts) in enumerate(zip(gate_list, layers)):
                if gate.shape != (getattr(parts, expected),):
                    raise ValueError(f"{name} gate of layer {index} must have shape ({getattr(parts, expected)},), got {tuple(gate.shape)}")
                slot = parts.head_output if name == "heads" else parts.ffn_down
                hook = gate_heads(gate, parts) if name == "heads" else gate_neurons(gate)
                handles.append(slot.linear.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _importance(model, data, loss_fn, batch_size, max_batches, of: str, normalize: bool) -> torch.Tensor:
    """Mean |∂L/∂gate| over batches of ``data`` for every head or neuron gate (all gates = 1)."""
    loss_fn = loss_fn or classification_loss
    layers = encoder_layer_parts(model)
    device = model_device(model)
    counts = [p.n_heads if of == "heads" else p.n_neurons for p in layers]
    gate_list = [torch.ones(n, device=device, requires_grad=True) for n in counts]
    totals = [torch.zeros(n, device=device) for n in counts]
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    was_training, n_batches = model.training, 0
    model.eval()
    try:
        with gates(model, **{of: gate_list}):
            for batch in loader:
                if max_batches is not None and n_batches >= max_batches:
                    break
                batch = tuple(t.to(device) for t in batch)
                # only the gates' gradients: cheaper than loss.backward() over every weight
                grads = torch.autograd.grad(loss_fn(model, batch), gate_list)
                for total, grad in zip(totals, grads):
                    total += grad.abs()
                n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("importance needs at least one batch of data, got an empty dataset")
    scores = [total / n_batches for total in totals]
    if normalize:  # Michel et al.: divide each layer's scores by their L2 norm so layers are comparable
        scores = [s / s.norm().clamp_min(1e-12) for s in scores]
    width = max(counts)  # layers pruned earlier may have fewer: pad with NaN
    return torch.stack([torch.cat([s, s.new_full((width - len(s),), math.nan)]) for s in scores]).cpu()


def head_importance(model, data, loss_fn=None, batch_size: int = 32, max_batches: int | None = None,
                    normalize: bool = True) -> torch.Tensor:
    """Michel et al. (2019): I_h = E_x |∂L(x)/∂ξ_h|, the sensitivity of the loss to head h's gate ξ_h at ξ = 1.

    data: a dataset of batches ``loss_fn(model, batch)`` accepts (default ``minilib.support.train.classification_loss``,
    batches ``(input_ids, attention_mask, labels)``); the expectation is taken per batch, as in the authors'
    code. normalize: divide each layer's scores by their L2 norm (the paper's recipe).
    Returns ``(n_layers, n_heads)``; a layer with fewer heads (pruned earlier) is padded with NaN.
    """
    return _importance(model, data, loss_fn, batch_size, max_batches, "heads", normalize)


def neuron_importance(model, data, loss_fn=None, batch_size: int = 32, max_batches: int | None = None,
                      normalize: bool = False) -> torch.Tensor:
    """The same gradient score for FFN neurons: E_x |∂L/∂ξ_j| with ξ_j scaling neuron j's activation.

    Returns ``(n_layers, d_ff)``, NaN-padded like :func:`head_importance`.
    """
    return _importance(model, data, loss_fn, batch_size, max_batches, "neurons", normalize)


def least_important(importance: torch.Tensor, fraction: float, keep_per_layer: int = 1) -> dict[int, list[int]]:
    """The globally lowest-scoring ``fraction`` of units, as ``{layer: [indices]}`` for :func:`prune_heads`
    or :func:`prune_neurons`; at least ``keep_per_layer`` units survive in every layer.

    importance ``(n_layers, n_units)`` from :func:`head_importance` / :func:`neuron_importance` (NaN = absent).
    """
    fraction = _check_fraction(fraction, "fraction")
    present = ~importance.isnan()
    budget = round(fraction * int(present.sum()))
    chosen: dict[int, list[int]] = {}
    order = torch.argsort(importance.nan_to_num(math.inf).flatten(), stable=True)
    for flat in order.tolist():
        if budget == 0:
            break
        layer, unit = divmod(flat, importance.shape[1])
        if not present[layer, unit] or int(present[layer].sum()) - len(chosen.get(layer, [])) <= keep_per_layer:
            continue
        chosen.setdefault(layer, []).append(unit)
        budget -= 1
    return {layer: sorted(units) for layer, units in sorted(chosen.items())}


@dataclass(frozen=True)
class Removed:
    """What :func:`prune_least_important` removed, per layer: ``heads`` and ``neurons`` as ``{layer: [indices]}``
    (indices before pruning)."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]


def prune_least_important(model: nn.Module, data, head_fraction: float = 0.0, neuron_fraction: float = 0.0,
                          loss_fn=None, batch_size: int = 32, max_batches: int | None = None) -> Removed:
    """Score heads (:func:`head_importance`) and FFN neurons (:func:`neuron_importance`) on ``data``, then remove
    the globally least important ``head_fraction`` of heads and ``neuron_fraction`` of neurons, in place.

    Returns what was removed (:class:`Removed`).
    """
    scores = {}
    for name, fraction, score in (("heads", head_fraction, head_importance), ("neurons", neuron_fraction, neuron_importance)):
        _check_fraction(fraction, f"{name[:-1]}_fraction")
        # both scored on the unpruned model, so neither choice depends on the other
        scores[name] = score(model, data, loss_fn, batch_size, max_batches) if fraction else None
    heads = least_important(scores["heads"], head_fraction) if head_fraction else {}
    neurons = least_important(scores["neurons"], neuron_fraction) if neuron_fraction else {}
    prune_heads(model, heads)
    prune_neurons(model, neurons)
    return Removed(heads, neurons)
