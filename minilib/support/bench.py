"""The measurement kit: how every chapter times, counts and weighs what it claims.

Timing follows three rules, the course's way of measuring a claim:

1. warm up first (the first calls pay for memory allocation, caches and lazy initialisation);
2. repeat, and report the **median** and the **spread** (the interquartile range, IQR), never one run;
3. compare variants **interleaved** in the same run (A B C A B C ...), so that whatever else the
   machine is doing slows every variant alike, and report a **ratio** against a named baseline.

    from minilib.support.bench import compare
    result = compare({"naive": slow, "fused": fast}, baseline="naive")
    result            # a table in a notebook; print(result.table()) in a terminal
    result.ratio("fused")   # baseline median / fused median: "× faster"

Counting: :func:`attention_flops` and :func:`linear_flops` are the formulas, :func:`count_flops` counts a
model's forward pass (one multiply-add = 2 FLOPs, the usual convention); :func:`peak_matmul_gflops` and
:func:`memory_bandwidth` measure what this machine can do, the two roofs of the roofline that later chapters
compare against (arithmetic from chapter 00 on, bytes per second in chapters 13 and 14). Weighing: :func:`param_count`,
:func:`model_size_bytes` and :func:`peak_memory`.

``python -m minilib bench`` prints the course's headline comparisons (:class:`Headline` rows, see
``minilib/experiments/headlines``).
"""
from __future__ import annotations

import html
import math
import platform
import statistics
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from minilib.support.device import get_device, model_device

__all__ = [
    "Timing", "time_fn", "Comparison", "compare", "Headline", "machine_label", "peak_matmul_gflops", "memory_bandwidth",
    "attention_flops", "linear_flops", "count_flops", "param_count", "model_size_bytes", "peak_memory",
]


# ----------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Repeated wall-clock times of one function, in seconds."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range (75th minus 25th percentile): how much the middle half of runs varies."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q3 - q1

    @property
    def best(self) -> float:
        return min(self.times)

    def __str__(self) -> str:
        return f"{_format_seconds(self.median)} ± {_format_seconds(self.spread)} (median ± IQR of {len(self.times)})"


def _check_counts(warmup: int, repeats: int) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")


def _synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a timer would stop too early."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object]) -> float:
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - start


def time_fn(fn: Callable[[], object], warmup: int = 2, repeats: int = 10) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed; return the :class:`Timing`."""
    if not callable(fn):
        raise TypeError(f"time_fn expects a function of no arguments, got {type(fn).__name__}")
    _check_counts(warmup, repeats)
    for _ in range(warmup):
        fn()
    return Timing([_time_once(fn) for _ in range(repeats)])


@dataclass
class Comparison:
    """Timings of several variants measured interleaved, and their ratios against ``baseline``."""

    timings: dict[str, Timing]
    baseline: str
    machine: str = field(default_factory=lambda: machine_label())

    def ratio(self, name: str) -> float:
        """Baseline median / ``name``'s median: how many times faster ``name`` is (below 1: slower)."""
        if name not in self.timings:
            raise ValueError(f"no variant named {name!r}; the variants are {list(self.timings)}")
        return self.timings[self.baseline].median / self.timings[name].median

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(variant, median, spread, ratio) as display strings, in the order the variants were given."""
        return [
            (name, _format_seconds(t.median), _format_seconds(t.spread), f"{self.ratio(name):.2f}×")
            for name, t in self.timings.items()
        ]

    def table(self) -> str:
        header = ("variant", "median", "IQR", f"vs {self.baseline}")
        return text_table(header, self.rows()) + f"\n{self.machine}"

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        header = ("variant", "median", "IQR", f"× faster than {self.baseline}")
        return html_table(header, self.rows()) + f"<p><small>{html.escape(self.machine)}</small></p>"


def compare(variants: dict[str, Callable[[], object]], baseline: str | None = None,
            warmup: int = 2, repeats: int = 10) -> Comparison:
    """Time every variant round-robin (A B C, B C A, C A B, ...) and compare against ``baseline``.

    Interleaving means a burst of background work slows all variants alike instead of ruining one;
    rotating the order means no variant always runs right after the same neighbour.
    ``baseline`` defaults to the first variant.
    """
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"variants must be a non-empty dict name -> function, got {variants!r}")
    for name, fn in variants.items():
        if not callable(fn):
            raise TypeError(f"variant {name!r} must be a function of no arguments, got {type(fn).__name__}")
    baseline = next(iter(variants)) if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {list(variants)}")
    _check_counts(warmup, repeats)

    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            elapsed = _time_once(variants[name])
            if round_ >= warmup:
                times[name].append(elapsed)
    return Comparison({name: Timing(times[name]) for name in names}, baseline)


@dataclass(frozen=True, kw_only=True)
class Headline:
    """One row of ``python -m minilib bench``: a measured figure against the course's target.

    Built by name only: :meth:`at_least`, :meth:`at_most` and :meth:`about` write the target once and name the
    comparison, and ``passed`` is derived from it (a NaN measurement never passes); ``also`` is a further
    condition the claim needs, such as "and the fast path gave the same tokens". :meth:`unavailable` is a row that
    cannot be measured on this machine (a package or a kernel is missing): it neither passes nor misses.
    """

    name: str
    measured: float
    target: float
    unit: str
    goal: str                 # how measured compares with target: "≥", "≤" or "≈" (within low·target..high·target)
    detail: str = ""
    also: bool = True
    low: float = 0.8
    high: float = 1.25
    available: bool = True

    def __post_init__(self):
        if self.goal not in ("≥", "≤", "≈"):
            raise ValueError(f"goal must be '≥', '≤' or '≈', got {self.goal!r}")

    @property
    def passed(self) -> bool:
        if not self.available or not self.also:
            return False
        if self.goal == "≥":
            return bool(self.measured >= self.target)
        if self.goal == "≤":
            return bool(self.measured <= self.target)
        return bool(self.low * self.target <= self.measured <= self.high * self.target)

    @property
    def status(self) -> str:
        """``"PASS"``, ``"MISS"`` or ``"N/A"`` (not measurable here)."""
        return "N/A" if not self.available else "PASS" if self.passed else "MISS"

    @classmethod
    def at_least(cls, name: str, measured: float, target: float, unit: str, detail: str = "",
                 also: bool = True) -> "Headline":
        return cls(name=name, measured=measured, target=target, unit=unit, goal="≥", detail=detail, also=also)

    @classmethod
    def at_most(cls, name: str, measured: float, target: float, unit: str, detail: str = "",
                also: bool = True) -> "Headline":
        return cls(name=name, measured=measured, target=target, unit=unit, goal="≤", detail=detail, also=also)

    @classmethod
    def about(cls, name: str, measured: float, target: float, unit: str, detail: str = "",
              low: float = 0.8, high: float = 1.25) -> "Headline":
        """Passes within ``low``·target to ``high``·target: "no gain and no loss" claims, where noise is expected."""
        return cls(name=name, measured=measured, target=target, unit=unit, goal="≈", detail=detail, low=low, high=high)

    @classmethod
    def unavailable(cls, name: str, target: float, unit: str, goal: str, reason: str) -> "Headline":
        """A row this machine cannot measure, and why (``reason``): reported as N/A, never as a pass."""
        return cls(name=name, measured=math.nan, target=target, unit=unit, goal=goal, detail=reason, available=False)


# ------------------------------------------------------------------------------ the machine itself
def _cpuinfo(field: str) -> str | None:
    """The first CPU's ``field`` in /proc/cpuinfo ("model name", "flags"), or None (not Linux, no such field)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def int8_instructions(flags: set[str] | None = None) -> str:
    """The x86 instructions that decide an int8 GEMM's speed (``flags``: /proc/cpuinfo's, read when not given):
    "AVX-512 VNNI, AMX", "AVX-512 VNNI", "AVX-VNNI", "AVX2", or "" where none is listed (not x86, not Linux).

    Two CPUs sold under one name differ here: an AMD EPYC of 2019 has AVX2 alone, one of 2022 AVX-512 VNNI.
    """
    flags = _cpu_flags() if flags is None else flags
    vnni = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI" if "avx_vnni" in flags else ""
    if vnni and "amx_int8" in flags:
        return f"{vnni}, AMX"
    return vnni or ("AVX2" if "avx2" in flags else "")


def _cpu_name() -> str:
    instructions = int8_instructions()
    return f"{_cpu_model()} ({instructions})" if instructions else _cpu_model()


def machine_kind() -> str:
    """The kind of machine, for keeping one result per kind: the CPU model and its int8 instructions
    (:func:`int8_instructions`), and the GPU when there is one."""
    kind = _cpu_name()
    if torch.cuda.is_available():
        kind += f" + {torch.cuda.get_device_name()}"
    return kind


def machine_label() -> str:
    """Where a measurement was taken: CPU model, torch threads, torch version (and the GPU if any)."""
    label = f"{_cpu_name()} · {torch.get_num_threads()} torch threads · torch {torch.__version__}"
    if torch.cuda.is_available():
        label += f" · GPU {torch.cuda.get_device_name()}"
    return label


def peak_matmul_gflops(size: int = 1024, dtype: torch.dtype = torch.float32, device=None,
                       repeats: int = 10) -> float:
    """Measured matrix-multiply speed of this machine in GFLOP/s (10⁹ floating-point operations per second).

    Multiplies two ``size × size`` matrices (2·size³ FLOPs) ``repeats`` times and keeps the fastest run:
    the peak is what the hardware does when nothing disturbs it. ``device`` defaults to the course's
    device (CUDA when present).
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    device = get_device() if device is None else torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    timing = time_fn(lambda: a @ b, warmup=2, repeats=repeats)
    return 2 * size**3 / timing.best / 1e9


BANDWIDTH_KINDS = ("read", "copy")


def memory_bandwidth(megabytes: int = 256, kind: str = "read", device=None, repeats: int = 10) -> float:
    """Measured memory bandwidth of this machine in GB/s (10⁹ bytes per second): the second roof of the roofline.

    A STREAM-like measurement (McCalpin, 1995) on float32 arrays of ``megabytes`` MB each, far larger than the
    caches (a laptop's last-level cache holds a few MB, a server's tens to hundreds), so every byte comes
    from main memory:

    - ``kind="read"``: ``a.sum()`` reads the array once (bytes = its size): what a layer does with its weights
      when it generates one token, so "bytes ÷ this bandwidth" predicts the time per token of a large model;
    - ``kind="copy"``: ``b.copy_(a)`` reads one array and writes the other (bytes = twice the size, as STREAM's
      Copy counts them; the CPU may move a third more behind the scenes to fetch the lines it writes).

    Returns the bytes moved divided by the **median** of ``repeats`` timed runs (after one warm-up): memory
    traffic is shared with every other program, so the typical run, not the luckiest, is the honest figure.
    ``device`` defaults to the course's device.
    """
    if not isinstance(megabytes, int) or isinstance(megabytes, bool) or megabytes < 1:
        raise ValueError(f"megabytes must be a positive integer (the size of each array in MB), got {megabytes!r}")
    if kind not in BANDWIDTH_KINDS:
        raise ValueError(f"kind must be one of {BANDWIDTH_KINDS}, got {kind!r}")
    device = get_device() if device is None else torch.device(device)
    a = torch.ones(megabytes * 10**6 // 4, dtype=torch.float32, device=device)    # 4 bytes per float32
    if kind == "read":
        moved, step = a.nbytes, a.sum
    else:
        b = torch.empty_like(a)
        moved, step = 2 * a.nbytes, lambda: b.copy_(a)
    timing = time_fn(step, warmup=1, repeats=repeats)
    return moved / timing.median / 1e9


# ------------------------------------------------------------------------------------------ FLOPs
def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """FLOPs of a linear layer on ``tokens`` vectors: (tokens, d_in) @ (d_in, d_out) = 2·tokens·d_in·d_out.

    The bias add (tokens·d_out) is left out, as usual: it is tiny next to the matrix product.
    """
    _check_positive(tokens=tokens, d_in=d_in, d_out=d_out)
    return 2 * tokens * d_in * d_out


def attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool = False) -> int:
    """FLOPs of softmax(QKᵀ/√d)·V for ``seq`` queries and keys: the two matrix products.

    Scores QKᵀ: 2·seq·seq·head_dim per head; weighted sum P·V: the same again, so
    4·batch·heads·seq²·head_dim. With ``causal=True`` query i sees only keys 0..i, so only the
    seq·(seq+1)/2 pairs of the lower triangle are needed. Softmax and scaling (O(seq²), not
    O(seq²·head_dim)) are left out.
    """
    _check_positive(batch=batch, heads=heads, seq=seq, head_dim=head_dim)
    pairs = seq * (seq + 1) // 2 if causal else seq * seq
    return 4 * batch * heads * pairs * head_dim


def count_flops(model: nn.Module, seq: int, batch: int = 1) -> int:
    """FLOPs of one forward pass on (batch, seq) token ids, counted by PyTorch's ``FlopCounterMode``.

    The counter sees every matrix multiplication the model runs (linear layers, QKᵀ and P·V, grouped
    einsums) as 2·m·n·k, whatever the design: pruned, grouped or shared layers are counted as they run.
    Element-wise work (softmax, norms, activations) and embedding look-ups are not counted. The whole
    model is run: a classifier's head (or Hugging Face's pooler) is in the count, tiny next to the layers.
    For a plain encoder the count equals the formulas: per layer, 4·:func:`linear_flops` (d → d) for
    Q, K, V and the output, :func:`attention_flops`, and the two FFN :func:`linear_flops`.
    """
    _check_positive(seq=seq, batch=batch)
    ids = torch.ones(batch, seq, dtype=torch.long, device=model_device(model))  # (batch, seq)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------- size, memory
def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared/tied parameter counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _tensors(value):
    """Every plain tensor inside a state-dict value (quantized modules store tuples of packed tensors;
    torchao stores tensor subclasses that wrap plain int8 data and scales)."""
    if isinstance(value, torch.Tensor) and hasattr(value, "__tensor_flatten__"):
        for name in value.__tensor_flatten__()[0]:
            yield from _tensors(getattr(value, name))
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy: parameters, buffers and packed (quantized) weights.

    Counts the memory each distinct storage really holds, so tied weights count once and packed
    integers count at their packed size (two int4 values in one byte count as one byte, not two).
    """
    tensors = [*_tensors([*model.parameters(), *model.buffers()]), *_tensors(list(model.state_dict().values()))]
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class _LiveTensorMemory(TorchDispatchMode):
    """Counts bytes of tensor storages created while active, as they are created and freed.

    Every PyTorch operation passes through ``__torch_dispatch__``; each new output storage adds its
    size, and a weak-reference callback subtracts it when the storage is freed. Views and in-place
    results (whose schema says they alias an input) allocate nothing and are skipped.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, int] = {}
        self._refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs = out if len(returns) > 1 else (out,)  # one output per declared return (which may be a list)
        for value, declared in zip(outputs, returns):
            if declared.alias_info is None:
                for tensor in tree_leaves(value):
                    if isinstance(tensor, torch.Tensor):
                        self._allocated(tensor.untyped_storage())
        return out

    def _allocated(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        self._refs.append(weakref.ref(storage, lambda _, key=key: self._freed(key)))

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


def peak_memory(fn: Callable[[], object]) -> int:
    """Extra bytes of tensor memory alive at the peak while ``fn()`` runs (its result included).

    Tensors that existed before the call (inputs, weights) are not counted: this is the memory the
    computation itself needs. ``n × n`` matrix products need ~n² bytes, a chunked computation less.
    """
    if not callable(fn):
        raise TypeError(f"peak_memory expects a function of no arguments, got {type(fn).__name__}")
    with _LiveTensorMemory() as tracker:
        fn()
    return tracker.peak


# -------------------------------------------------------------------------------------- display
def _format_seconds(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def text_table(header, rows) -> str:
    """A plain-text table: ``header`` and ``rows`` (sequences of cells) in columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line("-" * w for w in widths), *(line(row) for row in rows)])


def html_table(header, rows) -> str:
    """:func:`text_table`'s table in HTML, for a notebook's display."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
