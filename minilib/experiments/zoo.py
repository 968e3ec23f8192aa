"""The course's shipped artefacts: the trained models and sweep results that chapters load from ``data/``.

    python -m minilib zoo list                 # each artefact: file, size, recorded metrics
    python -m minilib zoo verify               # every one matches today's code and loads
    python -m minilib zoo rebuild [NAME...]    # retrain them (all, or these), metrics side by side

How they are stored, hashed and loaded: :mod:`minilib.experiments.artefacts`. Each recipe lives with the
chapter code that loads it, in the chapter's runs module (``ARTEFACTS``), and each chapter declares the names
it ships in :mod:`minilib.chapters`: :func:`shipped_artefacts` reads them from there. Shipping one more is one
name in its chapter's entry and one ``Artefact`` in its runs module, then ``rebuild NAME``.
"""
from __future__ import annotations

import importlib

from minilib.chapters import CHAPTERS, Chapter
from minilib.experiments.artefacts import Artefact, ArtefactError, check_all, data_dir, read_manifest, rebuild


def _declared(module) -> dict[str, Artefact]:
    shipped = module.ARTEFACTS.values() if isinstance(module.ARTEFACTS, dict) else module.ARTEFACTS
    return {artefact.name: artefact for artefact in shipped}


def shipped_artefacts(chapters: list[Chapter] | None = None) -> list[Artefact]:
    """Every artefact the chapters declare (all of :data:`~minilib.chapters.CHAPTERS` by default), upstream first.

    LookupError when a chapter declares a name its runs module does not define.
    """
    found = []
    for chapter in CHAPTERS if chapters is None else chapters:
        if not chapter.artefacts:
            continue
        defined = _declared(importlib.import_module(chapter.module_path("runs")))
        missing = [name for name in chapter.artefacts if name not in defined]
        if missing:
            raise LookupError(f"chapter {chapter.name} declares {missing}, which {chapter.module_path('runs')}"
                              f".ARTEFACTS does not define (it defines {sorted(defined)})")
        found += [defined[name] for name in chapter.artefacts]
    return _upstream_first(found)


def _upstream_first(artefacts: list[Artefact]) -> list[Artefact]:
    ordered: list[Artefact] = []

    def place(artefact: Artefact) -> None:
        if artefact not in ordered:
            for up in artefact.upstream:
                place(up)
            ordered.append(artefact)

    for artefact in artefacts:
        place(artefact)
    return [artefact for artefact in ordered if artefact in artefacts]


def select(names: list[str], artefacts: list[Artefact]) -> list[Artefact]:
    """The named artefacts (all when ``names`` is empty), in rebuild order; ValueError naming the unknown ones."""
    known = {artefact.name for artefact in artefacts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no artefact named {', '.join(unknown)}; the artefacts are: {', '.join(sorted(known))}")
    return [artefact for artefact in artefacts if not names or artefact.name in names]


def _groups(artefacts: list[Artefact]) -> list[list[Artefact]]:
    """Artefacts made by the same run() together, in order: one run trains them all."""
    groups: dict[int, list[Artefact]] = {}
    for artefact in artefacts:
        groups.setdefault(id(artefact.run), []).append(artefact)
    return list(groups.values())


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{name} {int(value):,}" if float(value).is_integer() else f"{name} {value:.4f}"   # a count whole
                     for name, value in metrics.items()) or "no metrics"


def rebuild_artefacts(artefacts: list[Artefact]) -> int:
    """Retrain ``artefacts`` through their chapters' code, printing new metrics beside the recorded ones.

    Returns the exit code: 0 when every one was rebuilt, 1 when one failed.
    """
    failed = []
    for group in _groups(artefacts):
        recorded = {artefact.name: read_manifest().get(artefact.name, {}).get("metrics") for artefact in group}
        print(f"rebuilding {', '.join(a.name for a in group)} ...", flush=True)
        try:
            entries = rebuild(group)
        except ArtefactError as error:
            print(f"  FAILED: {error}", flush=True)
            failed += [a.name for a in group]
            continue
        for artefact, entry in zip(group, entries):
            before = recorded[artefact.name]
            print(f"  {artefact.name}: {_metrics_text(entry['metrics'])} (recorded before: "
                  f"{_metrics_text(before) if before else 'none'}); {entry['bytes'] / 1e6:.2f} MB "
                  f"{entry['dtype'] or 'JSON'}, {entry['train_seconds']:.0f} s", flush=True)
    print(f"{len(failed)} failed: {failed}" if failed else f"wrote {data_dir() / 'manifest.json'}")
    return 1 if failed else 0


def verify_artefacts(artefacts: list[Artefact]) -> int:
    """Check that each shipped artefact matches today's code and loads; 0 when all do, 1 otherwise."""
    problems = {}
    for name, problem in check_all(artefacts).items():   # a run that loads several artefacts runs once
        print(f"{'ok' if problem is None else 'PROBLEM':8} {name}" + (f": {problem}" if problem else ""), flush=True)
        if problem is not None:
            problems[name] = problem
    if problems:
        print(f"\n{len(problems)} of {len(artefacts)} shipped artefacts are unusable: {', '.join(problems)}.\n"
              f"Rebuild them: python -m minilib zoo rebuild {' '.join(problems)}")
        return 1
    print(f"\nall {len(artefacts)} shipped artefacts match today's code and load")
    return 0


def list_artefacts(artefacts: list[Artefact]) -> int:
    """Print each artefact's size and recorded metrics, and the size of ``data/``."""
    manifest = read_manifest()
    for artefact in artefacts:
        entry = manifest.get(artefact.name)
        shipped = (f"{entry['bytes'] / 1e6:6.2f} MB  {_metrics_text(entry['metrics'])}" if entry else "not shipped")
        print(f"{artefact.name:28} {shipped}   {artefact.about}")
    total = sum(path.stat().st_size for path in data_dir().glob("*") if path.is_file())
    print(f"\n{data_dir()}: {total / 1e6:.1f} MB in all")
    return 0
