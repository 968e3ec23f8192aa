"""The test command's workers: each gets its share of the CPUs (and passes it to the kernels it starts), and the
longest files are handed out first. No timing is asserted."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from minilib.course import pytest_workers
from minilib.support import threads


def test_each_worker_gets_an_equal_share_of_the_cpus_and_at_least_one():
    assert pytest_workers.threads_per_worker(2, 2) == 1
    assert pytest_workers.threads_per_worker(16, 2) == 8
    assert pytest_workers.threads_per_worker(5, 2) == 2
    assert pytest_workers.threads_per_worker(1, 4) == 1


def test_a_worker_sets_its_share_for_itself_and_its_kernels(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    environ = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}
    try:
        assert pytest_workers.share_threads(environ) == 2
        assert environ["MINILIB_THREADS"] == environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("environ", [{}, {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"},
                                     {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2", "MINILIB_THREADS": "3"}])
def test_one_process_or_a_chosen_count_is_left_alone(environ):
    before, given = torch.get_num_threads(), dict(environ)
    assert pytest_workers.share_threads(environ) is None
    assert environ == given and torch.get_num_threads() == before


def test_notebook_times_are_the_longest_recorded_on_any_machine(tmp_path):
    runs = {"a.json": {"02_x.ipynb": 16.0, "07_y.ipynb": 55.5}, "b.json": {"02_x.ipynb": 21.0, "07_y.ipynb": None}}
    for name, seconds in runs.items():
        (tmp_path / name).write_text(json.dumps({"notebooks": {nb: {"seconds": s} for nb, s in seconds.items()}}))
    assert pytest_workers.notebook_seconds(tmp_path) == {"02_x.ipynb": 21.0, "07_y.ipynb": 55.5}
    assert pytest_workers.notebook_seconds()["10_huggingface.ipynb"] > pytest_workers.notebook_seconds()["00_welcome.ipynb"]


def items(*nodeids):
    return [SimpleNamespace(nodeid=nodeid) for nodeid in nodeids]


def test_longest_files_first_and_each_file_kept_together_in_its_order():
    collected = items("tests/test_a.py::one", "tests/test_binder.py::fresh", "tests/test_b.py::one", "tests/test_b.py::two",
                      "notebooks/02_x.ipynb::Cell 0", "notebooks/07_y.ipynb::Cell 0", "notebooks/07_y.ipynb::Cell 1",
                      "notebooks/15_new.ipynb::Cell 0", "tests/test_a.py::two", "tests/test_a.py::three")
    seconds = {"02_x.ipynb": 16.0, "07_y.ipynb": 55.5}
    order = [item.nodeid for item in pytest_workers.longest_first(collected, seconds, ci=True)]
    assert order == ["tests/test_binder.py::fresh", "notebooks/15_new.ipynb::Cell 0", "notebooks/07_y.ipynb::Cell 0",
                     "notebooks/07_y.ipynb::Cell 1", "notebooks/02_x.ipynb::Cell 0", "tests/test_a.py::one",
                     "tests/test_a.py::two", "tests/test_a.py::three", "tests/test_b.py::one", "tests/test_b.py::two"]
    elsewhere = [item.nodeid for item in pytest_workers.longest_first(collected, seconds, ci=False)]
    assert elsewhere[:5] == order[1:6] and elsewhere[-1] == "tests/test_binder.py::fresh"   # skipped there: one test
    assert sorted(elsewhere) == sorted(item.nodeid for item in collected)


def test_under_xdist_each_worker_and_its_children_use_their_share(tmp_path):
    """Two real workers, each reporting PyTorch's threads and what a process it starts would inherit."""
    for name in ("a", "b"):
        (tmp_path / f"test_{name}.py").write_text(
            "import os, pathlib, torch\n"
            f"def test_{name}():\n"
            f"    pathlib.Path('report_{name}.txt').write_text(' '.join(map(str, [torch.get_num_threads(),"
            " os.environ['MINILIB_THREADS'], os.environ['OMP_NUM_THREADS']])))\n")
    env = {name: value for name, value in os.environ.items() if name not in ("MINILIB_THREADS", "OMP_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
                          "-p", "minilib.course.pytest_workers", "-n", "2", "--dist", "loadscope", "-q", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    share = str(pytest_workers.threads_per_worker(threads.usable_cpus(), 2))
    for name in ("a", "b"):
        assert (tmp_path / f"report_{name}.txt").read_text().split() == [share] * 3
