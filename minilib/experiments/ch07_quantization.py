"""The chapter's experiment on the real MiniLM: fp32 vs ``minilib`` int8 and int4 vs PyTorch's libraries.

The libraries are reference rows (:mod:`minilib.experiments.library_rows`): PyTorch's deprecated
``quantize_dynamic`` always, torchao's int8 and int4 with ``torchao=True`` (an
:class:`minilib.support.optional.Unavailable` row where torchao is missing; the measuring functions skip it).

Shared by the notebook and ``python -m minilib bench 07`` so that both measure the same thing:
size in MB, latency (median, ratios measured interleaved in one run), and output fidelity (cosine
similarity of sentence embeddings to fp32's, on real English sentences).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

from minilib.deploy.hf import sentence_embeddings
from minilib.experiments.library_rows import (
    TORCH_AO_DEPRECATED,
    copy_sharing_embeddings,
    torch_ao_dynamic,
    torchao_variants,
)
from minilib.quant.int4 import Int4Linear
from minilib.quant.int8 import QuantLinear
from minilib.quant.model import quantize_model
from minilib.support.bench import Comparison, compare, model_size_bytes
from minilib.support.data import lm_text
from minilib.support.device import return_freed_memory
from minilib.support.optional import Unavailable, runnable

FP32, INT8, INT8_COMPILED, INT4 = "fp32", "minilib int8", "minilib int8 + compile", "minilib int4 weights"
TORCH_AO = TORCH_AO_DEPRECATED


def real_sentences(n: int = 64, min_words: int = 6, max_words: int = 40) -> list[str]:
    """``n`` English sentences from Python's own documentation prose (``minilib.support.data.lm_text``), in order."""
    sentences = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(lm_text().split())):
        if min_words <= len(sentence.split()) <= max_words and sentence[0].isupper():
            sentences.append(sentence)
            if len(sentences) == n:
                return sentences
    raise ValueError(f"lm_text() has only {len(sentences)} sentences of {min_words}-{max_words} words, asked for {n}")


def quantized_variants(model: nn.Module, compiled: bool = False, skip=(), torchao: bool = False
                       ) -> dict[str, nn.Module | Unavailable]:
    """The float model and its quantized versions, all in eval mode. ``compiled`` adds the torch.compile int8
    path, ``torchao`` the three torchao rows (each an Unavailable where torchao cannot build it)."""
    def ours(**options):   # quantize_model on a copy that shares the float embeddings with ``model``
        return quantize_model(copy_sharing_embeddings(model), skip=skip, inplace=True, **options).eval()

    variants = {FP32: model.eval(), TORCH_AO: torch_ao_dynamic(model).eval(), INT8: ours(bits=8)}
    if compiled:
        variants[INT8_COMPILED] = ours(bits=8, compiled=True)
    variants[INT4] = ours(bits=4)
    if torchao:
        variants.update(torchao_variants(model))
    return_freed_memory()   # the float copies each quantizer started from
    return variants


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's linear layers (float, int8 or int4; each layer counted once)."""
    kinds = (nn.Linear, QuantLinear, Int4Linear, torch.ao.nn.quantized.Linear)  # the last: quantize_dynamic's layers
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    return sum(model_size_bytes(m) for m in layers)


def sizes_mb(variants: dict[str, nn.Module]) -> dict[str, float]:
    """Whole-model size in MB (weights, buffers and packed integers at their real size); Unavailable rows skipped."""
    return {name: model_size_bytes(m) / 1e6 for name, m in runnable(variants).items()}


def embedding_cosines(variants: dict[str, nn.Module], tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Per sentence, cosine similarity of each variant's sentence embedding to the fp32 one: ``(n_sentences,)``.
    Unavailable rows are skipped."""
    reference = sentence_embeddings(variants[FP32], tokenizer, sentences)
    return {name: (sentence_embeddings(m, tokenizer, sentences) * reference).sum(-1)
            for name, m in runnable(variants).items() if name != FP32}


def latency(variants: dict[str, nn.Module], batch: int = 32, seq: int = 128, warmup: int = 1, repeats: int = 5,
            vocab_size: int = 30522) -> Comparison:
    """Interleaved timing of one forward pass on ``(batch, seq)`` random token ids; ratios against fp32.
    Unavailable rows are skipped."""
    variants = runnable(variants)
    ids = torch.randint(1, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))  # 0 is padding
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for model in variants.values():  # first call: lazy initialisation (and compilation) outside the timing
            model(input_ids=ids, attention_mask=mask)
        return compare({name: (lambda m=m: m(input_ids=ids, attention_mask=mask)) for name, m in variants.items()},
                       baseline=FP32, warmup=warmup, repeats=repeats)


def too_slow_here(variants: dict[str, nn.Module], limit: float = 5.0) -> dict[str, float]:
    """The variants whose forward pass takes over ``limit`` × fp32's time on this CPU: ``{name: × faster}``.

    Measured once on a small batch (4 × 128). A library's CPU kernel can be a slow fallback on some CPUs (torchao's
    int8 dynamic path takes about 15× fp32's time on a 2-core AMD EPYC without VNNI or AMX): the chapter reports its
    ratio and leaves it out of the cells that run each variant many times.
    """
    comparison = latency(variants, batch=4, warmup=0, repeats=1)
    return {name: comparison.ratio(name) for name in runnable(variants)
            if name != FP32 and comparison.ratio(name) < 1 / limit}


# ----------------------------------------------------------------------------- where the time goes
OPERATION_KINDS = {   # kind of work: the operations (PyTorch's, ONNX Runtime's node types) that do it
    "int8 GEMM": ("aten::_int_mm", "minilib::u8s8_linear", "quantized::linear_dynamic", "onednn::qlinear_pointwise",
                  "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"),
    "float GEMM": ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "MatMul", "Gemm", "FusedMatMul"),
    "attention (scores, softmax, weighted sum)": (
        "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention", "aten::bmm",
        "aten::baddbmm", "aten::_softmax", "aten::softmax", "Softmax", "Attention", "MultiHeadAttention"),
    "quantize activations": ("aten::aminmax", "aten::div", "aten::round", "aten::abs", "aten::amax",
                             "DynamicQuantizeLinear", "quantized::quantize_per_tensor_dynamic"),
    "LayerNorm": ("aten::native_layer_norm", "aten::layer_norm", "LayerNormalization", "SkipLayerNormalization",
                  "SimplifiedLayerNormalization"),
    "GELU": ("aten::gelu", "Gelu", "FastGelu", "BiasGelu", "Erf"),
    "bias, residual and mask additions": ("aten::add", "aten::add_", "aten::addcmul", "aten::mul", "aten::mul_",
                                          "aten::masked_fill", "aten::masked_fill_", "aten::all", "aten::eq",
                                          "Add", "Mul", "Where"),
    "copies and type conversions": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous", "Cast",
                                    "Transpose", "Concat"),
    "fused loops (torch.compile)": ("## Call CompiledFxGraph", "Torch-Compiled Region", "CompiledFunction",
                                    "cpp_fused"),
}


def operation_kind(name: str) -> str:
    """The kind of work an operation named ``name`` does (a key of :data:`OPERATION_KINDS`), else "other"."""
    for kind, names in OPERATION_KINDS.items():
        if any(name == known or name.startswith(known) for known in names):
            return kind
    return "other"


def time_by_kind(run, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per call of ``run()`` (one forward pass) spent in each kind of operation, from
    ``torch.profiler``'s self CPU time (each operation's own time, without the operations it called), averaged
    over ``repeats`` calls after one untimed call. Compiled code shows as fused loops plus the library kernels
    (GEMMs, attention) that it calls."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                run()
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[operation_kind(event.key)] += event.self_cpu_time_total / 1e3 / repeats
    return dict(totals)


def onnx_time_by_kind(onnx_path, input_ids: torch.Tensor, attention_mask: torch.Tensor, threads: int,
                      repeats: int = 3) -> dict[str, float]:
    """The same as :func:`time_by_kind` for an ONNX file run by ONNX Runtime: milliseconds per call in each kind
    of node, from ONNX Runtime's own profiler (node events, by operator type) after one untimed call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, threads
    options.profile_file_prefix = str(Path(onnx_path).with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids.long().numpy(), "attention_mask": attention_mask.long().numpy()}
    session.run(None, feeds)
    for _ in range(repeats):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [e for e in events if e.get("name") == "model_run"][1:]     # the timed calls
    start = min(e["ts"] for e in runs)
    totals = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            totals[operation_kind(event["args"]["op_name"])] += event["dur"] / 1e3 / repeats
    return dict(totals)


def profile_table(profiles: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per kind of work, one column per variant (ms per forward pass), and the total."""
    kinds = [k for k in [*OPERATION_KINDS, "other"] if any(p.get(k, 0) > 0.05 for p in profiles.values())]
    lines = ["| kind of work | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{p.get(kind, 0):.0f}" for p in profiles.values()) + " |")
    lines.append("| **total (ms)** | " + " | ".join(f"**{sum(p.values()):.0f}**" for p in profiles.values()) + " |")
    return "\n".join(lines)


def profile(batch: int = 8, seq: int = 128) -> str:
    """Chapter 07's profile table on the fine-tuned MiniLM classifier: fp32, our int8 eager and compiled
    (``quantize_model(..., compiled=True)``, compiling first) and ONNX Runtime's dynamic int8 (when installed),
    milliseconds per forward pass of ``batch`` sequences of ``seq`` tokens, by kind of work. ``python -m minilib profile 07``
    prints it."""
    import tempfile

    from minilib.deploy.export import export_onnx
    from minilib.experiments.library_rows import onnx_dynamic_int8
    from minilib.experiments.teacher import sentiment_teacher
    from minilib.support.optional import optional_row

    teacher = sentiment_teacher().eval()
    ids = torch.randint(1, 30522, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    eager, compiled = quantize_model(teacher).eval(), quantize_model(teacher, compiled=True).eval()
    profiles = {"fp32": time_by_kind(lambda: teacher(ids, mask)), "minilib int8": time_by_kind(lambda: eager(ids, mask)),
                "minilib int8 + compile": time_by_kind(lambda: compiled(ids, mask))}
    with tempfile.TemporaryDirectory(prefix="minilib-onnx-") as folder:
        def ort_profile():
            path = export_onnx(teacher, ids[:1], mask[:1], Path(folder) / "minilm_sentiment.onnx")
            return onnx_time_by_kind(onnx_dynamic_int8(path), ids, mask, torch.get_num_threads())
        ort = optional_row("ONNX Runtime int8", ort_profile, "pip install onnxruntime")
        if isinstance(ort, dict):
            profiles["ONNX Runtime int8"] = ort
    return profile_table(profiles)

