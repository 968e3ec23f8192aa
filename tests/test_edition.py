"""The executed edition: notebooks run by nbclient, written as HTML pages with an index (the browser test opens one)."""
import importlib.util

import nbformat
import pytest

from minilib import cli
from minilib.course import edition

# requirements.txt installs it; an environment made before it was added skips the formula tests until it is installed
needs_latex2mathml = pytest.mark.skipif(importlib.util.find_spec("latex2mathml") is None,
                                        reason="latex2mathml is not installed (pip install -r requirements.txt)")


def test_a_chapter_that_fails_is_still_written_and_named_in_the_index(tmp_path):
    chapter = tmp_path / "98_broken.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 98 · Broken\n"),
        nbformat.v4.new_code_cell("print('before')"),
        nbformat.v4.new_code_cell("raise KeyError('missing')"),
        nbformat.v4.new_code_cell("print('after the error')")]), chapter)
    assert cli.main(["edition", str(chapter), "--out", str(tmp_path / "out")]) == 1   # the command fails
    page = (tmp_path / "out" / "98_broken.html").read_text()
    assert "before" in page and "KeyError" in page and "after the error" in page   # every cell ran and shows
    index = (tmp_path / "out" / "index.html").read_text()
    assert '<a href="98_broken.html">98 · Broken</a>' in index and "cell 2: KeyError: &#x27;missing&#x27;" in index


MATH_NOTEBOOK = nbformat.v4.new_notebook(cells=[
    nbformat.v4.new_markdown_cell("# 97 · Formulas\n\nInline $\\sqrt{d_k}$ and a display:\n\n"
                                  "$$\\mathrm{softmax}\\!\\left(\\frac{QK^\\top}{\\sqrt{d_k}}\\right)V$$\n\n"
                                  "$$\\text{BP} = \\begin{cases}1 & c > r\\\\ e^{1 - r/c} & c \\le r\\end{cases}$$"),
    nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/markdown": "| n | cost |\n|---|---|\n| 8 | $O(n^2)$ |", "text/plain": "table"})]),
])


@needs_latex2mathml
def test_formulas_are_written_as_mathml_when_the_page_is_built_and_nothing_loads_mathjax():
    page = edition.to_html(MATH_NOTEBOOK)
    assert page.count('<math display="block"') == 2 and page.count('<math display="inline"') == 2
    assert "<msqrt>" in page and "<mfrac>" in page and "<mtable" in page       # the square root, fraction, cases
    assert "mathjax" not in page.lower()                                       # no renderer to fetch
    assert "$" not in page.split("<body")[1].split("<script")[0]               # no raw LaTeX left in the text


@needs_latex2mathml
def test_a_formula_the_converter_cannot_read_is_kept_as_its_source():
    assert edition.mathml("\\frac{1}{") == '<code class="tex">\\frac{1}{</code>'
