"""The executed edition: notebooks run by nbclient, written as HTML pages with an index (the browser test opens one)."""
import nbformat

from minilib import cli


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
