"""Compressing a decoder one block at a time, from what its layers see on calibration text (chapter 14).

GPTQ, AWQ, SparseGPT and Wanda all work the same way (the GPTQ paper's "sequential" recipe; llmcompressor's
sequential pipeline): a few hundred sequences of ordinary text are run through the model, and each block is
compressed from the inputs its linear layers receive, **with the blocks before it already compressed**, so
that later blocks see, and correct for, the errors of earlier ones:

    inputs of block 0 = embeddings of the calibration text
    for each block:  record its layers' inputs → compress its layers → inputs of the next = this block's output

What a method needs from the inputs ``X`` ``(tokens, in)`` of a layer fits in a few running sums
(:class:`InputStatistics`): ``XᵀX`` (the Hessian of GPTQ and SparseGPT, and AWQ's output error), the squared
norm of each input feature (Wanda), its mean and largest magnitude (AWQ, SmoothQuant). Nothing else is kept.

Works on any decoder whose blocks sit in an ``nn.ModuleList`` (minilib's ``LlamaDecoder``, Hugging Face's
``LlamaForCausalLM``); :func:`block_parts` names the norms and projections of a Llama-style block, which AWQ and
SmoothQuant need.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from minilib.quant.swap import linear_layer_names


class InputStatistics:
    """Running sums over the rows ``x`` ``(features,)`` of every input a linear layer receives.

    ``tokens``: how many rows; ``sum_sq`` ``(in,)``: ``Σ x_j²``; ``sum_abs`` ``(in,)``: ``Σ |x_j|``; ``max_abs``
    ``(in,)``: ``max |x_j|``; ``xtx`` ``(in, in)``: ``Σ x xᵀ`` (only with ``gram=True``: it is the costly one).
    """

    def __init__(self, features: int, gram: bool = True):
        self.features, self.tokens = features, 0
        self.sum_sq, self.sum_abs, self.max_abs = torch.zeros(features), torch.zeros(features), torch.zeros(features)
        self.xtx = torch.zeros(features, features) if gram else None

    def add(self, x: torch.Tensor) -> None:
        """x: ``(..., features)``, any batch shape."""
        if x.shape[-1] != self.features:
            raise ValueError(f"calibration activations must have {self.features} features (the layer's input "
                             f"dimension), got shape {tuple(x.shape)}")
        rows = x.detach().reshape(-1, self.features).float().cpu()
        self.tokens += rows.shape[0]
        self.sum_sq += rows.square().sum(0)
        self.sum_abs += rows.abs().sum(0)
        self.max_abs = torch.maximum(self.max_abs, rows.abs().amax(0))
        if self.xtx is not None:
            self.xtx += rows.T @ rows                                      # Σ_t x_t x_tᵀ, (in, in)

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2 XᵀX / N: the Hessian of the layer's squared output error ‖(W − Ŵ) Xᵀ‖² / N in each weight row."""
        if self.xtx is None:
            raise ValueError("this InputStatistics was made with gram=False: it has no XᵀX")
        return 2 * self.xtx / max(self.tokens, 1)

    @property
    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ ``(in,)``: the length of input feature j over all calibration tokens (Wanda's activation norm)."""
        return self.sum_sq.sqrt()

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean_t |x_tj| ``(in,)``: how large input feature j usually is (AWQ's saliency)."""
        return self.sum_abs / max(self.tokens, 1)


@contextlib.contextmanager
def recording(layers: dict[str, nn.Module], gram: bool = True) -> Iterator[dict[str, InputStatistics]]:
    """While inside, every input of each named layer is added to its :class:`InputStatistics` (yielded by name)."""
    stats = {name: InputStatistics(layer.in_features, gram) for name, layer in layers.items()}
    handles = [layer.register_forward_pre_hook(lambda module, args, s=stats[name]: s.add(args[0]))
               for name, layer in layers.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers inside ``module`` (a block), by name: what its compression replaces."""
    return {name: module.get_submodule(name) for name in linear_layer_names(module)}


# ------------------------------------------------------------------------------------------ block by block
def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks: its first non-empty ``nn.ModuleList``."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module):
            return module
    raise TypeError(f"found no stack of blocks (an nn.ModuleList) in {type(model).__name__}: expected a decoder "
                    "such as minilib's LlamaDecoder or Hugging Face's LlamaForCausalLM")


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """Every plain ``nn.Linear`` inside the model's blocks: what the block-by-block methods compress."""
    return [layer for block in decoder_blocks(model) for layer in linear_layers(block).values()]


class _ReachedFirstBlock(Exception):
    """Stops the model's forward pass once the first block's inputs are caught."""


def check_calibration(input_ids) -> torch.Tensor:
    """Calibration text as token ids ``(sequences, length)``, or a ValueError that says what was given."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        got = f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise ValueError(f"calibration text must be token ids of shape (sequences, length), got {got}")
    if input_ids.shape[0] == 0:
        raise ValueError("calibration text must hold at least one sequence, got none")
    return input_ids.long()


@torch.no_grad()
def first_block_inputs(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` the first block is called with, for each batch of calibration sequences.

    The hidden states are ``args[0]`` (``(batch, length, d_model)``); the rest (rotary angles, masks) is passed on
    unchanged to every block. Nothing after the embeddings runs.
    """
    captured = []

    def catch(module, args, kwargs):
        kwargs = {k: (None if k == "past_key_values" else v) for k, v in kwargs.items()}  # Hugging Face's cache
        captured.append((args, kwargs))
        raise _ReachedFirstBlock

    options = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    handle = decoder_blocks(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in input_ids.split(batch_size):
            with contextlib.suppress(_ReachedFirstBlock):
                model(batch, **options)
    finally:
        handle.remove()
    return captured


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def compress_blocks(model: nn.Module, input_ids: torch.Tensor, compress: Callable[[nn.Module, Callable[[], None]], None],
                    batch_size: int = 8) -> nn.Module:
    """Compress ``model``'s blocks in place, first to last: ``compress(block, run)`` for each.

    ``run()`` pushes every calibration batch through ``block`` as it is at that moment (its inputs are the outputs
    of the blocks before it, already compressed); ``compress`` records what it needs while calling ``run()``
    (e.g. inside :func:`recording`), then changes the block. Returns ``model``.
    """
    input_ids = check_calibration(input_ids)
    was_training = model.training
    model.eval()
    calls = first_block_inputs(model, input_ids, batch_size)
    for block in decoder_blocks(model):
        compress(block, lambda block=block: [block(*args, **kwargs) for args, kwargs in calls])
        calls = [((_hidden(block(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in calls]
    model.train(was_training)
    return model


# ------------------------------------------------------------------------------------------ a Llama block's parts
@dataclass
class BlockParts:
    """The pieces of a Llama-style block that scale together: each norm feeds some projections, and so on."""

    attn_norm: nn.Module              # RMSNorm whose output feeds q, k, v
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ffn_norm: nn.Module               # RMSNorm whose output feeds gate and up
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


_NAMES = {  # minilib LlamaBlock, Hugging Face LlamaDecoderLayer
    "minilib": dict(attn_norm="attn_norm", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.out_proj",
                    ffn_norm="ffn_norm", gate="ffn.gate", up="ffn.up", down="ffn.down"),
    "hf": dict(attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
               o="self_attn.o_proj", ffn_norm="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
               down="mlp.down_proj"),
}


def block_parts(block: nn.Module) -> BlockParts:
    """The :class:`BlockParts` of a minilib ``LlamaBlock`` or a Hugging Face ``LlamaDecoderLayer``."""
    for names in _NAMES.values():
        try:
            return BlockParts(**{part: block.get_submodule(path) for part, path in names.items()})
        except AttributeError:
            continue
    raise TypeError(f"{type(block).__name__} is not a Llama-style block: expected RMSNorms, q/k/v/o projections "
                    "and a SwiGLU feed-forward (minilib's LlamaBlock or Hugging Face's LlamaDecoderLayer)")


@torch.no_grad()
def scale_channels(source: nn.Module, targets: list[nn.Linear], s: torch.Tensor) -> None:
    """Divide channel j of ``source``'s output by ``s_j`` and multiply input column j of every target by ``s_j``.

    The block computes exactly the same function (``(x / s) · (W · s)ᵀ = x Wᵀ``); only where the magnitudes sit
    changes. ``source``: an RMSNorm (its gain ``g``) or a linear layer (its output rows) whose output feeds only the
    targets — AWQ's and SmoothQuant's transform. ``s``: ``(channels,)``, positive.
    """
    if isinstance(source, nn.Linear):
        source.weight.div_(s[:, None])                                       # output rows of the source
    else:
        source.weight.div_(s)                                                # RMSNorm: g / s
    if getattr(source, "bias", None) is not None:
        source.bias.div_(s)
    for target in targets:
        target.weight.mul_(s)                                                # W · diag(s): input columns
