"""Noise in notebook outputs: raw log lines and load failures are found (the root conftest fails a notebook cell that
prints one); a warning meant for the user and ordinary text are not noise."""
import nbformat
import pytest

from minilib.course.output_noise import noise

stream = nbformat.v4.new_output


@pytest.mark.parametrize("text, kind", [
    ("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library: /x\n",
     "failure to load"),
    ("W1207 11:42:34.532000 16204 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass\n",
     "raw log line"),
    ("ok\nWARNING:root:something for developers\n", "raw log line"),
    ("I1207 09:00:01.000001 77 torch/_dynamo/eval_frame.py:12] compiling\n", "raw log line"),
    ("USDT:2026-12-07 21:22:23 11330:11330 SyncActivityProfilerHandler.cpp:52] profiler_start\n", "raw log line"),
])
def test_noise_is_found_and_named(text, kind):
    found = noise([stream("stream", name="stderr", text=text)])
    assert len(found) == 1 and kind in found[0] and text.strip().splitlines()[-1][:40] in found[0]


def test_noise_in_a_results_plain_text_is_found_too():
    result = stream("execute_result", data={"text/plain": "Failed to load libfoo.so"}, execution_count=1)
    assert noise([result]) == ["a library's failure to load a part of itself: Failed to load libfoo.so"]


@pytest.mark.parametrize("text", [
    "/x/y.py:3: UserWarning: the input is padded on the right\n  warnings.warn(...)\n",
    "W = torch.randn(3)\nWARNING is a word here, not a log line\n",
    "loss 0.21, accuracy 98.6%\nfailed to converge? no: loaded 4 models\n",
])
def test_warnings_for_the_user_and_ordinary_text_are_not_noise(text):
    assert noise([stream("stream", name="stderr", text=text)]) == []


def test_a_notebook_cell_that_prints_noise_fails_under_the_test_command(tmp_path):
    """The plugin, loaded as the root conftest loads it, fails the noisy cell of a notebook run by nbval, and only it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    notebook = tmp_path / "noisy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import sys\nprint('Failed to load /x/_C_mxfp8.so: Could not load this library',"
                                  " file=sys.stderr)"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('a warning for the user')\nprint('fine')"),
    ]), notebook)
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", os.devnull, "-p", "minilib.course.output_noise",
                          "--nbval-lax", "-p", "no:cacheprovider", str(notebook)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])})
    assert "1 failed, 1 passed" in run.stdout, run.stdout[-3000:]
    assert "a library's failure to load a part of itself: Failed to load /x/_C_mxfp8.so" in run.stdout


def test_torchao_imported_by_transformers_prints_no_noise_and_real_messages_still_show():
    """transformers imports torchao whenever it is installed; after `import minilib` its messages about
    CUDA-only extensions (and torch's notice about its enums) are gone, and other messages of the same loggers show."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    code = ("import logging, sys\nimport minilib\nfrom transformers import BertModel\n"
            "from minilib.experiments.library_rows import TORCHAO_INT8_DYNAMIC, torchao_config\n"
            "torchao_config(TORCHAO_INT8_DYNAMIC)\nassert 'torchao' in sys.modules\n"
            "logging.getLogger('torchao').warning('a real torchao warning')\n"
            "logging.getLogger('torch.utils._pytree').warning('a real pytree message')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert "a real torchao warning" in output and "a real pytree message" in output
    assert "Failed to load" not in output and "Enum subclass" not in output, output


def test_the_onnx_exporter_says_nothing_about_a_missing_torchvision_and_real_messages_still_show(tmp_path):
    """torch.onnx's current exporter (dynamo=True, chapter 10's Exercise 10.5) logs a line per torchvision operator
    when torchvision is absent; after `import minilib` those lines are gone, other messages of its logger show."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the exporter has nothing to say about it")
    code = ("import logging, torch\nimport minilib\n"
            f"torch.onnx.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),), {str(tmp_path / 'linear.onnx')!r}, "
            "dynamo=True, verbose=False)\n"
            "logging.getLogger('torch.onnx._internal.exporter._registration').warning('a real exporter message')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert "a real exporter message" in output
    assert "torchvision is not installed" not in output, output


def test_the_profiler_prints_no_trace_points_after_importing_minilib():
    """PyTorch's profiler (chapters 07 and 08 profile a forward pass) writes "USDT:… profiler_start" lines to stderr
    unless its log level is raised; importing minilib raises it, unless the learner set one."""
    import os
    import subprocess
    import sys

    code = ("import torch, minilib\nfrom torch.profiler import profile\n"
            "with profile() as p:\n    torch.ones(4) @ torch.ones(4)\nprint(len(p.key_averages()) > 0)\n")
    env = {name: value for name, value in os.environ.items() if name != "KINETO_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr[-2000:]
    assert noise([stream("stream", name="stderr", text=run.stderr)]) == [], run.stderr
    chosen = subprocess.run([sys.executable, "-c", "import os, minilib; print(os.environ['KINETO_LOG_LEVEL'])"],
                            capture_output=True, text=True, env=env | {"KINETO_LOG_LEVEL": "3"})
    assert chosen.stdout.strip() == "3"
