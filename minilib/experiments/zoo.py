"""The course's shipped artefacts: the trained models and sweep results that chapters load from ``data/``.

    python -m minilib.experiments.zoo list                 # each artefact: file, size, recorded metrics
    python -m minilib.experiments.zoo verify               # every one matches today's code and loads
    python -m minilib.experiments.zoo rebuild [NAME...]    # retrain them (all, or these), metrics side by side

How they are stored, hashed and loaded: :mod:`minilib.experiments.artefacts`. Each recipe lives with the
chapter code that loads it (the sentiment teacher in :mod:`minilib.experiments.teacher`, chapter 06's students
in :mod:`minilib.experiments.ch06_distillation`, ...); shipping one more is one entry in :data:`ARTEFACTS`, then
``rebuild NAME``. The sentiment teacher's names are re-exported here, where the chapters import them from.

Exit code 0 when everything went well, 1 when an artefact is unusable (verify) or failed to rebuild,
2 for a bad command line.
"""
from __future__ import annotations

import argparse
import sys

from minilib.experiments import (
    ch04_sparse_attention,
    ch06_distillation,
    ch09_architecture,
    ch11_evaluation,
    ch12_capstone,
    ch13_fast_generation,
    ch14_modern_decoders,
)
from minilib.experiments.artefacts import Artefact, ArtefactError, check, data_dir, read_manifest, rebuild
from minilib.experiments.teacher import TEACHER, TopLayers, fine_tune_top, lower_layer_features, sentiment_teacher

__all__ = ["ARTEFACTS", "TopLayers", "fine_tune_top", "lower_layer_features", "main", "sentiment_teacher"]

ARTEFACTS: list[Artefact] = [
    TEACHER,                                  # chapters 06, 07, 08, 11, 12
    ch06_distillation.STUDENTS,                    # chapter 06's sweeps (upstream: the teacher)
    *ch09_architecture.ARTEFACTS.values(),            # chapter 09's six designs
    *ch04_sparse_attention.ARTEFACTS.values(),            # chapters 04 and 05: the long-range task's four models
    *ch11_evaluation.ARTEFACTS.values(),            # chapter 11's character LM and date translator
    *ch12_capstone.ARTEFACTS,                      # chapter 12's distilled and pruned students
    *ch13_fast_generation.ARTEFACTS.values(),      # chapter 13's decoder, its draft and its grouped-query version
    ch14_modern_decoders.TOKENIZER,                # chapter 14's BPE tokenizer
    ch14_modern_decoders.DECODER,                  # chapter 14's Llama-style decoder
]
"""Every shipped artefact, in the order ``rebuild`` makes them (upstream ones first)."""


def _selected(names: list[str]) -> list[Artefact]:
    known = {artefact.name: artefact for artefact in ARTEFACTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown artefact(s) {unknown}; the artefacts are: {', '.join(known)}")
    return [artefact for artefact in ARTEFACTS if not names or artefact.name in names]


def _groups(artefacts: list[Artefact]) -> list[list[Artefact]]:
    """Artefacts made by the same run() together, in order: one run trains them all."""
    groups: dict[int, list[Artefact]] = {}
    for artefact in artefacts:
        groups.setdefault(id(artefact.run), []).append(artefact)
    return list(groups.values())


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()) or "no metrics"


def rebuild_main(names: list[str]) -> int:
    failed = []
    for group in _groups(_selected(names)):
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


def verify_main() -> int:
    problems = {}
    for artefact in ARTEFACTS:
        problem = check(artefact)
        print(f"{'ok' if problem is None else 'PROBLEM':8} {artefact.name}" + (f": {problem}" if problem else ""),
              flush=True)
        if problem is not None:
            problems[artefact.name] = problem
    if problems:
        print(f"\n{len(problems)} of {len(ARTEFACTS)} shipped artefacts are unusable: {', '.join(problems)}.\n"
              f"Rebuild them: python -m minilib.experiments.zoo rebuild {' '.join(problems)}")
        return 1
    print(f"\nall {len(ARTEFACTS)} shipped artefacts match today's code and load")
    return 0


def list_main() -> int:
    manifest = read_manifest()
    for artefact in ARTEFACTS:
        entry = manifest.get(artefact.name)
        shipped = (f"{entry['bytes'] / 1e6:6.2f} MB  {_metrics_text(entry['metrics'])}" if entry else "not shipped")
        print(f"{artefact.name:28} {shipped}   {artefact.about}")
    total = sum(path.stat().st_size for path in data_dir().glob("*") if path.is_file())
    print(f"\n{data_dir()}: {total / 1e6:.1f} MB in all")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilib.experiments.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("list", "verify", "rebuild"))
    parser.add_argument("names", nargs="*", help="artefacts to rebuild (default: all)")
    args = parser.parse_args(argv)
    if args.command == "rebuild":
        try:
            return rebuild_main(args.names)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
    if args.names:
        parser.error(f"{args.command} takes no names")
    return verify_main() if args.command == "verify" else list_main()


if __name__ == "__main__":
    sys.exit(main())
