"""The course's diagrams: each one a chapter shows is attached to its cell, exactly as the script draws it."""
import base64
import io

import nbformat
import pytest
from PIL import Image

from minilib.course import diagrams
from minilib.course.editions import student_notebooks, teacher_notebooks


def shown_diagrams(paths) -> dict[str, list[str]]:
    """{'02_tiling.png': [notebooks that show it]} from the markdown cells of ``paths``."""
    found = {}
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            for name in diagrams.attached_names(cell):
                found.setdefault(name, []).append(path.name)
    return found


@pytest.fixture(scope="module")
def drawn():
    """Every diagram as the script draws it, base64 as in a notebook's attachment."""
    return {name: base64.b64encode(diagrams.render(name)).decode("ascii") for name in diagrams.DIAGRAMS}


@pytest.mark.parametrize("edition", [teacher_notebooks, student_notebooks], ids=["teacher's", "student's"])
def test_every_diagram_shown_is_attached_to_its_cell_as_the_script_draws_it(edition, drawn):
    """Attached, not linked: a notebook shows its pictures wherever it is opened, with no folder beside it."""
    shown = shown_diagrams(edition())
    assert sorted(shown) == sorted(diagrams.DIAGRAMS), "each diagram is shown in a chapter, and only those"
    for path in edition():
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            attached = cell.get("attachments", {})
            for name in diagrams.attached_names(cell):
                assert attached.get(name) == {"image/png": drawn[name]}, (
                    f"{path.name}, cell {index + 1}: {name} is not the script's drawing; run "
                    f"`python -m minilib diagrams`, then `python -m minilib assignments build --self-study`")
            assert set(attached) <= set(diagrams.attached_names(cell)), f"{path.name}, cell {index + 1}: unused attachment"


def test_diagrams_are_drawn_the_same_on_every_call_with_an_opaque_white_background():
    """Readable on a dark notebook theme: the image has no transparency and its corners are white."""
    name = "04_sparse_masks.png"
    png = diagrams.render(name)
    assert png == diagrams.render(name)
    image = Image.open(io.BytesIO(png))
    assert image.mode == "P" and "transparency" not in image.info
    rgb = image.convert("RGB")
    assert rgb.getpixel((0, 0)) == rgb.getpixel((rgb.width - 1, rgb.height - 1)) == (255, 255, 255)


def test_embed_attaches_a_diagram_to_the_cell_that_shows_it_and_refuses_unknown_names(tmp_path):
    path = tmp_path / "99_x.ipynb"
    cell = nbformat.v4.new_markdown_cell("Masks:\n\n![four masks](attachment:04_sparse_masks.png)")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    assert diagrams.embed([path]) == [path]
    attached = nbformat.read(path, as_version=4).cells[0].attachments
    assert base64.b64decode(attached["04_sparse_masks.png"]["image/png"]) == diagrams.render("04_sparse_masks.png")
    assert diagrams.embed([path]) == []                     # up to date: not rewritten
    with pytest.raises(ValueError, match="unknown diagram.*03_encoder_decoder.png"):
        diagrams.embed([path], names=["03_encoder.png"])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("![x](attachment:nope.png)")]), path)
    with pytest.raises(ValueError, match="99_x.ipynb, cell 1 shows attachment:nope.png, which no diagram draws"):
        diagrams.embed([path])
