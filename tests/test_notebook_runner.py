"""Running notebooks in a fresh kernel: outputs, errors, time limits, dead kernels, folder and environment."""
import nbformat
import pytest

from minilib.course.notebook_runner import CellFailed, kernel_environment, run_cells


def notebook(*sources):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title")]
                                    + [nbformat.v4.new_code_cell(source) for source in sources])


def test_runs_cells_in_order_in_the_given_folder_and_environment(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    nb = notebook("import os\nx = open('data.txt').read()",
                  "x + ' ' + os.environ['COURSE_TEST_VALUE']",
                  "from IPython.display import display, Markdown\ndisplay(Markdown('**shown**'))\nprint('stdout is not kept')")
    run_cells(nb, tmp_path, timeout=60, env={"COURSE_TEST_VALUE": "world", "PATH": "/usr/bin:/bin"})
    assert nb.cells[2].outputs == [{"data": {"text/plain": "'hello world'"}}]
    assert nb.cells[3].outputs[0]["data"]["text/markdown"] == "**shown**" and len(nb.cells[3].outputs) == 1


@pytest.mark.parametrize("source, reason, text", [
    ("raise KeyError('missing')", "error", "cell 2: KeyError: 'missing'"),
    ("import time\nwhile True:\n    time.sleep(0.1)", "timeout", "cell 2: ran past the time limit"),
    ("import os\nos._exit(1)", "dead", "cell 2: the kernel died"),
])
def test_stops_at_the_first_failure_and_names_the_cell(tmp_path, source, reason, text):
    nb = notebook("1 + 1", source, "never = True")
    with pytest.raises(CellFailed) as failure:
        run_cells(nb, tmp_path, timeout=8)
    assert (failure.value.index, failure.value.reason, str(failure.value)) == (2, reason, text)
    assert nb.cells[1].outputs == [{"data": {"text/plain": "2"}}] and nb.cells[3].outputs == []


def test_figures_show_and_packages_import_whatever_the_calling_shell_set(tmp_path, monkeypatch):
    """A headless shell often sets MPLBACKEND=Agg, and a service's image may find packages via PYTHONPATH
    (as the course's GPU check does): the kernel still draws inline and still finds what this Python finds."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    env = kernel_environment({"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert env["PYTHONPATH"] == str(tmp_path / "site") and env["MPLBACKEND"].endswith("backend_inline")
    assert kernel_environment({"PYTHONPATH": "/given"})["PYTHONPATH"] == "/given"
    monkeypatch.delenv("PYTHONPATH")
    nb = notebook("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    run_cells(nb, tmp_path, timeout=60, env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert "image/png" in nb.cells[1].outputs[0]["data"]
