"""Shipped artefacts: the trained models and sweep results that come with the course in ``data/``.

Every learner would otherwise train the same models the same way on a first run (a fresh clone, each
Binder launch). So the course ships them in ``<repo>/data/`` (or ``$MINILIB_DATA``):

* a model as a safetensors file of **what training changed**: the tensors that differ from the untrained
  skeleton its recipe starts from (for MiniLM fine-tuned at the top, the top layer and the head, not the
  90 MB of pretrained weights), in float16 when that keeps its recorded metrics, else in float32;
* a sweep's results as JSON, ``{"results": {key: result}}``, keyed as the experiment keys its runs;
* ``data/manifest.json``: per artefact what it is, its file, the recipe that made it (a function path), its
  seed and parameters, the code hash below, the file's SHA-256 and the metrics recorded when it was built.

Loading (:func:`load_model`, :func:`cached_result`) prefers the shipped file, then the learner's own copy in
their cache (:mod:`minilib.support.cache`, keyed by the code hash), then trains. It trains only when asked
(``retrain=True``, or the environment variable ``MINILIB_RETRAIN`` set to ``1`` or to a comma-separated list of
names): a shipped artefact that is missing, stale or corrupt otherwise stops with an :class:`ArtefactError`
that names it and the command that rebuilds it. An artefact that the manifest does not list at all (a recipe added
since the last rebuild) is trained on first use, with a warning that says how to ship it.

**The code hash** (:func:`code_hash`): the first 16 hex digits of the SHA-256 of a canonical JSON
document made of the artefact's name, its ``params`` (seeds, dataset sizes, epochs...), the code of
every function or class in ``depends`` (its recipe: how the data is generated, how the model is built and
trained) under its qualified name, not its module path (moving code between modules changes nothing), and
the code hashes of its ``upstream`` artefacts (the students depend on the teacher). The code is the source
text without its docstrings and comments, dedented, without trailing spaces and blank lines: a fix to the
prose never makes a shipped model stale, a change to a single token of the code does. The shared machinery (the layers of
``minilib.transformer``, ``minilib.support.train.fit``) is deliberately not hashed: a change there that makes the
weights no longer fit is reported when loading, one that changes results shows in ``rebuild``'s
comparison with the recorded metrics and in the reproduction test.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import io
import json
import os
import textwrap
import time
import tokenize
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from minilib.support import cache

REBUILD_COMMAND = "python -m minilib zoo rebuild"
HALF_TOLERANCE = 0.002
"""How far a float16 copy's metric may move from float32's for float16 to be shipped: 0.002 for a metric in
[-1, 1] (an accuracy), 0.2% of it for a larger one (a perplexity)."""


class ArtefactError(RuntimeError):
    """A shipped artefact (``name``) is missing, stale or corrupt, and retraining it was not asked for."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Artefact:
    """One shipped artefact: what it is and how to remake it.

    run() goes through the chapter's own code path, which loads the artefact (:func:`load_model` or
    :func:`cached_result`); during :func:`rebuild` that path trains it instead. metrics(what) measures what
    was trained (a model, or the results ``{key: result}``) as ``{name: float}``. ``kind`` is ``"model"`` or
    ``"results"``.
    """

    name: str
    about: str
    kind: str
    run: Callable[[], Any]
    metrics: Callable[[Any], dict] = lambda trained: {}
    depends: tuple = ()
    params: dict = field(default_factory=dict)
    upstream: tuple = ()

    @property
    def file(self) -> str:
        return f"{self.name}.{'safetensors' if self.kind == 'model' else 'json'}"


def data_dir() -> Path:
    """The folder of shipped artefacts: ``$MINILIB_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("MINILIB_DATA") or Path(__file__).resolve().parents[2] / "data")


# ------------------------------------------------------------------------------------------------ the code hash
def _prose(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the docstrings and comments of ``source`` are: ((line, column), (line, column)) spans, columns in
    characters, lines from 1."""
    lines = source.splitlines()
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            doc = node.body[0]
            # the parser counts columns in UTF-8 bytes; the source is cut by characters
            end_column = len(lines[doc.end_lineno - 1].encode()[:doc.end_col_offset].decode())
            spans.append(((doc.lineno, doc.col_offset), (doc.end_lineno, end_column)))
    comments = tokenize.generate_tokens(io.StringIO(source).readline)
    spans += [(token.start, token.end) for token in comments if token.type == tokenize.COMMENT]
    return spans


def _code(obj) -> str:
    """The source of a function or class without its docstrings, comments, trailing spaces and blank lines."""
    lines = textwrap.dedent(inspect.getsource(obj)).splitlines()
    for (first, start), (last, end) in sorted(_prose("\n".join(lines)), reverse=True):
        lines[first - 1:last] = [lines[first - 1][:start] + lines[last - 1][end:]]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def code_hash(artefact: Artefact) -> str:
    """16 hex digits of SHA-256 over name, params, the sources of ``depends`` and the upstream hashes."""
    document = {
        "name": artefact.name,
        "params": artefact.params,
        "sources": {obj.__qualname__: _code(obj) for obj in artefact.depends},
        "upstream": {up.name: code_hash(up) for up in artefact.upstream},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def recipe_path(artefact: Artefact) -> str:
    recipe = artefact.depends[0] if artefact.depends else artefact.run
    return f"{recipe.__module__}.{recipe.__qualname__}"


# ------------------------------------------------------------------------------------------------ the manifest
def read_manifest() -> dict:
    """``data/manifest.json`` as ``{name: entry}`` (empty when there is none)."""
    path = data_dir() / "manifest.json"
    return json.loads(path.read_text())["artefacts"] if path.exists() else {}


def _write_manifest_entry(name: str, entry: dict) -> None:
    data_dir().mkdir(parents=True, exist_ok=True)
    artefacts = read_manifest() | {name: entry}
    text = json.dumps({"format": 1, "artefacts": dict(sorted(artefacts.items()))}, indent=1, ensure_ascii=False)
    cache.write_atomically(data_dir() / "manifest.json", (text + "\n").encode())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_problem(artefact: Artefact) -> str | None:
    """Why the shipped file of ``artefact`` cannot be used ("missing", "stale", "corrupt": ...), or None."""
    entry = read_manifest().get(artefact.name)
    path = data_dir() / artefact.file
    if entry is None or not path.exists():
        return f"missing: {path} is not there" if entry else "missing: data/manifest.json has no entry for it"
    if entry["code_hash"] != code_hash(artefact):
        return (f"stale: it was built by code hashed {entry['code_hash']}, and its recipe or what it depends "
                f"on has changed since (now {code_hash(artefact)})")
    if _sha256(path) != entry["sha256"]:
        return f"corrupt: {path.name}'s SHA-256 differs from the one in data/manifest.json"
    return None


def _problem_message(artefact: Artefact, problem: str) -> str:
    seconds = read_manifest().get(artefact.name, {}).get("train_seconds")
    cost = f" (about {seconds:.0f} s on the machine that built it)" if seconds else ""
    return (f"The shipped artefact {artefact.name!r} ({artefact.about}) cannot be used; {problem}.\n"
            f"Rebuild it for everyone:  {REBUILD_COMMAND} {artefact.name}\n"
            f"or let this run train its own copy{cost}: pass retrain=True, or set the environment variable "
            f"MINILIB_RETRAIN=1 (every artefact) or MINILIB_RETRAIN={artefact.name} (in a notebook: "
            f"os.environ['MINILIB_RETRAIN'] = '1' before this cell).")


def _may_train(artefact: Artefact, retrain: bool | None) -> bool:
    """Asked for (``retrain``, ``MINILIB_RETRAIN``), or never shipped: a recipe added since the last rebuild."""
    if retrain is not None:
        return retrain
    asked = os.environ.get("MINILIB_RETRAIN", "").strip()
    if asked.lower() in {"1", "true", "yes", "all"} or artefact.name in {a.strip() for a in asked.split(",")}:
        return True
    if artefact.name not in read_manifest():
        warnings.warn(f"{artefact.name!r} is not shipped yet: training it here, once (then kept in your cache); "
                      f"`{REBUILD_COMMAND} {artefact.name}` ships it", stacklevel=2)
        return True
    return False


# ------------------------------------------------------------------------------------------------ models
_rebuilding: dict[str, dict] = {}  # name -> what rebuild() captures while the chapter's code path trains it
_checking: set[str] = set()        # names that check() is loading: only the shipped file counts, nothing trains


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return cache.read_tensors(path)
    except FileNotFoundError:
        raise ArtefactError(f"missing: {path} is not there") from None
    except ValueError as error:
        raise ArtefactError(f"corrupt: {error}") from None


def _apply(skeleton: nn.Module, tensors: dict[str, torch.Tensor], label: str) -> nn.Module:
    try:
        return cache.apply_tensors(skeleton, tensors, label)
    except ValueError as error:
        raise ArtefactError(str(error)) from None


def load_model(artefact: Artefact, skeleton: Callable[[], nn.Module], build: Callable[[nn.Module], None],
               retrain: bool | None = None) -> nn.Module:
    """``skeleton()`` with the artefact's trained weights: shipped, else the learner's copy, else ``build`` it.

    build(model) trains the fresh skeleton in place: only during :func:`rebuild`, when retraining is asked for,
    or for an artefact never shipped. Returns the model in eval mode on CPU.
    """
    if artefact.name in _rebuilding:
        start = time.perf_counter()
        model, base = cache.train_fresh(skeleton, build)
        _rebuilding[artefact.name].update(model=model, base=base, skeleton=skeleton,
                                          seconds=time.perf_counter() - start)
        return model
    problem = shipped_problem(artefact)
    if problem is None:
        try:
            return _apply(skeleton(), _read_tensors(data_dir() / artefact.file), f"data/{artefact.file}")
        except ArtefactError as error:
            problem = str(error)
    if artefact.name in _checking:
        raise ArtefactError(problem, artefact.name)
    own = cache.load_model(artefact.name, code_hash(artefact), skeleton)
    if own is not None:
        return own
    if not _may_train(artefact, retrain):
        raise ArtefactError(_problem_message(artefact, problem), artefact.name)
    model, base = cache.train_fresh(skeleton, build)
    cache.save_model(artefact.name, code_hash(artefact), model, base)
    return model


# ------------------------------------------------------------------------------------------------ results
_results_read: dict[tuple, dict] = {}


def _shipped_results(artefact: Artefact) -> dict:
    path = data_dir() / artefact.file
    stamp = (str(path), path.stat().st_mtime_ns)
    if stamp not in _results_read:
        try:
            _results_read[stamp] = json.loads(path.read_text())["results"]
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise ArtefactError(f"corrupt: {path.name} is not a results file ({type(error).__name__})") from None
    return _results_read[stamp]


def cached_result(artefact: Artefact, key, compute: Callable[[], Any], retrain: bool | None = None):
    """compute()'s JSON-able result for ``key``: from the shipped sweep, else the learner's cache, else computed.

    A key the shipped sweep never ran (an exercise's own run) is computed and kept in the learner's cache. A
    run of a shipped sweep that is missing, stale or corrupt raises :class:`ArtefactError` unless retraining
    is asked.
    """
    key_id = cache.key_id(key)
    if artefact.name in _rebuilding:
        result = compute()
        _rebuilding[artefact.name].setdefault("results", {})[key_id] = result
        return result
    problem = shipped_problem(artefact)
    shipped = {}  # the shipped results, read even when stale: they tell the chapter's runs from a learner's own
    if problem is None or problem.startswith("stale"):
        try:
            shipped = _shipped_results(artefact)
        except ArtefactError as error:
            problem = str(error)
    if problem is None and key_id in shipped:
        return shipped[key_id]
    if artefact.name in _checking:
        raise ArtefactError(problem or f"missing: the shipped results have no run {key}", artefact.name)
    own = cache.load_json(artefact.name, key)
    if own is not None:
        return own
    ours = key_id in shipped or not shipped  # a run of the chapter's sweep (or, with no readable file, maybe one)
    if problem is not None and ours and not _may_train(artefact, retrain):
        raise ArtefactError(_problem_message(artefact, problem), artefact.name)
    result = compute()
    cache.save_json(artefact.name, key, result)
    return result


# ------------------------------------------------------------------------------------------------ rebuild, verify
def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}


def rebuild(group: list[Artefact]) -> list[dict]:
    """Retrain the artefacts of ``group`` (which share one ``run``) through their chapter's code path, once.

    Writes each one's file and manifest entry and returns the entries. A model is shipped in float16 when every
    metric of the float16 copy is within :data:`HALF_TOLERANCE` of float32's, else in float32; the metrics
    recorded are those of the copy shipped.
    """
    if len({id(artefact.run) for artefact in group}) != 1:
        raise ValueError(f"rebuild one run at a time; got {[a.name for a in group]} with different run()s")
    captured = {artefact.name: {} for artefact in group}
    _rebuilding.update(captured)
    start = time.perf_counter()
    try:
        group[0].run()
    finally:
        for artefact in group:
            del _rebuilding[artefact.name]
    seconds = time.perf_counter() - start
    return [_ship(artefact, captured[artefact.name], seconds) for artefact in group]


def _ship(artefact: Artefact, captured: dict, run_seconds: float) -> dict:
    data_dir().mkdir(parents=True, exist_ok=True)
    path = data_dir() / artefact.file
    if artefact.kind == "model":
        if "model" not in captured:
            raise RuntimeError(f"{artefact.name}: its run() never loaded it (it must call load_model)")
        changed = cache.changed_tensors(captured["model"], captured["base"])
        metrics = artefact.metrics(captured["model"])
        half = _half(changed)
        half_metrics = artefact.metrics(_apply(captured["skeleton"](), half, artefact.name))
        keep_half = all(abs(half_metrics[k] - metrics[k]) <= HALF_TOLERANCE * max(1.0, abs(metrics[k])) for k in metrics)
        cache.save_tensors(path, half if keep_half else changed)
        metrics, dtype = (half_metrics, "float16") if keep_half else (metrics, "float32")
    else:
        results = captured.get("results", {})
        cache.write_atomically(path, (json.dumps({"results": results}, indent=1, sort_keys=True) + "\n").encode())
        metrics, dtype = artefact.metrics(results), None
    entry = {"about": artefact.about, "file": artefact.file, "kind": artefact.kind, "recipe": recipe_path(artefact),
             "seed": artefact.params.get("seed"), "params": artefact.params, "code_hash": code_hash(artefact),
             "upstream": [up.name for up in artefact.upstream], "sha256": _sha256(path),
             "bytes": path.stat().st_size, "dtype": dtype, "metrics": metrics,
             "train_seconds": round(captured.get("seconds", run_seconds), 1), "built_with": f"torch {torch.__version__}"}
    _write_manifest_entry(artefact.name, entry)
    return entry


def check_all(artefacts: list[Artefact]) -> dict[str, str | None]:
    """:func:`check` of each artefact, {name: problem or None}, with one run for the artefacts one run loads.

    A chapter's run often loads several artefacts (chapter 04's experiment loads its four models, chapter 09's
    its six designs): checked one by one, that run would load and evaluate all of them once per artefact. Here
    the artefacts that share a run, and whose files match the manifest, are checked by one run of it with all of
    them loading only their shipped files; when that run stops at an unusable one, each is checked alone, so
    every problem is reported as :func:`check` reports it.
    """
    problems = {artefact.name: shipped_problem(artefact) for artefact in artefacts}
    by_run: dict[Callable, list[Artefact]] = {}
    for artefact in artefacts:
        if problems[artefact.name] is None:
            by_run.setdefault(artefact.run, []).append(artefact)
    for run, group in by_run.items():
        if len(group) > 1 and _loads_together(run, {artefact.name for artefact in group}):
            continue
        problems.update({artefact.name: check(artefact) for artefact in group})
    return problems


def _loads_together(run: Callable, names: set[str]) -> bool:
    """Whether ``run`` completes while every artefact in ``names`` may only load its shipped file."""
    _checking.update(names)
    try:
        run()
    except ArtefactError:
        return False
    finally:
        _checking.difference_update(names)
    return True


def check(artefact: Artefact) -> str | None:
    """None when the shipped artefact matches the current code and loads; else what is wrong."""
    problem = shipped_problem(artefact)
    if problem is not None:
        return problem
    _checking.add(artefact.name)
    try:
        artefact.run()  # loads it the way its chapter does; while checking nothing trains
    except ArtefactError as error:
        if error.name not in (None, artefact.name):  # its chapter's run stopped at another artefact first
            return f"not checked: loading it needs {error.name}, which is unusable"
        return str(error).splitlines()[0]
    finally:
        _checking.discard(artefact.name)
    return None
