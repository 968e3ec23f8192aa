"""Chapter 14's compression runs: each method applied to a decoder by minilib and by llmcompressor, scored alike.

A :class:`Run` is a method and its settings ("GPTQ, 4 bits, groups of 128, act-order"). :func:`compress_ours` makes
it with minilib's from-scratch code on the decoder itself; :func:`compress_llmcompressor` makes it with
llmcompressor (vLLM's compression library, ``oneshot`` with the recipe its documentation gives for the method) on the
decoder's Hugging Face export, from the same calibration sequences. :func:`score` measures both the same way:
perplexity on held-out text (``minilib.metrics.perplexity``), the bytes of the blocks' linear layers as stored, and
the seconds compression took (wall clock, a rough figure on a shared machine).

Where llmcompressor is missing, or a method cannot run here, the row is an
:class:`~minilib.support.optional.Unavailable` that says why.
"""
from __future__ import annotations

import contextlib
import copy
import html
import io
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from minilib import prune
from minilib.metrics import perplexity
from minilib.prune.sparsegpt import sparsegpt
from minilib.prune.wanda import wanda
from minilib.quant import quantize_model
from minilib.quant.awq import awq
from minilib.quant.gptq import gptq
from minilib.quant.groupwise import DEFAULT_SKIP, round_to_nearest
from minilib.quant.layerwise import block_parts, decoder_blocks, recording
from minilib.quant.smoothquant import smoothquant_w8a8
from minilib.support.bench import Comparison, compare, html_table, model_size_bytes, text_table
from minilib.support.optional import NotAvailable, Unavailable, optional_row, require

LLMCOMPRESSOR_HINT = "pip install llmcompressor (0.14 or later, with transformers 5)"
QUANTIZERS = ("round-to-nearest", "GPTQ", "AWQ")
PRUNERS = ("magnitude", "Wanda", "SparseGPT")


@dataclass(frozen=True)
class Run:
    """One compression of the decoder: ``method`` and the settings it uses (the others stay None)."""

    method: str                       # "float32", "round-to-nearest", "GPTQ", "AWQ", "W8A8", "SmoothQuant W8A8", ...
    bits: int | None = None           # weight bits (the group-wise quantizers)
    group_size: int | None = None     # inputs per scale; None with bits: one scale per output row
    act_order: bool = False           # GPTQ: columns in decreasing order of diag H
    sparsity: float | None = None     # pruners: the fraction of weights removed
    n_m: tuple[int, int] | None = None  # pruners: keep N of every M inputs instead
    alpha: float | None = None        # SmoothQuant's migration strength

    @property
    def label(self) -> str:
        """``"GPTQ 4-bit g128 act-order"``, ``"Wanda 2:4"``, ``"SmoothQuant W8A8 α=0.5"``."""
        parts = [self.method]
        if self.bits is not None:
            parts += [f"{self.bits}-bit", f"g{self.group_size}" if self.group_size else "per-channel"]
        if self.act_order:
            parts.append("act-order")
        if self.n_m is not None:
            parts.append(f"{self.n_m[0]}:{self.n_m[1]}")
        elif self.sparsity is not None:
            parts.append(f"{self.sparsity:.0%}")
        if self.alpha is not None:
            parts.append(f"α={self.alpha}")
        return " ".join(parts)

    @property
    def key(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ ours
@torch.no_grad()
def magnitude(model: nn.Module, sparsity: float = 0.5, n_m: tuple[int, int] | None = None) -> nn.Module:
    """A copy of ``model`` whose blocks' linear layers lose their smallest |w|: ``sparsity`` of each layer, or N:M."""
    model = copy.deepcopy(model)
    blocks = decoder_blocks(model)
    masks = prune.nm_masks(blocks, *n_m) if n_m is not None else prune.magnitude_masks(blocks, sparsity, scope="layer")
    for name, mask in masks.items():
        blocks.get_submodule(name).weight.mul_(mask)
    return model


def compress_ours(model: nn.Module, run: Run, calibration: torch.Tensor) -> nn.Module:
    """``run`` made by minilib on ``model`` (left unchanged); calibration: token ids ``(sequences, length)``."""
    match run.method:
        case "float32":
            return model
        case "round-to-nearest":
            return round_to_nearest(model, run.bits, run.group_size)
        case "GPTQ":
            return gptq(model, calibration, run.bits, run.group_size, run.act_order)
        case "AWQ":
            return awq(model, calibration, run.bits, run.group_size)
        case "W8A8":
            return quantize_model(model, bits=8, skip=DEFAULT_SKIP)
        case "SmoothQuant W8A8":
            return smoothquant_w8a8(model, calibration, run.alpha)
        case "magnitude":
            return magnitude(model, run.sparsity, run.n_m)
        case "Wanda":
            return wanda(model, calibration, run.sparsity, run.n_m)
        case "SparseGPT":
            return sparsegpt(model, calibration, run.sparsity, run.n_m)
    raise ValueError(f"unknown method {run.method!r}")


def block_bytes(model: nn.Module) -> int:
    """Bytes of the decoder's blocks as minilib stores them: their linear layers (packed codes and scales, int8, or
    dense float32 weights, zeros included) and their norms' gains."""
    return model_size_bytes(decoder_blocks(model))


# ------------------------------------------------------------------------------------------ llmcompressor
def _weights(run: Run) -> dict:
    """llmcompressor's config group for ``run``'s weights: b-bit integers with a zero point, per group or per row."""
    strategy = {"strategy": "group", "group_size": run.group_size} if run.group_size else {"strategy": "channel"}
    return {"group_0": {"targets": ["Linear"], "weights": {"num_bits": run.bits, "type": "int", "symmetric": False,
                                                           **strategy}}}


def llmcompressor_recipe(run: Run) -> list:
    """The modifiers llmcompressor's documentation uses for ``run``'s method, with ``run``'s settings."""
    require("llmcompressor", LLMCOMPRESSOR_HINT)
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    ignore = ["re:.*lm_head"]            # the head is tied to the embeddings ("lm_head" alone misses it when pruning)
    mask = f"{run.n_m[0]}:{run.n_m[1]}" if run.n_m else "0:0"
    sparsity = 1 - run.n_m[0] / run.n_m[1] if run.n_m else run.sparsity
    match run.method:
        case "round-to-nearest":
            return [QuantizationModifier(config_groups=_weights(run), ignore=ignore)]
        case "GPTQ":
            return [GPTQModifier(config_groups=_weights(run), ignore=ignore, actorder="weight" if run.act_order else None,
                                 dampening_frac=0.01, block_size=128)]
        case "AWQ":                                                          # AWQ scales, then round-to-nearest
            return [AWQModifier(duo_scaling=False, n_grid=20), QuantizationModifier(config_groups=_weights(run),
                                                                                    ignore=ignore)]
        case "W8A8":
            return [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=ignore)]
        case "SmoothQuant W8A8":
            return [SmoothQuantModifier(smoothing_strength=run.alpha),
                    QuantizationModifier(targets="Linear", scheme="W8A8", ignore=ignore)]
        case "Wanda":
            return [WandaPruningModifier(sparsity=sparsity, mask_structure=mask, ignore=ignore)]
        case "SparseGPT":
            return [SparseGPTModifier(sparsity=sparsity, mask_structure=mask, ignore=ignore, dampening_frac=0.01,
                                      block_size=128)]
    raise NotAvailable(f"llmcompressor has no one-shot {run.method} recipe")


@contextlib.contextmanager
def _quiet():
    """llmcompressor's logs (loguru) and progress bars (tqdm, on stderr) off while it runs."""
    from loguru import logger

    logger.disable("llmcompressor")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.enable("llmcompressor")


def compress_llmcompressor(hf_model: nn.Module, run: Run, calibration: torch.Tensor, processor) -> nn.Module:
    """``run`` made by llmcompressor's ``oneshot`` on a copy of ``hf_model`` (a ``LlamaForCausalLM``).

    calibration: the same token ids ``(sequences, length)`` as ours, in batches of 8; processor: the model's
    tokenizer (``oneshot`` asks for one whenever it is given calibration data, even already tokenised).
    """
    if run.method == "float32":
        return hf_model
    recipe = llmcompressor_recipe(run)
    from llmcompressor import oneshot

    model = copy.deepcopy(hf_model)
    batches = DataLoader([{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in calibration],
                         batch_size=8)
    name = model.config._name_or_path
    with tempfile.TemporaryDirectory() as folder, _quiet():
        model.config.save_pretrained(folder)
        model.config._name_or_path = folder                                  # oneshot reads the config back from it
        try:
            oneshot(model=model, recipe=recipe, processor=processor,
                    dataset=None if run.method in ("round-to-nearest", "W8A8") else batches)
        except RuntimeError as error:
            if "accelerator" not in str(error):
                raise
            raise NotAvailable(f"llmcompressor {version('llmcompressor')}'s {run.method} needs a GPU "
                               f"({type(error).__name__}: {error})", "run it on a machine with a GPU") from error
        finally:
            model.config._name_or_path = name
    return model.eval()


def llmcompressor_bytes(model: nn.Module) -> int:
    """Bytes of the decoder's blocks in the compressed checkpoint llmcompressor writes (``save_compressed``)."""
    import safetensors.torch

    with tempfile.TemporaryDirectory() as folder, _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")                                      # "saving a model with offloaded modules"
        model.save_pretrained(folder, save_compressed=True)
        tensors = {}
        for file in Path(folder).glob("*.safetensors"):
            tensors |= safetensors.torch.load_file(file)
    return sum(t.numel() * t.element_size() for name, t in tensors.items() if ".layers." in name)


# ------------------------------------------------------------------------------------------ one row
def score(make, held_out, measure_bytes) -> dict:
    """Compress (``make()``), then measure: ``{"perplexity", "bytes", "seconds"}``."""
    start = time.perf_counter()
    model = make()
    seconds = time.perf_counter() - start
    return {"perplexity": perplexity(model, held_out, batch_size=8), "bytes": measure_bytes(model),
            "seconds": round(seconds, 2)}


def ours_row(model: nn.Module, run: Run, calibration: torch.Tensor, held_out) -> dict:
    """minilib's row for ``run``: ``{"tool", "label", "perplexity", "bytes", "seconds"}``."""
    return {"tool": "ours", "label": run.label,
            **score(lambda: compress_ours(model, run, calibration), held_out, block_bytes)}


def llmcompressor_row(hf_model: nn.Module, run: Run, calibration: torch.Tensor, held_out, processor) -> dict:
    """llmcompressor's row for ``run``, with ``"unavailable": reason`` instead of the measurements when it cannot be
    made (not installed, no such recipe, cannot run here)."""
    measure = block_bytes if run.method == "float32" else llmcompressor_bytes
    row = optional_row(f"llmcompressor {run.label}",
                       lambda: score(lambda: compress_llmcompressor(hf_model, run, calibration, processor), held_out,
                                     measure), LLMCOMPRESSOR_HINT)
    return {"tool": "llmcompressor", "label": run.label,
            **({"unavailable": str(row)} if isinstance(row, Unavailable) else row)}


def table_metrics(results: dict) -> dict:
    """The shipped results' metrics: each row's perplexity, ``"<tool> <label> perplexity"`` (other entries, such as
    an exercise's reference numbers, have none)."""
    return {f"{row['tool']} {row['label']} perplexity": row["perplexity"]
            for row in results.values() if isinstance(row, dict) and "perplexity" in row}


# ------------------------------------------------------------------------------------------ outlier features
OUTLIER_MAGNITUDE, OUTLIER_TOKENS, OUTLIER_LAYERS = 6.0, 0.06, 0.25   # LLM.int8's criteria (Dettmers et al., 2022)


@torch.no_grad()
def hidden_feature_magnitudes(model: nn.Module, input_ids: torch.Tensor, magnitude: float = OUTLIER_MAGNITUDE) -> dict:
    """What each block's two normed inputs (of q/k/v and of gate/up) hold, feature by feature (``d_model`` of them).

    ``{"max_abs": (blocks, 2, d), "share": (blocks, 2, d)}``: the largest ``|x_j|`` over the tokens, and the share of
    tokens where ``|x_j| ≥ magnitude``.
    """
    parts = [block_parts(block) for block in decoder_blocks(model)]
    layers = {f"{i}.{kind}": getattr(p, kind) for i, p in enumerate(parts) for kind in ("q", "gate")}
    large = {name: 0 for name in layers}

    def count(name):
        def hook(module, args):
            large[name] = large[name] + (args[0].abs() >= magnitude).flatten(0, -2).sum(0)
        return hook

    hooks = [layer.register_forward_pre_hook(count(name)) for name, layer in layers.items()]
    try:
        with recording(layers, gram=False) as stats:
            for batch in input_ids.split(8):
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    shape = (len(parts), 2, -1)
    return {"max_abs": torch.stack([stats[n].max_abs for n in layers]).reshape(shape),
            "share": torch.stack([large[n] / stats[n].tokens for n in layers]).reshape(shape)}


def outlier_features(magnitudes: dict, tokens: float = OUTLIER_TOKENS, layers: float = OUTLIER_LAYERS) -> list[int]:
    """LLM.int8's systematic outlier features: hidden features ``j`` that reach ``|x_j| ≥ 6`` in at least 6% of the
    tokens, in at least 25% of the normed inputs of the blocks (from :func:`hidden_feature_magnitudes`)."""
    frequent = (magnitudes["share"] >= tokens).flatten(0, 1)                  # (blocks · 2, d)
    return torch.nonzero(frequent.float().mean(0) >= layers).flatten().tolist()


# ------------------------------------------------------------------------------------------ the chapter's table
CHAPTER_RUNS = (
    Run("float32"),
    Run("round-to-nearest", 4, None), Run("round-to-nearest", 4, 128), Run("round-to-nearest", 4, 32),
    Run("round-to-nearest", 3, 128),
    Run("GPTQ", 4, 128), Run("GPTQ", 4, 128, act_order=True), Run("GPTQ", 4, 32, act_order=True),
    Run("GPTQ", 3, 128, act_order=True),
    Run("AWQ", 4, 128), Run("AWQ", 3, 128),
    Run("W8A8"), Run("SmoothQuant W8A8", alpha=0.5),
    Run("magnitude", sparsity=0.5), Run("Wanda", sparsity=0.5), Run("SparseGPT", sparsity=0.5),
    Run("magnitude", n_m=(2, 4)), Run("Wanda", n_m=(2, 4)), Run("SparseGPT", n_m=(2, 4)),
)
"""Chapter 14's table: the float model, the round-to-nearest floor, GPTQ, AWQ, W8A8 and the pruners at 50%."""


@dataclass
class CompressionTable:
    """``rows``: ``{run label: {"ours": row, "llmcompressor": row}}``, each row ``{"perplexity", "bytes",
    "seconds"}`` or ``{"unavailable": reason}``. Prints (or shows in a notebook) as one table."""

    rows: dict[str, dict[str, dict]]

    def perplexity(self, label: str, tool: str = "ours") -> float:
        return self.rows[label][tool].get("perplexity", float("nan"))

    def increase(self, label: str, tool: str = "ours") -> float:
        """Perplexity increase over the float model's, in %."""
        return 100 * (self.perplexity(label, tool) / self.perplexity("float32", tool) - 1)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        header = ["method", "perplexity", "llmcompressor", "MB", "llmcompressor MB", "seconds", "llmcompressor s"]
        cells = []
        for label, row in self.rows.items():
            ours, theirs = row["ours"], row["llmcompressor"]
            cell = lambda r, key, fmt: "—" if key not in r else fmt.format(r[key] / (1e6 if key == "bytes" else 1))
            cells.append([label, cell(ours, "perplexity", "{:.3f}"), cell(theirs, "perplexity", "{:.3f}"),
                          cell(ours, "bytes", "{:.2f}"), cell(theirs, "bytes", "{:.2f}"),
                          cell(ours, "seconds", "{:.1f}"), cell(theirs, "seconds", "{:.1f}")])
        return header, cells

    def notes(self) -> list[str]:
        """Why each missing llmcompressor row is missing."""
        return [row["llmcompressor"]["unavailable"] for row in self.rows.values() if "unavailable" in row["llmcompressor"]]

    def __str__(self) -> str:
        return "\n".join([text_table(*self._cells()), *self.notes()])

    def _repr_html_(self) -> str:
        return html_table(*self._cells()) + "".join(f"<p><small>{html.escape(n)}</small></p>" for n in self.notes())


def compression_table(model: nn.Module, hf_model: nn.Module, calibration: torch.Tensor, held_out, processor,
                      runs=CHAPTER_RUNS, artefact=None) -> CompressionTable:
    """Every run of ``runs`` by minilib on ``model`` and by llmcompressor on ``hf_model`` (its Hugging Face export).

    With ``artefact`` each row comes from its shipped results when they are there (``cached_result``): the chapter
    reads them in a second; ``python -m minilib zoo rebuild`` measures them all again.
    """
    from minilib.experiments.artefacts import cached_result

    def cached(key, compute):
        return compute() if artefact is None else cached_result(artefact, key, compute)

    rows = {}
    for run in runs:
        rows[run.label] = {
            "ours": cached(["ours", run.key], lambda run=run: ours_row(model, run, calibration, held_out)),
            "llmcompressor": cached(["llmcompressor", run.key], lambda run=run: llmcompressor_row(
                hf_model, run, calibration, held_out, processor)),
        }
    return CompressionTable(rows)


@torch.no_grad()
def forward_speed(models: dict[str, nn.Module], input_ids: torch.Tensor, repeats: int = 5) -> Comparison:
    """One forward pass of ``input_ids`` ``(batch, length)`` through each model, timed interleaved; the first is the
    baseline of the ratios (e.g. float32 against SmoothQuant's W8A8 on chapter 07's int8 kernel)."""
    return compare({name: (lambda model=model: model(input_ids)) for name, model in models.items()},
                   warmup=1, repeats=repeats)


def llmcompressor_gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, grid) -> torch.Tensor:
    """llmcompressor's GPTQ of one weight ``(out, in)`` with minilib's grids (a ``GroupGrid``) and 1% damping."""
    require("llmcompressor", LLMCOMPRESSOR_HINT)
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    args = QuantizationArgs(num_bits=grid.bits, symmetric=False, strategy="group", group_size=grid.group_size)
    zero_point = grid.zero - 2 ** (grid.bits - 1)                            # llmcompressor's codes are signed
    return quantize_weight(weight[None].float().clone(), hessian[None].float().clone(), grid.scale[None],
                           zero_point[None], None, args, blocksize=128, percdamp=0.01)[0][0]
