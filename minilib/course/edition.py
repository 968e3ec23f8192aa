"""The executed edition: every chapter run top to bottom and written as an HTML page, with an index.

For readers deciding whether to take the course: the pages show each chapter as it ran on this
machine, outputs, tables and plots included, and need no Jupyter to read. The notebooks are run by
nbclient, the executor behind ``jupyter nbconvert --execute``, papermill and Jupyter Book, so building
the edition also checks that every chapter runs under the tools teachers and readers use.

    python -m minilib edition --out build/edition                     # every chapter (the student edition)
    python -m minilib edition --out build/edition 02                  # one chapter (or a notebook's path)

Then open ``build/edition/index.html``. The formulas are written into the pages as MathML when they are built
(:func:`mathml`, with the latex2mathml package), which every current browser draws itself: the pages read the same offline, with no
MathJax to fetch. A static page cannot run Python: widgets are drawn by a script the page fetches from a CDN (online
only) and their sliders do not redraw; run the notebook for that.
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minilib.course.notebook_runner import kernel_environment


@dataclass
class Page:
    """One chapter of the edition: its HTML file (relative to the edition's folder), title, run time, errors."""

    notebook: Path
    html: str
    title: str
    seconds: float
    errors: list[str]


def execute(path: Path, timeout: float = 600) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed in a fresh kernel of this Python, in its own folder.

    A cell that raises does not stop the run: its traceback is kept in the page, and :func:`errors` lists it.
    """
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute(env=kernel_environment(os.environ))
    return notebook


def errors(notebook) -> list[str]:
    """``"cell N: Name: message"`` for every error output of an executed notebook."""
    return [f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
            for index, cell in enumerate(notebook.cells) for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]


def title(notebook, fallback: str) -> str:
    """The first Markdown heading of the notebook (its chapter title), without the ``#``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def mathml(tex: str, display: bool = False) -> str:
    """A formula (LaTeX, as between ``$…$`` or ``$$…$$`` in a notebook's markdown) as a MathML element.

    A formula the converter cannot read is kept as its LaTeX source in a ``<code>`` element, never dropped.
    """
    try:
        from latex2mathml.converter import convert
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the executed edition writes formulas as MathML with the latex2mathml package: "
                                  "pip install -r requirements.txt (or pip install latex2mathml)") from error
    try:
        return convert(tex, display="block" if display else "inline")
    except Exception:  # the converter's errors have no common base class
        return f'<code class="tex">{html.escape(tex)}</code>'


# The lab template without MathJax (its formulas are MathML already), and math a little larger than the text, as
# MathJax draws it.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block extra_css -%}{{ super() }}<style>math { font-size: 1.1em; } math[display="block"] { margin: .6em 0; }</style>
{%- endblock extra_css -%}"""


def _exporter():
    """nbconvert's HTML exporter (JupyterLab's look) whose markdown renderer writes each formula as MathML."""
    import jinja2
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body: str) -> str:
            return mathml(body, display=True)

        def inline_math(self, body: str) -> str:
            return mathml(body)

        def latex_environment(self, name: str, body: str) -> str:
            return mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

    class EditionExporter(HTMLExporter):
        @jinja2.pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = MathMLRenderer(escape=False, attachments=cell.get("attachments", {}),
                                      embed_images=self.embed_images, anchor_link_text=self.anchor_link_text,
                                      exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return EditionExporter(template_name="lab", template_file="edition.html.j2",
                           extra_loaders=[jinja2.DictLoader({"edition.html.j2": _TEMPLATE})])


def to_html(notebook) -> str:
    """A self-contained HTML page of an executed notebook: images embedded, formulas as MathML; nothing is fetched to
    read it (only the widgets' script, which needs a network to draw them)."""
    body, _ = _exporter().from_notebook_node(notebook)
    return body


def build(paths, out: Path, timeout: float = 600, log=print) -> list[Page]:
    """Execute each notebook, write ``<name>.html`` for each and ``index.html`` into ``out``; return the pages."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for path in map(Path, paths):
        if not path.is_file() or path.suffix != ".ipynb":
            raise ValueError(f"expected the path of an existing .ipynb file, got {str(path)!r}")
        start = time.perf_counter()
        notebook = execute(path, timeout)
        page = Page(path, path.with_suffix(".html").name, title(notebook, path.stem),
                    time.perf_counter() - start, errors(notebook))
        (out / page.html).write_text(to_html(notebook), encoding="utf-8")
        log(f"{path.name}: {page.seconds:.0f} s" + (f", {len(page.errors)} error(s): {page.errors[0]}" if page.errors else ""))
        pages.append(page)
    (out / "index.html").write_text(index_html(pages), encoding="utf-8")
    return pages


def index_html(pages: list[Page]) -> str:
    """The edition's front page: one row per chapter, linked, with its run time and whether it ran cleanly."""
    from minilib.support.bench import machine_label

    rows = "\n".join(
        f'<tr><td><a href="{html.escape(p.html)}">{html.escape(p.title)}</a></td><td>{p.seconds:.0f} s</td>'
        f'<td>{"ran cleanly" if not p.errors else html.escape("; ".join(p.errors))}</td></tr>' for p in pages)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Faster, Smaller Transformers: the executed edition</title>
<style>body {{font-family: sans-serif; max-width: 60rem; margin: 2rem auto; background: white; color: #111}}
td, th {{padding: .3rem .8rem; text-align: left}} tr:nth-child(even) {{background: #f3f3f3}}</style></head>
<body><h1>Faster, Smaller Transformers: the executed edition</h1>
<p>Every chapter of the course, run top to bottom on {html.escape(machine_label())},
{time.strftime("%Y-%m-%d")}. The timings and accuracies are this machine's; yours will differ.
To run the chapters yourself, see the course's README.</p>
<table><tr><th>chapter</th><th>run time</th><th>result</th></tr>
{rows}
</table></body></html>
"""
