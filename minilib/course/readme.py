"""The README's facts, generated: the table of chapters, the headline measurements, the notebook budgets and the
shipped artefacts, each written between markers and never typed by hand.

    <!-- generated: headlines (python -m minilib readme) -->
    ...
    <!-- end of generated: headlines -->

Sources: the chapters from :mod:`minilib.chapters`; the artefacts from ``data/manifest.json``; the
measurements from ``data/measurements/``, one small JSON file per kind of machine and per measurement
(``headlines/<machine>.json``, ``notebooks/<machine>.json``), written by ``python -m minilib bench --markdown``
and ``python -m minilib notebooks --markdown``. A run on one kind of machine replaces that kind's rows of the
chapters it ran, and leaves the other kinds' alone: the headline table shows the latest run of each kind side by
side, each naming its machine and dates.
"""
from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from minilib.chapters import CHAPTERS, markdown_table
from minilib.course.notebook_budget import COURSE_SECONDS, NOTEBOOK_BYTES, NOTEBOOK_SECONDS, NotebookRun
from minilib.support.cache import write_atomically

if TYPE_CHECKING:
    from minilib.experiments.headlines import ChapterResult

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MEASUREMENTS = ROOT / "data" / "measurements"
"""Where the README is and where the measurements are kept (read when a function runs: tests point them elsewhere)."""
FAILED = "(the chapter's headlines failed)"
"""The claim a chapter's row shows when its headline module raised."""
SECTIONS = ("chapters", "headlines", "notebook-budgets", "artefacts")
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) \(python -m minilib readme\) -->\n)(?P<body>.*?)"
                    r"(<!-- end of generated: (?P=name) -->)", re.DOTALL)


# ------------------------------------------------------------------------------------------------ records
def _slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write(path: Path, record: dict) -> None:
    write_atomically(path, (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode())


def _today() -> str:
    return datetime.date.today().isoformat()


def record_headlines(results: list[ChapterResult], kind: str, machine: str) -> Path:
    """Keep this run's rows as the latest of ``kind`` for the chapters it ran; returns the file written."""
    path = MEASUREMENTS / "headlines" / f"{_slug(kind)}.json"
    record = _read(path) or {"kind": kind, "chapters": {}}
    for result in results:
        record["chapters"][result.chapter.name] = {"date": _today(), "machine": machine, **result.to_json()}
    record["chapters"] = dict(sorted(record["chapters"].items()))
    _write(path, record)
    return path


def record_budgets(runs: list[NotebookRun], kind: str, machine: str, cold: bool) -> Path:
    """Keep each notebook's run as the latest of ``kind``; returns the file written."""
    path = MEASUREMENTS / "notebooks" / f"{_slug(kind)}.json"
    record = _read(path) or {"kind": kind, "notebooks": {}}
    for run in runs:
        record["notebooks"][run.path.name] = {
            "date": _today(), "machine": machine, "cold": cold, "seconds": round(run.seconds, 1),
            "cpu_seconds": round(run.cpu_seconds, 1), "peak_bytes": run.peak_bytes, "error": run.error}
    record["notebooks"] = dict(sorted(record["notebooks"].items()))
    _write(path, record)
    return path


def _records(measurement: str) -> list[dict]:
    return [_read(path) for path in sorted((MEASUREMENTS / measurement).glob("*.json"))]


# ------------------------------------------------------------------------------------------------ tables
def _number(value: float, unit: str) -> str:
    text = f"{value:.3g}"
    return f"{text}{unit}" if unit in ("×", "%") else f"{text} {unit}".rstrip()


def headlines_section() -> str:
    """The headline table: one row per claim, one column per kind of machine (its latest run of each chapter).

    A claim that a chapter's most recent run no longer makes (replaced or withdrawn since) goes to a second table, as
    it was measured, so that an old miss is never read as today's."""
    records = _records("headlines")
    if not records:
        return "No measurements recorded yet: `python -m minilib bench --markdown` records this machine's."
    claims: dict[tuple, dict] = {}   # (chapter, row name) -> {"target": ..., kind: cell}
    current = _current_targets(records)
    for record in records:
        for chapter, run in record["chapters"].items():
            if run["error"]:
                claims.setdefault((chapter, FAILED), {"target": ""})[record["kind"]] = f"error: {run['error']}"
            for row in run["rows"]:
                target = _target(row)
                claim = claims.setdefault((chapter, row["name"]), {"target": current[chapter, row["name"]]})
                claim[record["kind"]] = _cell(row, then=None if target == claim["target"] else target)
    kinds = [record["kind"] for record in records]
    made = _claims_made_now(records) | {(chapter, FAILED) for chapter, _ in claims}
    lines = _claims_table({key: cells for key, cells in claims.items() if key in made}, kinds)
    retired = {key: cells for key, cells in claims.items() if key not in made}
    if retired:
        lines += ["", "Claims the chapters no longer make in these words (replaced or withdrawn since), as they were "
                  "measured then:", ""] + _claims_table(retired, kinds)
    lines.append("")
    for record in records:
        lines.append(f"- **{record['kind']}**: " + "; ".join(_provenance(record["chapters"])) + ".")
    return "\n".join(lines)


def _claims_table(claims: dict[tuple, dict], kinds: list[str]) -> list[str]:
    order = {chapter.name: index for index, chapter in enumerate(CHAPTERS)}
    lines = ["| chapter | claim | target | " + " | ".join(kinds) + " |", "|" + "---|" * (3 + len(kinds))]
    for (chapter, name), cells in sorted(claims.items(), key=lambda item: order.get(item[0][0], len(order))):
        lines.append(f"| {chapter[:2]} | {name} | {cells['target']} | "
                     + " | ".join(cells.get(kind, "") for kind in kinds) + " |")
    return lines


def _claims_made_now(records: list[dict]) -> set[tuple]:
    """(chapter, row name) of each chapter's most recent run (of any kind; every run of its newest day)."""
    runs = [(run["date"], chapter, run) for record in records for chapter, run in record["chapters"].items()
            if not run["error"]]
    newest: dict[str, str] = {}
    for date, chapter, _ in runs:
        newest[chapter] = max(newest.get(chapter, date), date)
    return {(chapter, row["name"]) for date, chapter, run in runs if date == newest[chapter] for row in run["rows"]}


def _target(row: dict) -> str:
    return f"{row['goal']} {_number(row['target'], row['unit'])}"


def _current_targets(records: list[dict]) -> dict[tuple, str]:
    """(chapter, row name) -> the target of its most recent measurement: a target raised since holds for all."""
    dated = sorted((run["date"], chapter, row["name"], _target(row)) for record in records
                   for chapter, run in record["chapters"].items() for row in run["rows"])
    return {(chapter, name): target for _, chapter, name, target in dated}     # later dates overwrite


def _provenance(entries: dict[str, dict]) -> list[str]:
    """``"<machine>, 2026-11-29: chapters 02, 04 (note)"`` for each group of entries measured alike."""
    groups: dict[tuple, list[str]] = {}
    for name, entry in entries.items():
        groups.setdefault((entry["machine"], entry["date"], entry.get("note")), []).append(name[:2])
    return [f"{machine}, {date}: {'chapters' if len(names) > 1 else 'chapter'} {', '.join(names)}"
            + (f" ({note})" if note else "") for (machine, date, note), names in groups.items()]


def _cell(row: dict, then: str | None = None) -> str:
    """A row's measurement as a table cell; ``then``: the target it was held to, where that is not the column's."""
    if row["status"] == "N/A":
        return "not measurable here"
    measured = _number(row["measured"], row["unit"]) if not math.isnan(row["measured"]) else "—"
    verdict = "" if row["status"] == "PASS" else "**missed**"
    held_to = "" if then is None else f"target then {then}"
    notes = "; ".join(note for note in (verdict, held_to) if note)
    return f"{measured} ({notes})" if notes else measured


def budgets_section() -> str:
    """The notebook budget table of the most recent run, with its machine and date."""
    records = _records("notebooks")
    if not records:
        return "No notebook budgets recorded yet: `python -m minilib notebooks --cold --markdown` records them."
    record = max(records, key=lambda r: max(run["date"] for run in r["notebooks"].values()))
    runs = record["notebooks"]
    header = ("notebook", f"time (≤ {NOTEBOOK_SECONDS:.0f} s)", "CPU time",
              f"peak memory (≤ {NOTEBOOK_BYTES / 1e9:.1f} GB)", "result")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        within = run["error"] is None and run["seconds"] <= NOTEBOOK_SECONDS and run["peak_bytes"] <= NOTEBOOK_BYTES
        result = "PASS" if within else ("ERROR" if run["error"] else "MISS")
        lines.append(f"| {name} | {run['seconds']:.1f} s | {run['cpu_seconds']:.1f} s | "
                     f"{run['peak_bytes'] / 1e6:.0f} MB | {result} |")
    total = sum(run["seconds"] for run in runs.values())
    cpu = sum(run["cpu_seconds"] for run in runs.values())
    lines.append(f"| whole course | {total:.1f} s | {cpu:.1f} s |  | "
                 f"{'PASS' if total <= COURSE_SECONDS else 'MISS'} (≤ {COURSE_SECONDS / 60:.0f} min) |")
    cold = {run["cold"] for run in runs.values()}
    start = ("starting from an empty cache (`--cold`)" if cold == {True} else
             "on a warm cache" if cold == {False} else "some notebooks from an empty cache, others on a warm one")
    lines += ["", f"Measured on {'; '.join(_provenance(runs))}; {start}."]
    return "\n".join(lines)


def _recorded(metrics: dict) -> str:
    parts = []
    for name, value in metrics.items():
        words = name.replace("_", " ")
        percent = any(word in words for word in ("accuracy", "exact match"))
        if percent:
            parts.append(f"{words} {100 * value:.1f}%")
        elif float(value).is_integer():   # a count: every digit (8,192 tokens, not 8.19e+03)
            parts.append(f"{words} {int(value):,}")
        else:
            parts.append(f"{words} {value:.3g}")
    return "; ".join(parts)


def artefacts_section(manifest: dict | None = None) -> str:
    """The shipped artefacts, in the chapters' order, as the repository's ``data/manifest.json`` describes them."""
    if manifest is None:
        manifest = json.loads((ROOT / "data" / "manifest.json").read_text(encoding="utf-8"))["artefacts"]
    declared = [name for chapter in CHAPTERS for name in chapter.artefacts]
    names = [name for name in declared if name in manifest] + sorted(set(manifest) - set(declared))
    lines = ["| artefact | what it is | stored | recorded |", "|---|---|---|---|"]
    for name in names:
        entry = manifest[name]
        stored = f"{entry['bytes'] / 1e6:.2f} MB, {entry['dtype'] or 'JSON'}"
        lines.append(f"| `{name}` | {entry['about']} | {stored} | {_recorded(entry['metrics'])} |")
    total = sum(entry["bytes"] for entry in manifest.values())
    lines += ["", f"{len(names)} artefacts, {total / 1e6:.1f} MB in all (`data/manifest.json`)."]
    return "\n".join(lines)


def sections() -> dict[str, str]:
    """Each generated section's text, by name."""
    return {"chapters": markdown_table(folder="notebooks/", figures=True), "headlines": headlines_section(),
            "notebook-budgets": budgets_section(), "artefacts": artefacts_section()}


# ------------------------------------------------------------------------------------------------ the README
def regenerate(text: str, generated: dict[str, str]) -> str:
    """``text`` with the body of each marked section replaced by ``generated[name]``."""
    found = {match["name"] for match in _BLOCK.finditer(text)}
    missing = [name for name in generated if name not in found]
    if missing:
        raise ValueError(f"the README has no markers for {missing}: put `<!-- generated: NAME (python -m minilib "
                         f"readme) -->` and `<!-- end of generated: NAME -->` lines where each table goes")
    return _BLOCK.sub(lambda m: m.group(1) + generated[m["name"]].rstrip("\n") + "\n" + m.group(4)
                      if m["name"] in generated else m.group(0), text)


def stale_sections() -> list[str]:
    """The generated sections of the README that differ from what their sources say now."""
    text = README.read_text(encoding="utf-8")
    generated = sections()
    current = {match["name"]: match["body"] for match in _BLOCK.finditer(text)}
    return [name for name, body in generated.items() if current.get(name) != body.rstrip("\n") + "\n"]


def update_readme() -> bool:
    """Rewrite the README's generated sections from their sources; True when something changed."""
    if not README.exists():
        raise FileNotFoundError(f"no README at {README}: the README's tables are written in a clone of the course")
    text = README.read_text(encoding="utf-8")
    new = regenerate(text, sections())
    if new != text:
        write_atomically(README, new.encode())
    return new != text
