"""The README's tables are generated: from the chapters, data/manifest.json and the recorded measurements, between
markers, and a test fails when one is out of date. Measurements of one kind of machine never erase another's."""
import json
import math
from pathlib import Path

import pytest

from minilib import cli
from minilib.chapters import find
from minilib.course import readme
from minilib.course.notebook_budget import NotebookRun
from minilib.experiments.headlines import ChapterResult
from minilib.support.bench import Headline

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_table_of_the_readme_is_up_to_date():
    assert readme.stale_sections() == [], "run `python -m minilib readme` and commit the README"


def test_the_artefact_table_is_the_manifest():
    manifest = json.loads((ROOT / "data" / "manifest.json").read_text())["artefacts"]
    table = readme.artefacts_section(manifest)
    assert all(f"| `{name}` | {entry['about']} |" in table for name, entry in manifest.items())
    assert f"{sum(e['bytes'] for e in manifest.values()) / 1e6:.1f} MB in all" in table
    manifest["ch09_base"]["metrics"]["test_accuracy"] = 0.5           # a rebuild that changed a recorded metric
    assert "test accuracy 50.0%" in readme.artefacts_section(manifest) != table
    readme_text = (ROOT / "README.md").read_text()
    assert table in readme_text and readme.artefacts_section(manifest) not in readme_text


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A README with every marker, and an empty folder of measurements."""
    text = "# Course\n\n" + "".join(f"## {name}\n<!-- generated: {name} (python -m minilib readme) -->\nstale text\n"
                                     f"<!-- end of generated: {name} -->\ntext kept\n" for name in readme.SECTIONS)
    (tmp_path / "README.md").write_text(text)
    monkeypatch.setattr(readme, "README", tmp_path / "README.md")
    monkeypatch.setattr(readme, "MEASUREMENTS", tmp_path / "measurements")
    return tmp_path


def _result(chapter, *rows):
    return ChapterResult(find(chapter), list(rows))


def test_a_run_on_one_kind_of_machine_keeps_the_other_kinds_side_by_side(scratch):
    readme.record_headlines([_result("02", Headline.at_most("attention time", 1.3, 1.5, "×"))],
                            "AMD EPYC 9B14", "AMD EPYC 9B14 · 2 torch threads")
    readme.record_headlines([_result("02", Headline.at_most("attention time", 1.7, 1.5, "×")),
                             _result("07", Headline.unavailable("torchao row", 1.0, "×", "≥", "torchao missing"))],
                            "Intel Xeon 8481C", "Intel Xeon 8481C · 2 torch threads")
    readme.record_headlines([_result("02", Headline.at_most("attention time", 1.2, 1.5, "×"))],
                            "AMD EPYC 9B14", "AMD EPYC 9B14 · 2 torch threads")   # AMD again: replaces AMD's row
    table = readme.headlines_section()
    assert "| chapter | claim | target | AMD EPYC 9B14 | Intel Xeon 8481C |" in table
    assert "| 02 | attention time | ≤ 1.5× | 1.2× | 1.7× (**missed**) |" in table
    assert "| 07 | torchao row | ≥ 1× |  | not measurable here |" in table
    assert "1.3×" not in table
    assert "AMD EPYC 9B14 · 2 torch threads, " in table and "chapter 02" in table      # machine and date
    assert len(list((scratch / "measurements" / "headlines").glob("*.json"))) == 2


def test_a_chapter_run_again_keeps_the_kinds_other_chapters(scratch):
    readme.record_headlines([_result("04", Headline.at_least("window", 6.0, 3.0, "×")),
                             _result("05", Headline.at_least("linear", 20.0, 10.0, "×"))], "CPU", "CPU · 2 threads")
    readme.record_headlines([_result("05", Headline.at_least("linear", 25.0, 10.0, "×"))], "CPU", "CPU · 2 threads")
    table = readme.headlines_section()
    assert "| 04 | window | ≥ 3× | 6× |" in table and "| 05 | linear | ≥ 10× | 25× |" in table


def test_a_chapter_whose_headlines_failed_says_so(scratch):
    readme.record_headlines([ChapterResult(find("09"), [], "RuntimeError: boom (x.py:3)")], "CPU", "CPU")
    assert "error: RuntimeError: boom" in readme.headlines_section()


def test_budgets_name_their_machine_date_and_cache(scratch):
    runs = [NotebookRun(Path("00_welcome.ipynb"), 6.5, int(500e6), 7.0),
            NotebookRun(Path("03_transformer.ipynb"), 95.0, int(900e6), 120.0)]
    readme.record_budgets(runs, "CPU", "CPU · 2 torch threads", cold=True)
    table = readme.budgets_section()
    assert "| 00_welcome.ipynb | 6.5 s | 7.0 s | 500 MB | PASS |" in table
    assert "| 03_transformer.ipynb | 95.0 s | 120.0 s | 900 MB | MISS |" in table
    assert "| whole course | 101.5 s | 127.0 s |" in table
    assert "CPU · 2 torch threads, 20" in table and "from an empty cache (`--cold`)" in table


def test_regenerating_replaces_only_what_is_between_the_markers(scratch):
    assert readme.update_readme()
    text = readme.README.read_text()
    assert "stale text" not in text and text.count("text kept") == len(readme.SECTIONS)
    assert "No measurements recorded yet" in text and "| `sentiment_teacher` |" in text
    assert not readme.update_readme() and readme.stale_sections() == []


def test_a_readme_without_markers_is_refused_with_what_to_add(scratch):
    readme.README.write_text("# Course\n")
    with pytest.raises(ValueError, match="no markers for.*generated: NAME"):
        readme.update_readme()


def test_bench_markdown_records_this_machine_and_rewrites_the_readme(scratch, monkeypatch, capsys):
    from minilib.experiments import headlines

    rows = [Headline.at_least("toy speed-up", 2.5, 2.0, "×"), Headline.at_most("toy miss", 3.0, 2.0, "×")]
    monkeypatch.setattr(headlines, "run", lambda chapters: [ChapterResult(c, rows) for c in chapters])
    monkeypatch.setattr("minilib.support.bench.machine_kind", lambda: "Toy CPU")
    assert cli.main(["bench", "02", "--markdown"]) == 1            # a missed target: exit code 1
    out = capsys.readouterr().out
    assert "README.md updated" in out and "| 02 | toy miss | ≤ 2× | 3× (**missed**) |" in out
    record = json.loads((scratch / "measurements" / "headlines" / "toy-cpu.json").read_text())
    assert list(record["chapters"]) == ["02_self_attention"] and record["kind"] == "Toy CPU"
    assert "| 02 | toy speed-up | ≥ 2× | 2.5× |" in readme.README.read_text()


def test_a_nan_never_passes_and_an_unavailable_row_neither_passes_nor_misses():
    assert not Headline.at_least("x", math.nan, 1.0, "×").passed
    row = Headline.unavailable("x", 1.0, "×", "≥", "onnxruntime is not installed")
    assert not row.passed and row.status == "N/A" and math.isnan(row.measured)
    assert ChapterResult(find("07"), [row, Headline.at_least("y", 2.0, 1.0, "×")]).passed
    with pytest.raises(TypeError):
        Headline("x", math.nan, 1.0, "×", True)   # by position: gone
    with pytest.raises(ValueError, match="goal"):
        Headline(name="x", measured=1.0, target=1.0, unit="×", goal=">")


def test_a_target_changed_since_an_older_run_is_shown_beside_that_run(scratch):
    older = readme.record_headlines([_result("02", Headline.at_most("attention time", 1.35, 1.5, "×"))],
                                    "AMD EPYC 9B14", "AMD EPYC 9B14 · 2 torch threads")   # the first column
    record = json.loads(older.read_text())
    record["chapters"]["02_self_attention"]["date"] = "2026-11-29"          # measured before the target was raised
    older.write_text(json.dumps(record))
    readme.record_headlines([_result("02", Headline.at_most("attention time", 1.42, 1.3, "×"))],
                            "Intel Xeon 8481C", "Intel Xeon 8481C · 2 torch threads")
    table = readme.headlines_section()
    assert "| 02 | attention time | ≤ 1.3× | 1.35× (target then ≤ 1.5×) | 1.42× (**missed**) |" in table


def test_a_claim_the_chapter_no_longer_makes_is_shown_apart_as_measured_then(scratch):
    older = readme.record_headlines([_result("13", Headline.at_least("draft (k ≤ 2, stops below 57%)", 1.04, 1.3, "×"),
                                             Headline.at_least("KV cache", 6.1, 5.0, "×"))],
                                    "AMD EPYC (AVX2)", "AMD EPYC · 2 torch threads")
    record = json.loads(older.read_text())
    record["chapters"]["13_fast_generation"]["date"] = "2026-12-07"          # before the claim was reworded
    older.write_text(json.dumps(record))
    readme.record_headlines([_result("13", Headline.at_least("table draft", 1.7, 1.3, "×"),
                                     Headline.at_least("KV cache", 5.6, 5.0, "×"))],
                            "AMD EPYC (AVX-512 VNNI)", "AMD EPYC · 2 torch threads")
    current, retired = readme.headlines_section().split("no longer make")
    assert "| 13 | KV cache | ≥ 5× | 5.6× | 6.1× |" in current and "| 13 | table draft | ≥ 1.3× | 1.7× |  |" in current
    assert "stops below 57%" not in current
    assert "| 13 | draft (k ≤ 2, stops below 57%) | ≥ 1.3× |  | 1.04× (**missed**) |" in retired
    assert "KV cache" not in retired.split("\n\n")[1]                 # the retired claims' table holds nothing else


def test_a_chapter_whose_newest_run_failed_keeps_its_claims_current(scratch):
    readme.record_headlines([_result("09", Headline.at_least("half the layers", 2.0, 1.6, "×"))], "A", "A")
    readme.record_headlines([ChapterResult(find("09"), [], "RuntimeError: boom (x.py:3)")], "B", "B")
    table = readme.headlines_section()
    assert "no longer make" not in table and "| 09 | half the layers | ≥ 1.6× | 2× |  |" in table
    assert "| 09 | (the chapter's headlines failed) |  |  | error: RuntimeError: boom (x.py:3) |" in table
