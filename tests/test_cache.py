"""The learner's cache: one folder per user, entries named by what made them, atomic writes, and two users at once."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from minilib.support import cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Builds:
    """A stand-in recipe: a tiny linear model whose 'training' sets known weights (the bias stays as drawn)."""

    def __init__(self, value=1.0):
        self.value, self.count = value, 0

    def skeleton(self):
        return nn.Linear(3, 2)

    def build(self, model):
        self.count += 1
        nn.init.constant_(model.weight, self.value)


def test_minilib_cache_overrides_the_default(private_cache):
    assert cache.cache_dir() == private_cache and private_cache.is_dir()


def test_the_default_is_this_users_own_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILIB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    folder = cache.cache_dir()
    assert folder.is_relative_to(tmp_path / "home") and folder.name == "minilib" and folder.is_dir()
    assert not folder.is_relative_to(ROOT)  # not inside the course, which several users may share


def test_cached_model_builds_once_then_loads_what_was_drawn_and_what_was_trained(private_cache):
    recipe = Builds(0.5)
    first = cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)
    second = cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)  # a new skeleton draws another bias
    assert recipe.count == 1
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert (second.weight == 0.5).all() and not second.training


def test_only_what_training_changed_is_stored(private_cache):
    def skeleton():
        torch.manual_seed(0)  # the same numbers every time: a pretrained body, say
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    def build(model):
        nn.init.zeros_(model[1].weight)

    cache.cached_model("body_and_head", {"lr": 1e-3}, skeleton, build)
    stored = cache.read_tensors(cache.entry_path("body_and_head", {"lr": 1e-3}, "safetensors"))
    assert sorted(stored) == ["1.weight"]
    assert (cache.cached_model("body_and_head", {"lr": 1e-3}, skeleton, build)[1].weight == 0).all()


def test_another_key_is_another_entry_and_nothing_is_deleted(private_cache):
    cache.cached_model("toy", "v1", Builds().skeleton, Builds().build)
    recipe = Builds(2.0)
    model = cache.cached_model("toy", {"version": 2, "lr": 0.1}, recipe.skeleton, recipe.build)
    assert recipe.count == 1 and (model.weight == 2.0).all()
    assert len(list((private_cache / "toy").glob("*.safetensors"))) == 2
    assert (cache.cached_model("toy", "v1", Builds(9.0).skeleton, Builds(9.0).build).weight == 1.0).all()


def test_the_key_names_the_entry_whatever_the_order_of_its_settings():
    assert cache.key_id({"lr": 0.1, "epochs": 2}) == cache.key_id({"epochs": 2, "lr": 0.1})
    assert cache.key_id({"lr": 0.1}) != cache.key_id({"lr": 0.2})


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_an_entry_name_must_be_a_plain_file_name(private_cache, name):
    with pytest.raises(ValueError, match="plain file name"):
        cache.entry_path(name, "v1", "json")


@pytest.mark.parametrize("damage", [b"not a checkpoint", b""])
def test_a_corrupt_entry_is_rebuilt(private_cache, damage):
    recipe = Builds(0.25)
    cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)
    cache.entry_path("toy", "v1", "safetensors").write_bytes(damage)
    with pytest.warns(UserWarning, match="unusable"):
        model = cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)
    assert recipe.count == 2 and (model.weight == 0.25).all()
    cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)
    assert recipe.count == 2  # the rebuilt file loads


def test_an_entry_that_does_not_fit_the_model_is_rebuilt(private_cache):
    cache.cached_model("toy", "v1", lambda: nn.Linear(5, 2), Builds().build)
    recipe = Builds(3.0)
    with pytest.warns(UserWarning, match="does not fit"):
        model = cache.cached_model("toy", "v1", recipe.skeleton, recipe.build)
    assert recipe.count == 1 and model.weight.shape == (2, 3)


def test_cached_json_computes_once_and_rereads_a_damaged_entry(private_cache):
    calls = []
    compute = lambda: calls.append(1) or {"accuracy": 0.9}  # noqa: E731
    assert cache.cached_json("sweep", ["run", 1], compute) == {"accuracy": 0.9}
    assert cache.cached_json("sweep", ["run", 1], compute) == {"accuracy": 0.9} and len(calls) == 1
    cache.entry_path("sweep", ["run", 1], "json").write_text("{half a fi")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.cached_json("sweep", ["run", 1], compute) == {"accuracy": 0.9}
    assert len(calls) == 2


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_damaged_entry(private_cache):
    path = private_cache / "entry.json"
    cache.write_atomically(path, b'{"kept": true}')

    with pytest.raises(TypeError):
        cache.write_atomically(path, "text where bytes were expected")  # fails half-way, after the file is made
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in private_cache.iterdir()] == ["entry.json"]


WRITER = textwrap.dedent("""
    import sys, time
    import torch
    from torch import nn
    from minilib.support import cache

    start_at, value = float(sys.argv[1]), float(sys.argv[2])
    while time.time() < start_at:   # both processes start writing at the same moment
        time.sleep(0.001)

    def build(model):
        time.sleep(0.2)
        torch.nn.init.constant_(model.weight, value)

    for _ in range(20):             # the same entry written again and again, read back each time
        path = cache.entry_path("shared_model", "v1", "safetensors")
        path.unlink(missing_ok=True)
        model = cache.cached_model("shared_model", "v1", lambda: nn.Linear(64, 64), build)
        assert model.weight.unique().numel() == 1, "a mix of two writes"
    print(cache.cache_dir(), float(model.weight[0, 0]), sep="\t")
""")


def _writers(homes_and_values, tmp_path, extra_env=lambda home: {}):
    """Start one process per (home, value) writing the same entry at the same moment; their outputs."""
    import time

    start_at = time.time() + 3
    env = {k: v for k, v in os.environ.items() if k not in ("MINILIB_CACHE", "XDG_CACHE_HOME")}
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(start_at), str(value)], cwd=tmp_path,
                                  env=env | {"HOME": str(home), "PYTHONPATH": str(ROOT)} | extra_env(home),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for home, value in homes_and_values]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    return [out.strip().split("\t") for out, _ in outputs]


def test_two_users_writing_the_same_model_at_once_each_keep_their_own(tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    (alice_dir, alice_value), (bob_dir, bob_value) = _writers([(alice, 1.0), (bob, 2.0)], tmp_path)
    assert Path(alice_dir).is_relative_to(alice) and Path(bob_dir).is_relative_to(bob)
    assert (float(alice_value), float(bob_value)) == (1.0, 2.0)
    for home in (alice, bob):
        leftovers = [p.name for p in home.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
        assert not leftovers, f"temporary files left behind: {leftovers}"


def test_two_kernels_sharing_one_cache_never_read_half_a_file(tmp_path):
    shared = tmp_path / "shared cache"
    results = _writers([(tmp_path / "one", 1.0), (tmp_path / "two", 2.0)], tmp_path,
                       extra_env=lambda home: {"MINILIB_CACHE": str(shared)})
    assert {folder for folder, _ in results} == {str(shared)}
    stored = cache.read_tensors(next(shared.rglob("*.safetensors")))
    assert stored["weight"].unique().tolist() in ([1.0], [2.0])
    assert sorted(p.name for p in shared.rglob("*") if p.is_file()) == [next(shared.rglob("*.safetensors")).name]


def _cleared_before_opening(load_file, file):
    Path(file).unlink()
    return load_file(file)


def _cleared_while_mapping(load_file, file):          # safetensors read the header; torch's mmap finds no file
    Path(file).unlink()
    raise RuntimeError(f"unable to open file <{file}> in read-only mode: No such file or directory (2)")


@pytest.mark.parametrize("clear", [_cleared_before_opening, _cleared_while_mapping])
def test_an_entry_another_kernel_removes_while_it_is_read_is_built_again_without_a_warning(private_cache, monkeypatch,
                                                                                           clear):
    builds = Builds(1.0)
    cache.cached_model("gone", "v1", builds.skeleton, builds.build)
    load_file = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda file, *args, **kwargs: clear(load_file, file))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # a removed entry is no entry, not an unusable one
        model = cache.cached_model("gone", "v1", builds.skeleton, builds.build)
    assert builds.count == 2 and torch.all(model.weight == 1.0)


def test_reading_no_file_says_so():
    with pytest.raises(FileNotFoundError, match="no file"):
        cache.read_tensors(Path("no such entry.safetensors"))
