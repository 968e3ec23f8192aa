"""Run a notebook's code cells in a fresh kernel of this very Python, as nbval does.

The course's budget command (:mod:`minilib.course.notebook_budget`) and the classroom grader
(:mod:`minilib.course.assignments.grade`) both need the same thing: execute code in order, keep what each cell
displayed, and know whether it raised, ran out of time, or killed the kernel.

:class:`Kernel` is one kernel, run cell by cell, each cell with its own time limit: a cell that runs too long is
interrupted (KeyboardInterrupt) and the kernel is ready for the next one. :func:`run_cells` runs a whole notebook
under one time limit and stops at the first failure.

It uses a *blocking* kernel client and reads each cell's messages until the kernel reports it is
idle. A full notebook client also plays the browser's part for widgets, and with an interactive
widget on the page it sometimes waits for a reply until its time limit (so a grade or a budget
would depend on luck); nothing here waits on a browser.
"""
from __future__ import annotations

import os
import queue
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic

import ipykernel.kernelspec
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

THIS_PYTHON = "minilib-this-python"
POLL_SECONDS = 1.0       # how often a long cell is checked for a dead kernel
INTERRUPT_GRACE = 10.0   # seconds an interrupted cell has to stop before the kernel counts as stuck


class CellFailed(Exception):
    """A cell stopped the run. ``reason``: "error" (it raised), "timeout" or "dead" (the kernel died)."""

    def __init__(self, index: int, reason: str, ename: str = "", evalue: str = ""):
        super().__init__(f"cell {index}: " + {"error": f"{ename}: {evalue}", "timeout": "ran past the time limit",
                                               "dead": "the kernel died"}[reason])
        self.index, self.reason, self.ename, self.evalue = index, reason, ename, evalue


@dataclass
class CellResult:
    """What running one cell did. ``status``: "ok", "error" (it raised ``ename: evalue``), "timeout" (interrupted
    at its time limit) or "dead" (the kernel died, or did not stop when interrupted).

    ``outputs``: ``[{"data": {mime type: value}}, ...]`` (displays and results); ``stdout``: what it printed;
    ``user_expressions``: the values of the expressions asked for (``{name: text}``), read from the kernel's reply.
    """

    status: str
    outputs: list = field(default_factory=list)
    stdout: str = ""
    ename: str = ""
    evalue: str = ""
    user_expressions: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Kernel:
    """A fresh kernel of this Python (the one with minilib installed), in folder ``cwd``, run cell by cell.

    ``env``: its environment (default: this process's), see :func:`kernel_environment`. Use it as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, cwd: Path, env: dict | None = None):
        self.manager = KernelManager(kernel_name=THIS_PYTHON, kernel_spec_manager=_ThisPythonOnly())
        self.manager.start_kernel(cwd=str(cwd), env=kernel_environment(os.environ if env is None else env))
        self.client = self.manager.client()
        self.client.start_channels()
        self.alive = True
        try:
            self.client.wait_for_ready(timeout=60)
        except Exception:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
        self.alive = False

    def run(self, source: str, timeout: float, silent: bool = False, user_expressions: dict | None = None) -> CellResult:
        """Execute ``source`` for at most ``timeout`` seconds. ``silent``: not counted in the kernel's history.

        A cell past its limit is interrupted and, once the kernel is idle again, reported as "timeout"; a kernel
        that died, or that does not stop within ``INTERRUPT_GRACE`` seconds of the interrupt, is reported as
        "dead" and :attr:`alive` becomes False (start a new kernel to go on).
        """
        if not self.alive:
            return CellResult("dead")
        started = monotonic()
        msg_id = self.client.execute(source, silent=silent, store_history=not silent, allow_stdin=False,
                                     stop_on_error=False, user_expressions=user_expressions or {})
        result = CellResult("ok")
        deadline, interrupted = started + timeout, False
        while True:   # iopub: what the cell displays, then "idle" when it is done
            message = self._next(self.client.get_iopub_msg, deadline)
            if message is None:                      # the time limit, or a dead kernel
                if not self.manager.is_alive() or interrupted:
                    return self._dead(result, started)
                self.manager.interrupt_kernel()
                deadline, interrupted = monotonic() + INTERRUPT_GRACE, True
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind in ("display_data", "execute_result"):
                result.outputs.append({"data": content["data"]})
            elif kind == "stream" and content.get("name") == "stdout":
                result.stdout += content["text"]
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:   # shell: the reply says whether the cell raised, and holds the user expressions
            reply = self._next(self.client.get_shell_msg, monotonic() + INTERRUPT_GRACE)
            if reply is None:
                return self._dead(result, started)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        content = reply["content"]
        result.seconds = monotonic() - started
        result.user_expressions = {name: value.get("data", {}).get("text/plain", "")
                                   for name, value in content.get("user_expressions", {}).items()
                                   if value.get("status") == "ok"}
        if interrupted:
            result.status = "timeout"
        elif content["status"] == "error":
            result.status, result.ename, result.evalue = "error", content["ename"], content["evalue"]
        return result

    def _next(self, get, deadline: float):
        """The next message, or None at the deadline or when the kernel died."""
        while True:
            remaining = deadline - monotonic()
            if remaining <= 0:
                return None
            try:
                return get(timeout=min(POLL_SECONDS, remaining))
            except queue.Empty:
                if not self.manager.is_alive():
                    return None

    def _dead(self, result: CellResult, started: float) -> CellResult:
        self.alive = False
        result.status, result.seconds = "dead", monotonic() - started
        return result


def run_cells(notebook, cwd: Path, timeout: float, env: dict | None = None) -> None:
    """Execute the code cells of ``notebook`` (an nbformat node) in order, in at most ``timeout`` seconds.

    Each code cell's ``outputs`` become ``[{"data": {mime type: value}}, ...]`` (displays and results).
    ``cwd``: the kernel's working folder; ``env``: its environment (default: this process's), see
    :func:`kernel_environment`. Raises :class:`CellFailed` at the first error, at the time limit, or if the kernel dies.
    """
    with Kernel(cwd, env) as kernel:
        deadline = monotonic() + timeout
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and cell.source.strip():
                result = kernel.run(cell.source, max(deadline - monotonic(), 0.001))
                cell.outputs = result.outputs
                if not result.ok:
                    raise CellFailed(index, result.status, result.ename, result.evalue)


def kernel_environment(env) -> dict:
    """``env`` as a notebook kernel of this Python needs it, whatever the shell that started us set.

    * ``PYTHONPATH`` of this process is kept when ``env`` has none: where the packages are found
      through it (a service's image, the course's GPU check), the kernel could not even import ipykernel.
    * Figures are drawn inline, as in Jupyter: ``MPLBACKEND=Agg`` (usual on headless machines) would
      make ``plt.show()`` draw nothing, and a notebook would lose every plot.
    """
    env = dict(env)
    if "PYTHONPATH" in os.environ:
        env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


class _ThisPythonOnly(KernelSpecManager):
    """Kernel specs in which ``THIS_PYTHON`` is this very Python (the one with minilib installed),
    whatever other "python3" kernels the machine has: the same idea as nbval's --nbval-current-env."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name != THIS_PYTHON:
            return super().get_kernel_spec(kernel_name)
        return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict())
