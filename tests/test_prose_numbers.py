"""Numbers in prose: a number the lessons quote from a measurement is computed by a cell, or says where it comes from.

A learner's machine measures its own times; prose that types "2.5× faster" goes stale on the next machine, the next
PyTorch, the next refactor. So every teacher notebook's markdown is read sentence by sentence, and a sentence that
quotes a **measured quantity** must carry its source.

What counts as measured (a heuristic, tuned to the course's prose; code spans, formulas and HTML comments are not
read):

- a time or a rate: ``12 ms``, ``1.3 s``, ``52 minutes``, ``20 GB/s``, ``300 tokens/s``, ``50 GFLOP/s``;
- in a sentence about speed or a result (faster, slower, speed-up, latency, throughput, measured, timed, took, gave,
  perplexity, accuracy, peak), a ratio or a share (``2.5×``, ``3 times faster``, ``97 %``) or a size (``405 MB``).

A bound is not a measurement: a number right after ≤, ≥, <, >, "at most", "at least", "less than", "under", "within",
"above", "below" or "target" is a requirement, and is not read.

A sentence with such a number passes when it names its source:

- a citation: a year (``Dettmers et al., 2022``), ``et al.``, a link, a datasheet, a paper, a report, or the README
  (whose tables ``python -m minilib readme`` generates from measured, recorded runs);
- or a marker, an HTML comment that readers of the rendered notebook do not see and its authors do:
  ``<!-- quoted: where the number comes from -->`` (a recorded run with its machine and date, a vendor's page) or
  ``<!-- not measured: what it is -->`` (arithmetic such as 32 bits / 8 bits = 4×, a setting, an example, one of a
  question's choices). Put it inside the sentence or right after its full stop; a table's, on the line right above
  the table (a table is read as one piece).

Headings are not read: a section's title names its subject, its text says where its numbers come from.

Otherwise the number belongs in a cell: a code cell that computes it and prints it, or displays the sentence with
``IPython.display.Markdown``.
"""
import re

import nbformat
import pytest

from minilib.course.assignments.exercises import read_notebook
from minilib.course.editions import teacher_notebooks

_NUMBER = r"(?<![\w.,])\d[\d,]*(?:\.\d+)?(?:\s?[–-]\s?\d[\d,]*(?:\.\d+)?)?\s?"
TIME_OR_RATE = re.compile(_NUMBER + r"(?:ns|µs|ms|s|sec|seconds?|minutes?"
                          r"|(?:[kKMGT]i?B|tokens?|tok|G?FLOPs?|GFLOP|TFLOPs?|TFLOP)/s)(?![\w/])")
RATIO = re.compile(_NUMBER + r"(?:×(?!\s*[\d(a-zA-Z_$])|×(?=\s*(?:faster|slower|speed|fewer|more|less|smaller|larger))"
                   r"|\s?%|times (?:faster|slower|smaller|larger|fewer|less|more))")
SIZE = re.compile(_NUMBER + r"[kKMGT]i?B(?![\w/])")
RESULT_WORDS = re.compile(r"faster|slower|speed|latency|throughput|measured|timed|\btook\b|\bgave\b|perplexity|"
                          r"accuracy|\bpeak\b", re.I)
BOUND = re.compile(r"(?:≤|≥|<|>|at most|at least|less than|under|within|above|below|target:?)\s*(?:about\s*)?$")
SOURCE = re.compile(r"\b(?:1[89]|20)\d\d\b|et al\.|https?://|README|datasheet|\bpaper\b|\breport|"
                    r"<!--\s*(?:quoted|not measured):\s*\S", re.I)


def prose(text: str) -> str:
    """The words a reader reads: without code blocks and spans, formulas, comments and pictures."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", " ", text, flags=re.S)
    return re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)


def sentences(markdown: str) -> list[str]:
    """Sentences and list items, and each table whole (with a comment on the line above it); headings are left out.

    A comment right after a full stop stays with its sentence.
    """
    markdown = re.sub(r"^#+ .*$", "", markdown, flags=re.M)
    markdown = re.sub(r"([.!?])([ \t]*\n?[ \t]*)(<!--.*?-->)", r"\3\1\2", markdown, flags=re.S)
    found = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [line for line in block.strip().splitlines() if not line.lstrip().startswith("<!--")]
        if lines and all(line.lstrip().startswith("|") for line in lines):
            found.append(block)                                    # a table: its source is said once, above it
            continue
        for item in re.split(r"\n(?=\s*(?:[-*]|\d+\.|\|)\s)", block):
            found += [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*(])", item) if s.strip()]
    return found


def measured_numbers(sentence: str) -> list[str]:
    """The numbers of ``sentence`` that read as quoted from a measurement (see the module's docstring)."""
    text = prose(sentence)
    found = list(TIME_OR_RATE.finditer(text))
    if RESULT_WORDS.search(text):
        found += [*RATIO.finditer(text), *SIZE.finditer(text)]
    return [m.group(0).strip() for m in found if not BOUND.search(text[:m.start()])]


def unsourced(notebook: nbformat.NotebookNode) -> list[str]:
    """'cell N: numbers: sentence' for each sentence of a markdown cell that quotes a measurement without a source."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for sentence in sentences(cell.source):
            numbers = measured_numbers(sentence)
            if numbers and not SOURCE.search(sentence):
                problems.append(f"cell {index}: {', '.join(numbers)}: {' '.join(sentence.split())[:160]}")
    return problems


# Chapters 09, 10 and 13 are being revised on other branches in this session; their prose is checked once merged.
BEING_REVISED = set()


@pytest.mark.parametrize("path", teacher_notebooks(), ids=lambda path: path.name[:2])
def test_every_measured_number_in_prose_is_computed_or_sourced(path):
    if path.name[:2] in BEING_REVISED:
        pytest.skip("its prose is being revised on another branch of this session; checked after the merge")
    problems = unsourced(read_notebook(path))
    assert not problems, ("numbers quoted from a measurement without a source: compute them in a cell, or mark them "
                          "<!-- quoted: source --> or <!-- not measured: what --> (tests/test_prose_numbers.py):\n"
                          + "\n".join(problems))


def notebook_of(*markdown: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(m) for m in markdown])


@pytest.mark.parametrize("markdown, numbers", [
    ("On this machine the window was 2.5× faster than dense attention.", ["2.5×"]),
    ("The int8 model answers in 12.3 ms per sentence.", ["12.3 ms"]),
    ("Generation reaches 310 tokens/s here, and 18.2 GB/s of reading.", ["310 tokens/s", "18.2 GB/s"]),
    ("The pruned model measured 97.5 % accuracy and a peak of 405.8 MB.", ["97.5 %", "405.8 MB"]),
    ("| | time | vs dense |\n|---|---|---|\n| FlexAttention, eager | 23 s | 17× *slower* |", ["23 s", "17×"]),
    ("- Removing heads gave a 1.6× speed-up on the course's machine.", ["1.6×"]),
    ("It is 3 times faster.", ["3 times faster"]),
])
def test_an_unsourced_measured_number_fails(markdown, numbers):
    assert measured_numbers(markdown) == numbers
    assert len(unsourced(notebook_of("Some words first.", markdown))) == 1
    assert unsourced(notebook_of(markdown))[0].startswith("cell 0: ")


@pytest.mark.parametrize("markdown", [
    "On the course's machine the window was 2.5× faster than dense attention. <!-- quoted: bench 04, 2026-12-07 -->",
    "The window was 2.5× faster <!-- quoted: bench 04 on a 2-core EPYC --> than dense attention.",
    "PyTorch's blog reports BERT 2–3× faster with dynamic quantization.",
    "DistilBERT is 60% faster (Sanh et al., 2019).",
    "An A100 reads 2 TB/s (NVIDIA's datasheet).",
    "int8 weights are 4× smaller, so reading them is 4× faster. <!-- not measured: 32 bits / 8 bits -->",
    "<!-- quoted: bench 04, 2026-11-29 -->\n| | time |\n|---|---|\n| dense | 1.32 s |\n| window | 0.52 s, 2.5× faster |",
])
def test_a_sourced_number_passes(markdown):
    assert measured_numbers(markdown) and unsourced(notebook_of(markdown)) == []


@pytest.mark.parametrize("markdown", [
    "The target is ≥ 3× at n = 8192, and every notebook runs in at most 90 s with less than 1.5 GB.",
    "A matrix of 30522 × 384 floats, with 4× the features.",          # a shape, and no result word
    "Prune 50% of the heads, then fine-tune.",                          # a setting, no result word
    "The speed-up is `ratio` here, and $2 \\times 10^3$ FLOPs per token: see `12 ms` in the code.",
    "```python\nprint('2.5× faster in 12 ms')\n```",
    "## 4. 90% zeros, and no faster",
])
def test_bounds_shapes_settings_code_and_formulas_are_not_measurements(markdown):
    assert unsourced(notebook_of(markdown)) == []


def test_a_marker_covers_its_own_sentence_only():
    markdown = "It ran 2× faster. <!-- quoted: a run --> Then 3× faster here."
    assert unsourced(notebook_of(markdown)) == ["cell 0: 3×: Then 3× faster here."]
