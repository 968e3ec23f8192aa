"""Run a notebook's code cells in a fresh kernel of this very Python, as nbval does.

The course's budget command (:mod:`minilib.course.notebook_budget`) and the classroom grader
(:mod:`minilib.course.assignments.grade`) both need the same thing: execute every code cell in order, keep
what each cell displayed, and stop at the first error, at a time limit, or when the kernel dies.

It uses a *blocking* kernel client and reads each cell's messages until the kernel reports it is
idle. A full notebook client also plays the browser's part for widgets, and with an interactive
widget on the page it sometimes waits for a reply until its time limit (so a grade or a budget
would depend on luck); nothing here waits on a browser.
"""
from __future__ import annotations

import os
import queue
from pathlib import Path
from time import monotonic

import ipykernel.kernelspec
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

THIS_PYTHON = "minilib-this-python"
POLL_SECONDS = 1.0   # how often a long cell is checked for a dead kernel


class CellFailed(Exception):
    """A cell stopped the run. ``reason``: "error" (it raised), "timeout" or "dead" (the kernel died)."""

    def __init__(self, index: int, reason: str, ename: str = "", evalue: str = ""):
        super().__init__(f"cell {index}: " + {"error": f"{ename}: {evalue}", "timeout": "ran past the time limit",
                                               "dead": "the kernel died"}[reason])
        self.index, self.reason, self.ename, self.evalue = index, reason, ename, evalue


def run_cells(notebook, cwd: Path, timeout: float, env: dict | None = None) -> None:
    """Execute the code cells of ``notebook`` (an nbformat node) in order, in at most ``timeout`` seconds.

    Each code cell's ``outputs`` become ``[{"data": {mime type: value}}, ...]`` (displays and results).
    ``cwd``: the kernel's working folder; ``env``: its environment (default: this process's), see
    :func:`kernel_environment`. Raises :class:`CellFailed` at the first error, at the time limit, or if the kernel dies.
    """
    manager = KernelManager(kernel_name=THIS_PYTHON, kernel_spec_manager=_ThisPythonOnly())
    manager.start_kernel(cwd=str(cwd), env=kernel_environment(os.environ if env is None else env))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        deadline = monotonic() + timeout
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and cell.source.strip():
                cell.outputs = _run_cell(manager, client, cell.source, index, deadline)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


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


def _run_cell(manager, client, source: str, index: int, deadline: float) -> list[dict]:
    msg_id = client.execute(source, allow_stdin=False, stop_on_error=True)
    outputs = []
    while True:   # iopub: what the cell displays, then "idle" when it is done
        message = _next_message(client.get_iopub_msg, manager, index, deadline)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind in ("display_data", "execute_result"):
            outputs.append({"data": content["data"]})
        elif kind == "status" and content["execution_state"] == "idle":
            break
    while True:   # shell: the reply says whether the cell raised
        reply = _next_message(client.get_shell_msg, manager, index, deadline)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    if reply["content"]["status"] == "error":
        raise CellFailed(index, "error", reply["content"]["ename"], reply["content"]["evalue"])
    return outputs


def _next_message(get, manager, index: int, deadline: float) -> dict:
    while True:
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise CellFailed(index, "timeout")
        try:
            return get(timeout=min(POLL_SECONDS, remaining))
        except queue.Empty:
            if not manager.is_alive():
                raise CellFailed(index, "dead") from None


class _ThisPythonOnly(KernelSpecManager):
    """Kernel specs in which ``THIS_PYTHON`` is this very Python (the one with minilib installed),
    whatever other "python3" kernels the machine has: the same idea as nbval's --nbval-current-env."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name != THIS_PYTHON:
            return super().get_kernel_spec(kernel_name)
        return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict())
