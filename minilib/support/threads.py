"""Threads that fit the CPU the course actually has: a laptop, a Binder pod, a school's shared hub.

PyTorch splits each operation over ``torch.get_num_threads()`` threads, one per core it *sees*, and every
operation ends with all its threads meeting at a barrier. That is right on a quiet laptop and wrong in two
common places:

- **a CPU quota**: Binder and JupyterHub pods see all the host's cores but may use, say, one core's worth of
  time (the cgroup's ``cpu.max``); PyTorch still starts a thread per core it sees;
- **a busy neighbour**: on a shared machine another program keeps a core busy; a thread that lands there waits
  for its turn (milliseconds), and every barrier waits for that thread.

Either way an operation that takes 50 µs alone can take several milliseconds. Training a small model is
thousands of such operations, so a chapter that trains one can run ten times slower beside one busy program.
This module counts the CPUs the course may use (:func:`usable_cpus`: the affinity mask and the cgroup quota,
never the host's count), and importing ``minilib.support`` lowers PyTorch's threads to that count
less the CPUs other programs keep busy at that moment (:func:`use_usable_cpus`, :func:`busy_cpus`).
:func:`minilib.support.train.fit` looks again when training starts: small models train on one thread
(:func:`training_threads`; alone that costs them about a sixth of their speed, beside a busy program it saves
most of it), larger models on the usable CPUs minus those other programs keep busy then.

``MINILIB_THREADS=n`` overrides the choice everywhere (for example to time the course as it ran before).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

SMALL_MATMUL_FLOPS = 50e6
"""Below this many FLOPs per matrix product (about a millisecond on one core) a training step is "many small
operations": waking a second thread costs as much as it saves, and a busy neighbour costs far more."""


# --------------------------------------------------------------------------------- what we may use
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[tuple[str, Path]]:
    """(version, folder) of this process's CPU cgroup and each of its parents, innermost first.

    ``/proc/self/cgroup`` lines are ``id:controllers:path``: ``0::path`` for cgroup v2 (mounted at ``root``, or
    at ``root/unified`` beside v1), ``n:cpu,cpuacct:path`` for v1's CPU controller (mounted at ``root/cpu``).
    """
    dirs = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mounts, version = [root, root / "unified"], "v2"
        elif "cpu" in controllers.split(","):
            mounts, version = [root / controllers, root / "cpu"], "v1"
        else:
            continue
        parts = Path(path).relative_to("/").parts
        for depth in range(len(parts), -1, -1):      # the process's own group first, then its parents
            dirs += [(version, mount.joinpath(*parts[:depth])) for mount in mounts]
    return dirs


def cpu_quota(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup") -> float | None:
    """CPUs' worth of time the cgroup quota allows this process (1.5 = one and a half cores), None if unlimited.

    cgroup v2: ``cpu.max`` holds ``"quota period"`` in µs (``"max 100000"``: no limit). cgroup v1:
    ``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``. The tightest limit of the process's group
    and its parents counts.
    """
    quotas = []
    for version, folder in _cgroup_dirs(Path(root), Path(proc_cgroup)):
        if version == "v2":
            fields = (_read(folder / "cpu.max") or "max").split()
            quota, period = fields[0], fields[1] if len(fields) > 1 else "100000"
        else:
            quota, period = _read(folder / "cpu.cfs_quota_us") or "-1", _read(folder / "cpu.cfs_period_us") or "0"
        if quota not in ("max", "-1") and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset``), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS and Windows have no affinity mask: every CPU
        return os.cpu_count() or 1


def usable_cpus(quota: float | None | str = "read") -> int:
    """CPUs the course may use: the affinity mask, capped by the cgroup quota rounded up; at least 1.

    ``quota``: a number to use instead of reading the cgroup (tests, what-ifs), None for no quota.
    """
    quota = cpu_quota() if quota == "read" else quota
    cpus = affinity_cpus()
    return max(1, min(cpus, math.ceil(quota)) if quota is not None else cpus)


# ------------------------------------------------------------------------------ what others keep busy
def _busy_and_own_seconds() -> tuple[float, float]:
    import psutil

    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    own = os.times()
    return busy, own.user + own.system


def busy_cpus(seconds: float = 0.1) -> float:
    """How many CPUs other programs kept busy during the last ``seconds`` (0.0 to the machine's count).

    Read from the system's CPU time counters (``/proc/stat`` on Linux), minus this process's own time. On a
    host shared through containers these count the host's CPUs, so compare them with :func:`usable_cpus`.
    """
    busy_before, own_before = _busy_and_own_seconds()
    start = time.perf_counter()
    time.sleep(seconds)
    busy_after, own_after = _busy_and_own_seconds()
    elapsed = time.perf_counter() - start
    return max(0.0, (busy_after - busy_before) - (own_after - own_before)) / elapsed


# ------------------------------------------------------------------------------------- the choice
def course_threads(busy: float | None = None, quota: float | None | str = "read") -> int:
    """Threads for the course's larger work: the usable CPUs minus those other programs keep busy; at least 1.

    ``MINILIB_THREADS`` wins when set. ``busy`` (CPUs busy elsewhere) is measured when not given.
    """
    wanted = os.environ.get("MINILIB_THREADS", "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"MINILIB_THREADS must be a positive whole number of threads, got {wanted!r}")
        return int(wanted)
    return free_cpus(usable_cpus(quota), affinity_cpus(), busy_cpus() if busy is None else busy)


def free_cpus(usable: int, seen: int, busy: float) -> int:
    """Of the ``usable`` CPUs, those other programs leave free: ``seen`` (the CPUs the busy count covers) less
    ``busy``, rounded, at most ``usable`` and at least 1. A core kept busy by another program is not ours to use."""
    return max(1, min(usable, round(seen - busy)))


def matmul_flops_per_step(model: nn.Module, tokens: int) -> float:
    """FLOPs of the average matrix product of one forward pass over ``tokens`` tokens: 2·tokens·d_in·d_out
    averaged over the model's ``nn.Linear`` layers (0.0 for a model without any)."""
    sizes = [m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    return 2 * tokens * sum(sizes) / len(sizes) if sizes else 0.0


def one_thread_for(model: nn.Module, tokens: int) -> bool:
    """Whether a pass of ``model`` over ``tokens`` tokens should run on one thread: it is "many small operations"
    (its average matrix product below :data:`SMALL_MATMUL_FLOPS`, where a second thread costs as much as it saves)
    and ``MINILIB_THREADS`` does not say otherwise."""
    return not os.environ.get("MINILIB_THREADS", "").strip() and matmul_flops_per_step(model, tokens) < SMALL_MATMUL_FLOPS


def training_threads(model: nn.Module, tokens: int) -> int:
    """Threads to train ``model`` on batches of ``tokens`` tokens: one for small work (:func:`one_thread_for`),
    else :func:`course_threads` (``MINILIB_THREADS`` wins)."""
    return 1 if one_thread_for(model, tokens) else course_threads()


def decoding_threads(model: nn.Module, tokens: int) -> int:
    """Threads to generate with ``model``, ``tokens`` new tokens a pass (batch × tokens per step): one for small
    work (:func:`one_thread_for`), else the count in use. Chapter 13's decoder on the 2-core AMD EPYC with AVX-512
    VNNI: 2.86 ms a token on one thread, 3.13 ms on two."""
    return 1 if one_thread_for(model, tokens) else torch.get_num_threads()


@contextlib.contextmanager
def threads(n: int):
    """Run the block with PyTorch using ``n`` threads, then restore the previous count."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads needs a positive whole number of threads, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def use_usable_cpus() -> int:
    """Lower PyTorch's threads to :func:`course_threads` (the usable CPUs less those other programs keep busy,
    or ``MINILIB_THREADS``) when it would use more; return the count now in use. Done once when
    ``minilib.support`` is imported; it never raises a count that a learner or ``OMP_NUM_THREADS`` lowered.

    Why look at the neighbours at all: guessing wrong costs little one way and much the other. Chapter 01's first
    run on a 2-core AMD EPYC took 14.7 s alone on 2 threads and 13.4 s on 1; beside one busy program, 88.3 s on 2
    threads (each operation waits for the thread that has no core) and 13.4 s on 1. A neighbour that happened to
    be busy for a moment costs at most the second core's speed-up; the count can be raised again with
    ``torch.set_num_threads`` or ``MINILIB_THREADS``.
    """
    wanted = os.environ.get("MINILIB_THREADS", "").strip()
    limit = course_threads()
    if torch.get_num_threads() > limit or wanted:
        torch.set_num_threads(limit)
    return torch.get_num_threads()
