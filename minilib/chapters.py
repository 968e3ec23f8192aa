"""The course's table of contents: one declaration per chapter, from which everything else is derived.

Each :class:`Chapter` names its notebook and the modules that belong to it, by one pattern: chapter 07,
``quantization``, is ``notebooks/07_quantization.ipynb``, its runs ``minilib/experiments/ch07_quantization.py``,
its headline rows ``minilib/experiments/headlines/ch07_quantization.py`` and its exercise checks
``minilib/course/checks/ch07_quantization.py``. From :data:`CHAPTERS` come the command line's chapter names
(``python -m minilib bench 07``), the shipped artefacts that ``python -m minilib zoo`` knows, the checks that
``from minilib.course.checks import check_...`` finds, and the README's tables of chapters.

**Adding a chapter**: write its notebook and whichever of its modules it has, then add one entry below
(``tests/test_chapters.py`` checks that every declared module exists and that no chapter module is left out).

This module is data: it imports nothing from ``minilib``, so any part of the library may read it; each part
imports the declared modules of its own wing or below.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chapter:
    """One chapter of the course.

    ``techniques``: the ``minilib`` modules the chapter teaches (``"attention"``, ``"deploy.hf"``); ``runs``,
    ``headlines``, ``checks``: whether it has the module of that kind; ``artefacts``: the names of the trained
    models and results its runs module ships in ``data/`` (those of its ``ARTEFACTS`` that are built and in
    ``data/manifest.json``; one is declared here when it is shipped). ``written=False`` while its notebook
    is being written: its modules, checks and artefacts are found as any chapter's, but the editions, the notebook
    runs and the README's table of chapters leave it out until its notebook is in the course.
    """

    number: int
    slug: str
    title: str
    teaches: str
    demonstration: str
    techniques: tuple[str, ...] = ()
    runs: bool = False
    headlines: bool = False
    checks: bool = True
    artefacts: tuple[str, ...] = ()
    written: bool = True

    @property
    def name(self) -> str:
        """``"07_quantization"``: the notebook's file name without ``.ipynb``."""
        return f"{self.number:02d}_{self.slug}"

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def module(self) -> str:
        """``"ch07_quantization"``: the name of the chapter's runs, headline and check modules."""
        return f"ch{self.number:02d}_{self.slug}"

    def module_path(self, kind: str) -> str | None:
        """The dotted path of the chapter's ``"runs"``, ``"headlines"`` or ``"checks"`` module, None if it has none."""
        package = {"runs": "minilib.experiments", "headlines": "minilib.experiments.headlines",
                   "checks": "minilib.course.checks"}[kind]
        return f"{package}.{self.module}" if getattr(self, kind) else None


CHAPTERS: list[Chapter] = [
    Chapter(0, "welcome", "Welcome", "how to use the course; environment check",
            "this machine's measured matmul GFLOP/s: \"the limit\"", techniques=("support.bench",)),
    Chapter(1, "why_fast_and_small", "Why fast and small",
            "where a Transformer spends parameters, FLOPs, memory, time", "cost anatomy of the real MiniLM",
            techniques=("support.bench", "deploy.hf")),
    Chapter(2, "self_attention", "Self-attention", "Q/K/V, softmax, masks, multi-head",
            "ours equals PyTorch; naive vs memory-efficient vs fused", techniques=("attention",), headlines=True),
    Chapter(3, "transformer", "The Transformer", "encoder, decoder, training tips",
            "our encoder reproduces MiniLM; a classifier and a translator trained live",
            techniques=("transformer", "support.train")),
    Chapter(4, "sparse_attention", "Sparse attention", "sliding windows, global tokens, BigBird",
            "blocked kernels whose time grows as O(n·w)", techniques=("sparse", "flex"), runs=True, headlines=True,
            artefacts=("long_range_dense", "long_range_window_32", "long_range_window_32_1_global",
                       "long_range_linear_elu_1")),
    Chapter(5, "linear_attention", "Linear attention", "kernel feature maps, Performer, Linformer",
            "crossover against softmax attention; constant-memory generation", techniques=("linear_attention",),
            headlines=True),
    Chapter(6, "distillation", "Distillation", "soft targets, temperature, hidden-state transfer",
            "teacher → student: size, speed, accuracy", techniques=("distill",), runs=True, headlines=True,
            artefacts=("sentiment_teacher", "distill_students")),
    Chapter(7, "quantization", "Quantization", "int8 / int4 from scratch, calibration, QAT",
            "our int8 MiniLM vs fp32 vs PyTorch's dynamic quantization", techniques=("quant",), runs=True,
            headlines=True),
    Chapter(8, "pruning", "Pruning", "magnitude, N:M, heads and neurons",
            "masks don't speed up dense kernels; removing heads does", techniques=("prune",), runs=True,
            headlines=True),
    Chapter(9, "architecture", "Architecture", "fewer/narrower layers, bottlenecks, sharing",
            "accuracy-vs-latency Pareto front", techniques=("arch",), runs=True, headlines=True,
            artefacts=("ch09_base", "ch09_2_layers", "ch09_narrow", "ch09_bottleneck", "ch09_grouped_ffn",
                       "ch09_albert")),
    Chapter(10, "huggingface", "Hugging Face", "the `transformers` API offline, compression, export",
            "before/after table for a real pretrained model",
            techniques=("deploy.hf", "deploy.export", "deploy.serving")),
    Chapter(11, "evaluation", "Evaluation", "perplexity, BLEU, ROUGE from scratch; choosing a model",
            "our metrics equal sacrebleu / rouge-score", techniques=("metrics", "picker"), runs=True,
            artefacts=("ch11_char_lm", "ch11_date_translator")),
    Chapter(12, "capstone", "Capstone", "combining it all for a deployment target",
            "one model compressed to a budget, and what it cost", techniques=("picker",), runs=True,
            artefacts=("capstone_student", "capstone_pruned")),
    Chapter(13, "fast_generation", "Fast generation",
            "decoding: KV cache, grouped-query attention, q8_0/q4_0 weights, quantized KV cache, speculative decoding "
            "with a network and with an n-gram table as the draft",
            "the same tokens with and without a cache, time per token against position, output identical to the "
            "large model's", techniques=("generation",), runs=True, headlines=True,
            artefacts=("ch13_decoder", "ch13_draft", "ch13_decoder_gqa2", "ch13_gqa_fair")),
    Chapter(14, "modern_decoders", "Modern decoders",
            "the Llama block (RMSNorm, rotary positions, SwiGLU, grouped-query attention), byte-level BPE; "
            "compressing an LLM: GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT",
            "our from-scratch decoder gives Hugging Face `LlamaForCausalLM`'s logits and tokens; what each block "
            "change costs in parameters and KV-cache bytes; each compression method beside llmcompressor",
            techniques=("rotary", "llama", "deploy.hf_llama", "quant.groupwise", "quant.layerwise", "quant.gptq",
                        "quant.awq", "quant.smoothquant", "prune.wanda", "prune.sparsegpt"),
            runs=True, headlines=True, artefacts=("ch14_tokenizer", "ch14_decoder", "ch14_compression")),
]
"""Every chapter, in order."""


def with_notebooks(chapters: list[Chapter] | None = None) -> list[Chapter]:
    """The chapters (all of :data:`CHAPTERS` by default) whose notebook is written: the course's notebooks, in order."""
    return [chapter for chapter in (CHAPTERS if chapters is None else chapters) if chapter.written]


def find(name: str, chapters: list[Chapter] | None = None) -> Chapter:
    """The chapter called ``name``: its number (``"7"``, ``"07"``), its slug (``"quantization"``) or its full name
    (``"07_quantization"``, or its notebook's file name or path). ValueError listing the chapters otherwise."""
    chapters = CHAPTERS if chapters is None else chapters
    key = str(name).replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".ipynb")
    for chapter in chapters:
        if key in (chapter.slug, chapter.name) or (key.isdigit() and int(key) == chapter.number):
            return chapter
    raise ValueError(f"no chapter {name!r}; the chapters are {', '.join(c.name for c in chapters)} "
                     "(a number such as 07 or a name such as quantization will do)")


def markdown_table(chapters: list[Chapter] | None = None, folder: str = "", figures: bool = False) -> str:
    """The table of chapters in Markdown: notebook (linked to ``folder`` + its file), what it teaches, the live
    demonstration, and with ``figures`` the chapter's key plot (``notebooks/figures/<name>.png``)."""
    header = ["notebook", "teaches", "the live demonstration"] + (["what you will see"] if figures else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for chapter in with_notebooks(chapters):
        cells = [f"[{chapter.number:02d} {chapter.title}]({folder}{chapter.notebook})", chapter.teaches,
                 chapter.demonstration]
        if figures:
            cells.append(f'<img src="notebooks/figures/{chapter.name}.png" alt="chapter {chapter.number:02d}\'s key '
                         'plot" width="260">')
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
