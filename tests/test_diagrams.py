"""The course's diagrams: every one a notebook shows exists, and the script redraws it byte for byte."""
import re
from pathlib import Path

import nbformat
import pytest

from minilib.course import diagrams

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
IMAGE = re.compile(r"!\[[^\]]*\]\((diagrams/[^)\s]+)\)")


def referenced_diagrams() -> dict[str, list[str]]:
    """{'diagrams/x.svg': [notebooks that show it]} from the markdown cells of every chapter."""
    found = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                for target in IMAGE.findall(cell.source):
                    found.setdefault(target, []).append(path.name)
    return found


def test_every_referenced_diagram_exists_and_is_drawn_by_the_script():
    referenced = referenced_diagrams()
    assert len(referenced) >= 8, f"only {len(referenced)} diagrams are shown in the chapters"
    for target, notebooks in referenced.items():
        assert (REPO / "notebooks" / target).is_file(), f"{notebooks} show {target}, which does not exist"
        assert Path(target).name in diagrams.DIAGRAMS, f"{target} is not drawn by minilib.course.diagrams"
    unused = set(diagrams.DIAGRAMS) - {Path(target).name for target in referenced}
    assert not unused, f"drawn but shown in no chapter: {sorted(unused)}"


def test_the_script_redraws_every_diagram_byte_for_byte(tmp_path):
    written = diagrams.write(tmp_path)
    assert sorted(path.name for path in written) == sorted(diagrams.DIAGRAMS)
    for path in written:
        committed = REPO / "notebooks" / "diagrams" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.name} differs from what the script draws; run `python -m minilib.course.diagrams`")


def test_diagrams_have_an_opaque_white_background():
    """Readable on a dark notebook theme: the figure's background rectangle is filled white, not transparent."""
    for name in diagrams.DIAGRAMS:
        svg = (REPO / "notebooks" / "diagrams" / name).read_text(encoding="utf-8")
        background = re.search(r'<g id="patch_1">\s*<path d="[^"]*"\s*style="([^"]*)"', svg)
        assert background and "fill: #ffffff" in background.group(1), f"{name} has no white background"


def test_unknown_diagram_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown diagram.*03_encoder_decoder.svg"):
        diagrams.write(tmp_path, names=["03_encoder.svg"])
    assert not list(tmp_path.iterdir())
