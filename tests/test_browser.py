"""The course as a learner meets it: JupyterLab in headless Chromium, chapter 02's student edition run cell by cell.

Needs Debian's Chromium (`apt-get install chromium`) and the `playwright` Python package (in
requirements.txt), which drives /usr/bin/chromium; no browser is downloaded. Without Chromium the
tests skip and say how to install it, except in CI (CI=true), where they fail instead.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "02_self_attention.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_LIMIT_S = int(os.environ.get('BROWSER_RUN_LIMIT_S', 300))

if CHROMIUM is None:
    message = "Chromium is not installed: `sudo apt-get install chromium` (Debian/Ubuntu) to run the browser tests"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a random port and token, serving a copy of the chapter.

    A copy, so that JupyterLab's autosave never writes outputs into the course's own notebook.
    """
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "notebooks" / CHAPTER, root / CHAPTER)
    settings = root / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)   # render every cell (no virtual scrolling), so every output is in the page
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
        env={**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings")})
    url = f"http://127.0.0.1:{port}"
    _wait_until_serving(f"{url}/api/status?token={token}", server)
    yield {"url": url, "token": token, "root": root}
    server.terminate()
    server.wait(timeout=30)


def _wait_until_serving(status_url, server, limit_s=90):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {server.returncode}")
        try:
            urllib.request.urlopen(status_url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer within {limit_s} s")


def _run_chapter(lab, tmp_path, offline):
    """Open the chapter, run all cells, save; return (page state, console errors, saved notebook)."""
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        if offline:  # as on a laptop with no network: only the local Jupyter server answers
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(lab["url"])
                       else route.abort("internetdisconnected"))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.goto(f"{lab['url']}/lab/tree/{CHAPTER}?token={lab['token']}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        _accept_kernel_dialog(page)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        _menu(page, "Run", "Run All Cells")
        _wait_for_all_cells(page)
        state = _inspect(page)
        page.keyboard.press("Control+s")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(tmp_path / f"chapter02{'-offline' if offline else ''}.png"), full_page=False)
        browser.close()
    notebook = json.loads((lab["root"] / CHAPTER).read_text())
    return state, errors, notebook


def _accept_kernel_dialog(page):
    """A slow kernel start can make JupyterLab ask which kernel to use: take the proposed one."""
    try:
        page.wait_for_selector(".jp-Dialog", timeout=10_000)
    except sync_api.TimeoutError:
        return
    page.click(".jp-Dialog button:has-text('Select')")


def _menu(page, menu, item):
    page.click(f".lm-MenuBar-itemLabel:text-is('{menu}')")
    page.click(f".lm-Menu-itemLabel:text-is('{item}')")


def _wait_for_all_cells(page):
    """Until every code cell shows an execution count and the kernel is idle."""
    deadline = time.time() + RUN_LIMIT_S
    while time.time() < deadline:
        prompts = page.eval_on_selector_all(".jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent)")
        idle = page.query_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']") is not None
        if prompts and idle and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts):
            return
        time.sleep(1)
    page.screenshot(path="/tmp/chapter02-timeout.png")
    raise TimeoutError(f"chapter 02 did not finish running in the browser within {RUN_LIMIT_S} s")


def _inspect(page):
    """What a learner sees: widgets, images, and the explorer's reaction to a slider."""
    explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(has=page.locator(".widget-slider")).first
    explorer.scroll_into_view_if_needed()
    image = explorer.locator(".widget-image")
    before = image.get_attribute("src")
    slider = explorer.locator(".widget-slider .noUi-handle, .widget-slider input[type=range]").nth(1)  # the head slider
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before], timeout=30_000)
    return {
        "explorer_images": image.count(),
        "image_changed": image.get_attribute("src") != before,
        "figures": page.locator(".jp-RenderedImage img").count(),
        "diagrams": page.locator(".jp-RenderedMarkdown img[src^='data:image/png']").count(),   # cell attachments
        "error_outputs_shown": page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                                            ":text('Traceback')").count(),
    }


def _course_errors(errors):
    """Console errors caused by the course's outputs.

    Failed network loads are the offline case, not ours; and when bertviz's RequireJS could not be
    fetched from its CDN (this machine has no internet), its script then fails with "require is not
    defined": a consequence of the same missing network, which the bertviz cell explains in words.
    """
    network = ("Failed to load resource", "net::ERR_", "ERR_INTERNET_DISCONNECTED")
    offline = any(n in e for e in errors for n in network)
    after_network = ("require is not defined",) if offline else ()
    return [e for e in errors if not any(n in e for n in network + after_network)]


def _error_outputs(notebook):
    return [(i, o.get("ename"), o.get("evalue")) for i, cell in enumerate(notebook["cells"])
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def test_chapter02_runs_in_jupyterlab(lab, tmp_path):
    state, errors, notebook = _run_chapter(lab, tmp_path, offline=False)
    assert _error_outputs(notebook) == []
    assert state["error_outputs_shown"] == 0
    assert state["explorer_images"] == 1 and state["image_changed"], "the attention explorer did not redraw"
    assert state["figures"] >= 1, "no matplotlib figure rendered"
    assert state["diagrams"] >= 1, "the chapter's diagram (a cell attachment) did not render"
    assert _course_errors(errors) == [], errors
    assert (tmp_path / "chapter02.png").stat().st_size > 10_000


def test_chapter02_offline(lab, tmp_path):
    state, errors, notebook = _run_chapter(lab, tmp_path, offline=True)
    assert _error_outputs(notebook) == []
    assert state["image_changed"], "the offline attention explorer did not redraw"
    bertviz_cells = [c for c in notebook["cells"] if c["cell_type"] == "code" and "bertviz_view(" in "".join(c["source"])
                     and "import" not in "".join(c["source"])]
    assert bertviz_cells, "chapter 02 has no bertviz cell"
    said = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}))
                   for c in bertviz_cells for o in c.get("outputs", []))
    assert "offline" in said.lower() and "cdn" in said.lower(), "the bertviz cell must say why it may be blank offline"
    assert _course_errors(errors) == [], errors


def test_executed_edition_opens_in_the_browser(tmp_path):
    """`python -m minilib edition` on one small chapter: the index links to a page that shows its plot."""
    from minilib import cli

    nbformat = pytest.importorskip("nbformat")
    chapter = tmp_path / "99_small.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 99 · A small chapter\n\nProse, then a plot."),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('measured')\nplt.show()")]),
        chapter)
    assert cli.main(["edition", str(chapter), "--out", str(tmp_path / "edition")]) == 0
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((tmp_path / "edition" / "index.html").as_uri())
        page.click("a:text-is('99 · A small chapter')")
        page.wait_for_selector("h1:has-text('A small chapter')")
        plots = page.eval_on_selector_all("img[src^='data:image/png']", "imgs => imgs.map(i => i.naturalWidth)")
        browser.close()
    assert plots and all(width > 100 for width in plots), plots
    assert errors == [], errors


def test_executed_edition_formulas_read_offline(tmp_path):
    """A page of the executed edition with every network request refused (a laptop offline): each formula is drawn
    by the browser from the page's MathML, with a real size, and no raw LaTeX shows."""
    from minilib.course import edition

    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("latex2mathml", reason="latex2mathml is not installed (pip install -r requirements.txt)")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# 96 · Formulas offline\n\nThe scores $S = QK^\\top / \\sqrt{d_k}$, then\n\n"
        "$$\\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\!\\left(\\frac{QK^\\top}{\\sqrt{d_k}}\\right)V$$")])
    page_path = tmp_path / "96_formulas.html"
    page_path.write_text(edition.to_html(notebook), encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 500})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else route.abort("internetdisconnected"))
        page.goto(page_path.as_uri())
        page.wait_for_selector("math")
        boxes = page.eval_on_selector_all("math", "els => els.map(e => e.getBoundingClientRect())"
                                                  ".map(r => [r.width, r.height])")
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "formulas-offline.png"))
        browser.close()
    assert len(boxes) == 2 and all(width > 20 and height > 10 for width, height in boxes), boxes
    assert boxes[1][1] > 1.5 * boxes[0][1], "the display formula (a fraction) should be taller than the inline one"
    assert "\\sqrt" not in text and "$" not in text, text
