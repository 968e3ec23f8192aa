"""Threads that fit the CPU the course may use: cgroup quotas (v1 and v2) read from fake cgroup folders, the
affinity mask under taskset, and fit's one thread for small models. No timing is asserted."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from minilib.support import threads
from minilib.support.train import TrainConfig, fit
from minilib.transformer import Classifier, Encoder, LanguageModel, TransformerConfig


def fake_cgroup(tmp_path, proc_lines, files):
    """A cgroup tree under tmp_path/cgroup with ``files`` {relative path: text}, and a /proc/self/cgroup file."""
    for name, text in files.items():
        path = tmp_path / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    return dict(root=tmp_path / "cgroup", proc_cgroup=proc)


def test_cgroup_v2_quota_of_the_process_group(tmp_path):
    paths = fake_cgroup(tmp_path, ["0::/user.slice/jupyter"], {"user.slice/jupyter/cpu.max": "150000 100000"})
    assert threads.cpu_quota(**paths) == 1.5


def test_cgroup_v2_unlimited_and_a_tighter_parent(tmp_path):
    paths = fake_cgroup(tmp_path, ["0::/pod/kernel"], {"pod/kernel/cpu.max": "max 100000", "pod/cpu.max": "50000 100000",
                                                        "cpu.max": "max 100000"})
    assert threads.cpu_quota(**paths) == 0.5
    unlimited = fake_cgroup(tmp_path / "u", ["0::/"], {"cpu.max": "max 100000"})
    assert threads.cpu_quota(**unlimited) is None


def test_cgroup_v1_quota_beside_a_v2_hierarchy(tmp_path):
    paths = fake_cgroup(tmp_path, ["4:memory:/x", "2:cpu,cpuacct:/docker/abc", "0::/"],
                        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
                         "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
                         "unified/cpu.max": "max 100000"})
    assert threads.cpu_quota(**paths) == 2.0
    unlimited = fake_cgroup(tmp_path / "u", ["1:cpu:/"], {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert threads.cpu_quota(**unlimited) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert threads.cpu_quota(tmp_path / "none", tmp_path / "missing") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 16)
    assert threads.usable_cpus(quota=None) == 16
    assert threads.usable_cpus(quota=1.5) == 2
    assert threads.usable_cpus(quota=0.2) == 1
    assert threads.usable_cpus(quota=64) == 16


def test_course_threads_leave_the_cores_others_keep_busy(monkeypatch):
    monkeypatch.delenv("MINILIB_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    assert threads.course_threads(busy=0.0, quota=None) == 2
    assert threads.course_threads(busy=1.0, quota=None) == 1      # one `yes > /dev/null` beside us
    assert threads.course_threads(busy=7.5, quota=None) == 1      # never fewer than one
    assert threads.course_threads(busy=0.0, quota=1.0) == 1
    monkeypatch.setenv("MINILIB_THREADS", "3")
    assert threads.course_threads(busy=1.0, quota=1.0) == 3
    monkeypatch.setenv("MINILIB_THREADS", "two")
    with pytest.raises(ValueError, match="MINILIB_THREADS must be a positive whole number"):
        threads.course_threads(busy=0.0)


def test_busy_cpus_sees_a_busy_program_beside_us():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cpus(0.3) > 0.5
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.skipif(not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"), reason="needs taskset (Linux)")
def test_importing_the_course_under_taskset_uses_one_thread():
    code = "import minilib.support, torch; from minilib.support import threads; print(threads.usable_cpus(), torch.get_num_threads())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={name: value for name, value in os.environ.items() if name != "MINILIB_THREADS"}
                         | {"OMP_NUM_THREADS": "8"})       # as if a launcher had set too many (and no override)
    assert out.stdout.split() == ["1", "1"]


def test_importing_the_course_beside_a_busy_program_leaves_it_its_core():
    code = "import minilib.support, torch; print(torch.get_num_threads())"
    env = {name: value for name, value in os.environ.items() if name != "MINILIB_THREADS"}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        beside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    finally:
        busy.kill()
        busy.wait()
    assert int(beside.stdout) <= max(1, threads.usable_cpus() - 1)       # at least the neighbour's core is left to it


def test_threads_context_restores_the_count_and_rejects_nonsense():
    before = torch.get_num_threads()
    with threads.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive whole number"):
        with threads.threads(0):
            pass


def test_small_models_train_on_one_thread_and_large_ones_on_the_course_threads(monkeypatch):
    monkeypatch.delenv("MINILIB_THREADS", raising=False)
    monkeypatch.setattr(threads, "course_threads", lambda: 2)
    small = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)   # the example
    assert threads.matmul_flops_per_step(small, 32 * 24) < threads.SMALL_MATMUL_FLOPS
    assert threads.training_threads(small, 32 * 24) == 1
    large = nn.Sequential(nn.Linear(384, 1536), nn.Linear(1536, 384))                          # a MiniLM FFN
    assert threads.training_threads(large, 32 * 128) == 2
    monkeypatch.setenv("MINILIB_THREADS", "2")
    assert threads.training_threads(small, 32 * 24) == 2


def test_small_models_decode_on_one_thread_and_the_count_comes_back(monkeypatch):
    from minilib.generation import generate, speculative_generate

    monkeypatch.delenv("MINILIB_THREADS", raising=False)
    config = TransformerConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=32, dropout=0.0)
    model, seen = LanguageModel(config).eval(), []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    assert threads.decoding_threads(model, 1) == 1
    before, prompt = torch.get_num_threads(), torch.randint(0, 30, (1, 4))
    generate(model, prompt, 5)
    speculative_generate(model, model, prompt, 5, k=2)
    assert set(seen) == {1} and torch.get_num_threads() == before
    wide = nn.Sequential(nn.Linear(2048, 8192), nn.Linear(8192, 2048))            # 34 MFLOP a token
    assert threads.decoding_threads(wide, 4) == torch.get_num_threads()          # large work keeps the count
    monkeypatch.setenv("MINILIB_THREADS", "2")
    assert threads.decoding_threads(model, 1) == torch.get_num_threads()


def test_fit_trains_a_small_model_on_one_thread_and_restores_the_count(monkeypatch):
    monkeypatch.delenv("MINILIB_THREADS", raising=False)
    seen = []
    config = TransformerConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8, dropout=0.0)
    model = Classifier(Encoder(config), n_classes=2)
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    data = TensorDataset(torch.randint(1, 30, (8, 8)), torch.ones(8, 8, dtype=torch.long), torch.randint(0, 2, (8,)))
    before = torch.get_num_threads()
    fit(model, data, TrainConfig(epochs=1, batch_size=4, progress=False, device="cpu"))
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
