"""Shipped artefacts: rebuilt from their recipe, loaded without training, and clear messages when unusable."""
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from minilib.experiments import artefacts
from minilib.experiments.artefacts import Artefact, ArtefactError
from minilib.support import cache


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    """An empty shipped folder and an empty user cache, so that the course's own data/ is never touched."""
    monkeypatch.setenv("MINILIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINILIB_RETRAIN", raising=False)
    return tmp_path


class Toy:
    """A two-part model whose 'training' changes only its second part; counts the trainings."""

    def __init__(self):
        self.trainings = 0

    def skeleton(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))

    def build(self, model):
        self.trainings += 1
        with torch.no_grad():
            model[1].weight.add_(0.25)

    def run(self, retrain=None):
        return artefacts.load_model(TOY, self.skeleton, self.build, retrain=retrain)


def toy_metric(model):
    return {"weight_mean": model[1].weight.mean().item()}


RECIPE = Toy()
TOY = Artefact("toy", "a toy model", "model", run=lambda: RECIPE.run(), metrics=toy_metric,
               depends=(Toy.build,), params={"seed": 0})


def sweep_run(key, compute):
    return artefacts.cached_result(SWEEP, key, compute)


SWEEP = Artefact("toy_sweep", "a toy sweep", "results", run=lambda: [sweep_run(k, lambda k=k: k * 10) for k in (1, 2)],
                 metrics=lambda results: {"n": float(len(results))}, depends=(sweep_run,))


@pytest.fixture
def shipped_toy():
    RECIPE.trainings = 0
    entry, = artefacts.rebuild([TOY])
    assert RECIPE.trainings == 1
    RECIPE.trainings = 0
    return entry


def test_rebuild_ships_only_what_training_changed_and_records_it(shipped_toy, private_folders):
    stored = safetensors.torch.load_file(private_folders / "data" / "toy.safetensors")
    assert sorted(stored) == ["1.weight"]                     # the untouched first layer and bias are not shipped
    assert stored["1.weight"].dtype == torch.float16          # float16 kept the recorded metric
    manifest = json.loads((private_folders / "data" / "manifest.json").read_text())["artefacts"]
    entry = manifest["toy"]
    assert entry == shipped_toy and entry["code_hash"] == artefacts.code_hash(TOY)
    assert entry["recipe"].endswith("Toy.build") and entry["seed"] == 0 and entry["dtype"] == "float16"
    assert entry["metrics"]["weight_mean"] == pytest.approx(toy_metric(RECIPE.run())["weight_mean"])


def test_the_shipped_model_loads_without_training(shipped_toy):
    model = RECIPE.run()
    expected = Toy().skeleton()
    Toy().build(expected)
    assert RECIPE.trainings == 0
    torch.testing.assert_close(model[1].weight, expected[1].weight, atol=1e-3, rtol=0)
    torch.testing.assert_close(model[0].weight, expected[0].weight, atol=0, rtol=0)
    assert artefacts.check(TOY) is None


def expect_refusal(problem_word):
    with pytest.raises(ArtefactError) as refusal:
        RECIPE.run()
    message = str(refusal.value)
    assert problem_word in message and "'toy'" in message
    assert "python -m minilib zoo rebuild toy" in message and "MINILIB_RETRAIN" in message
    assert RECIPE.trainings == 0
    return message


def test_missing_artefact_names_it_and_the_rebuild_command(shipped_toy, private_folders):
    (private_folders / "data" / "toy.safetensors").unlink()
    expect_refusal("missing")
    assert artefacts.check(TOY).startswith("missing")


def test_an_artefact_never_shipped_is_trained_on_first_use_with_a_warning():
    RECIPE.trainings = 0
    with pytest.warns(UserWarning, match="not shipped yet.*rebuild toy"):
        RECIPE.run()
    assert RECIPE.trainings == 1
    RECIPE.run()                                            # then it is the learner's own copy
    assert RECIPE.trainings == 1 and artefacts.check(TOY).startswith("missing")


def edit_manifest(folder, **changes):
    path = folder / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artefacts"]["toy"].update(changes)
    path.write_text(json.dumps(manifest))


def test_stale_artefact_is_refused_until_retraining_is_asked(shipped_toy, private_folders, monkeypatch):
    edit_manifest(private_folders, code_hash="0" * 16)     # built by other code than today's
    expect_refusal("stale")
    monkeypatch.setenv("MINILIB_RETRAIN", "toy")
    RECIPE.run()
    assert RECIPE.trainings == 1
    RECIPE.run()                                            # the learner's own copy is loaded, not trained again
    assert RECIPE.trainings == 1


def test_the_code_hash_follows_the_recipe_and_its_parameters():
    other_seed = Artefact("toy", "a toy model", "model", run=TOY.run, metrics=toy_metric, depends=(Toy.build,),
                          params={"seed": 1})
    other_recipe = Artefact("toy", "a toy model", "model", run=TOY.run, metrics=toy_metric, depends=(Toy.skeleton,),
                            params={"seed": 0})
    same = Artefact("toy", "another description", "model", run=lambda: None, metrics=toy_metric,
                    depends=(Toy.build,), params={"seed": 0})
    hashes = {artefacts.code_hash(a) for a in (TOY, other_seed, other_recipe)}
    assert len(hashes) == 3 and artefacts.code_hash(same) == artefacts.code_hash(TOY)


def _hash_of_recipe(source: str, folder: Path) -> str:
    """The code hash of an artefact whose recipe is the function ``train`` defined by ``source`` (in a file of its
    own, so that the hash reads exactly that text)."""
    path = folder / f"recipe_{len(list(folder.iterdir()))}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return artefacts.code_hash(Artefact("toy", "", "model", run=TOY.run, depends=(module.train,)))


RECIPE_SOURCE = """
    def train(model, lr=1e-3):
        \"\"\"Train ``model`` ×2 — the docstring.\"\"\"
        steps = 10  # a comment
        return model, steps * lr
"""


@pytest.mark.parametrize("prose_change", [
    lambda s: s.replace("the docstring", "the docstring, reworded: λ²"),
    lambda s: s.replace("# a comment", "# another comment, longer: ½"),
    lambda s: s.replace("  # a comment", ""),
    lambda s: "\n".join(line for line in s.splitlines() if "the docstring" not in line),
    lambda s: s.replace("steps = 10", "\n        steps = 10   "),
])
def test_prose_does_not_change_the_code_hash(prose_change, tmp_path):
    changed = prose_change(RECIPE_SOURCE)
    assert changed != RECIPE_SOURCE
    assert _hash_of_recipe(changed, tmp_path) == _hash_of_recipe(RECIPE_SOURCE, tmp_path)


@pytest.mark.parametrize("code_change", [
    lambda s: s.replace("steps = 10", "steps = 11"),
    lambda s: s.replace("lr=1e-3", "lr=1e-4"),
    lambda s: s.replace("steps * lr", "steps * lr * 1"),
    lambda s: s.replace("# a comment", "# a comment\n        steps += 1"),
])
def test_any_change_to_the_code_changes_the_code_hash(code_change, tmp_path):
    assert _hash_of_recipe(code_change(RECIPE_SOURCE), tmp_path) != _hash_of_recipe(RECIPE_SOURCE, tmp_path)


def test_corrupt_artefact_gets_the_message_not_a_safetensors_traceback(shipped_toy, private_folders):
    path = private_folders / "data" / "toy.safetensors"
    path.write_bytes(b"\x00garbage" * 10)
    assert "corrupt" in expect_refusal("corrupt")
    # damaged in a way that the manifest's checksum agrees with: the reader's error is turned into the message
    edit_manifest(private_folders, sha256=artefacts._sha256(path))
    assert "cannot be read as safetensors" in expect_refusal("corrupt")
    assert RECIPE.run(retrain=True) is not None and RECIPE.trainings == 1


def test_weights_that_no_longer_fit_the_model_are_reported(shipped_toy, private_folders):
    path = private_folders / "data" / "toy.safetensors"
    safetensors.torch.save_file({"1.weight": torch.zeros(3, 3)}, path)
    edit_manifest(private_folders, sha256=artefacts._sha256(path))
    assert "does not fit" in expect_refusal("does not fit")
    assert "does not fit" in artefacts.check(TOY)


def test_a_sweep_ships_its_results_and_computes_only_new_runs(private_folders):
    artefacts.rebuild([SWEEP])
    computed = []
    assert sweep_run(2, lambda: computed.append(2)) == 20 and not computed    # shipped
    assert sweep_run(3, lambda: computed.append(3) or 30) == 30                # a run of the learner's own
    assert sweep_run(3, lambda: computed.append(3) or 30) == 30 and computed == [3]
    assert artefacts.check(SWEEP) is None
    (private_folders / "data" / "toy_sweep.json").write_text("{}")
    with pytest.raises(ArtefactError, match="(?s)toy_sweep.*corrupt.*rebuild toy_sweep"):
        sweep_run(1, lambda: 10)
    stale = json.dumps({"results": {cache.key_id(1): 10}})
    (private_folders / "data" / "toy_sweep.json").write_text(stale)
    path = private_folders / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artefacts"]["toy_sweep"].update(code_hash="0" * 16,
                                              sha256=artefacts._sha256(private_folders / "data" / "toy_sweep.json"))
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="stale"):          # the chapter's run, from a stale sweep: refused
        sweep_run(1, lambda: 10)
    assert sweep_run(4, lambda: 40) == 40                      # a learner's own run still computes


def test_artefacts_made_by_one_run_are_rebuilt_together():
    trainings = []

    def run():
        for name in ("left", "right"):
            artefacts.load_model(PAIR[name], lambda: nn.Linear(2, 2), lambda model, n=name: trainings.append(n))

    PAIR.update({name: Artefact(name, f"the {name} half", "model", run=run) for name in ("left", "right")})
    entries = artefacts.rebuild(list(PAIR.values()))
    assert trainings == ["left", "right"] and [entry["file"] for entry in entries] == ["left.safetensors",
                                                                                      "right.safetensors"]
    assert artefacts.check(PAIR["left"]) is None and trainings == ["left", "right"]    # loaded, not trained
    with pytest.raises(ValueError, match="one run at a time"):
        artefacts.rebuild([PAIR["left"], TOY])


PAIR = {}


def test_artefacts_loaded_by_one_run_are_checked_by_one_run_and_each_problem_still_named(private_folders):
    runs, trainings = [], []

    def run():
        runs.append("run")
        for name in ("first", "second", "third"):
            artefacts.load_model(TRIO[name], lambda: nn.Linear(2, 2), lambda model, n=name: trainings.append(n))

    TRIO.update({name: Artefact(name, f"the {name} third", "model", run=run) for name in ("first", "second", "third")})
    artefacts.rebuild(list(TRIO.values()))
    runs.clear()
    assert artefacts.check_all([*TRIO.values(), TOY]) == {"first": None, "second": None, "third": None,
                                                          "toy": "missing: data/manifest.json has no entry for it"}
    assert runs == ["run"] and trainings == ["first", "second", "third"]          # one run loaded all three
    (private_folders / "data" / "second.safetensors").write_bytes(b"not a safetensors file")
    runs.clear()
    problems = artefacts.check_all(list(TRIO.values()))
    assert problems["second"].startswith("corrupt")                               # the file no longer matches
    assert problems["first"] == problems["third"] == "not checked: loading it needs second, which is unusable"
    assert runs == ["run"] * 3                                      # first and third together, then one by one
    assert problems == {artefact.name: artefacts.check(artefact) for artefact in TRIO.values()}
    assert trainings == ["first", "second", "third"]                                 # nothing trained

TRIO = {}
