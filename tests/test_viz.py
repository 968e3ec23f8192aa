"""Pictures: check what is drawn (axes, image data, labels, slopes), with the Agg backend."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minilib.attention import MultiHeadAttention  # noqa: E402
from minilib.support import viz  # noqa: E402

TOKENS = ["[CLS]", "not", "bad", "[SEP]"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def attentions():
    """Two layers of real minilib attention weights, (batch=2, heads=3, seq=4, seq=4); layer 1 has 2 heads (pruned)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12)
    first = MultiHeadAttention(12, 3)(x, output_attentions=True)[1]
    second = MultiHeadAttention(12, 2)(x, output_attentions=True)[1]
    return (first.detach(), second.detach())


def test_heatmap_shows_the_matrix_with_token_labels(attentions):
    ax = viz.attention_heatmap(attentions[0][0, 1], TOKENS, title="layer 0, head 1")
    (image,) = ax.get_images()
    np.testing.assert_allclose(image.get_array(), attentions[0][0, 1].numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    assert ax.get_title() == "layer 0, head 1" and "query" in ax.get_ylabel() and "key" in ax.get_xlabel()


def test_grid_has_one_axes_per_layer_and_head(attentions):
    fig = viz.attention_grid(attentions, TOKENS)  # heads default to those every layer has: 2
    grid = [ax for ax in fig.axes if ax.get_images()]
    assert len(grid) == 2 * 2
    assert grid[0].get_title() == "head 0" and grid[0].get_ylabel() == "layer 0" and grid[2].get_ylabel() == "layer 1"
    np.testing.assert_allclose(grid[3].get_images()[0].get_array(), attentions[1][0, 1].numpy())
    fig = viz.attention_grid(attentions, TOKENS, layers=[0], heads=[0, 1, 2])
    assert len([ax for ax in fig.axes if ax.get_images()]) == 3


def test_plot_attention_selects_layer_head_batch_and_token(attentions):
    fig = viz.plot_attention(attentions, TOKENS, layer=1, head=1, batch_index=1)
    heatmap = fig.axes[0]
    np.testing.assert_allclose(heatmap.get_images()[0].get_array(), attentions[1][1, 1].numpy())
    fig = viz.plot_attention(attentions, TOKENS, layer=0, head=2, token=1)
    heatmap, bars = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], attentions[0][0, 2, 1].numpy(), rtol=1e-6)
    assert "'not'" in bars.get_title()


@pytest.mark.parametrize("kwargs, message", [
    ({"layer": 2, "head": 0}, r"layer must be an integer in 0..1, got 2"),
    ({"layer": 1, "head": 2}, r"head must be an integer in 0..1, got 2"),
    ({"layer": 0, "head": 0, "token": 4}, r"token must be an integer in 0..3, got 4"),
])
def test_plot_attention_rejects_out_of_range_choices(attentions, kwargs, message):
    with pytest.raises(ValueError, match=message):
        viz.plot_attention(attentions, TOKENS, **kwargs)


def test_inputs_are_checked(attentions):
    with pytest.raises(ValueError, match="expected 4 tokens"):
        viz.plot_attention(attentions, TOKENS[:3], 0, 0)
    with pytest.raises(TypeError, match="tuple/list over layers"):
        viz.attention_grid(attentions[0], TOKENS)
    with pytest.raises(ValueError, match=r"layer 0: expected a \(batch, heads, seq, seq\)"):
        viz.attention_grid([torch.rand(4, 4)], TOKENS)
    with pytest.raises(ValueError, match="one \\(q_seq, k_seq\\) matrix"):
        viz.attention_heatmap(torch.rand(2, 4, 4), TOKENS)


def test_explorer_redraws_when_a_slider_moves(attentions):
    explorer = viz.attention_explorer(attentions, TOKENS)
    controls, image = explorer.children
    layer, head, token = controls.children
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    assert head.max == 2
    layer.value = 1
    assert head.max == 1  # layer 1 has only two heads
    assert bytes(image.value) != first
    before_token = bytes(image.value)
    token.value = 2
    assert bytes(image.value) != before_token


def test_bertviz_view_says_it_needs_internet(attentions, capsys):
    page = viz.bertviz_view(attentions[:1], TOKENS, batch_index=1)
    assert "CDN" in capsys.readouterr().out
    assert "require" in page.data and '"not"' in page.data
    with pytest.raises(ValueError, match=r"same number of heads in every layer, got \[3, 2\]"):
        viz.bertviz_view(attentions, TOKENS)
    with pytest.raises(ValueError, match="view must be one of"):
        viz.bertviz_view(attentions, TOKENS, view="neuron")


def test_loglog_plot_draws_series_and_reference_slopes():
    xs = [128, 256, 512, 1024]
    ax = viz.loglog_plot(xs, {"measured": [1.0, 4.2, 16.0, 65.0]}, reference_slopes=(1, 2))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"measured", "O(n)", "O(n²)"}
    for label, slope in (("O(n)", 1), ("O(n²)", 2)):
        x, y = lines[label].get_data()
        assert np.polyfit(np.log(x), np.log(y), 1)[0] == pytest.approx(slope)
        assert y[-1] == pytest.approx(65.0)  # anchored at the measured curve's largest n
    assert ax.get_xlabel() == "sequence length n"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "256", "512", "1024"]


def test_loglog_plot_rejects_bad_data():
    with pytest.raises(ValueError, match="positive"):
        viz.loglog_plot([0, 1], {"a": [1, 2]})
    with pytest.raises(ValueError, match="series 'a': expected 3 positive values"):
        viz.loglog_plot([1, 2, 3], {"a": [1, 2]})


def test_the_course_style_gives_figures_an_opaque_white_background_for_dark_themes(tmp_path):
    """A transparent figure on a dark notebook theme shows black labels on black: every chapter calls
    viz.course_style(), which makes every figure white, whatever the defaults were."""
    transparent = {"figure.facecolor": "none", "axes.facecolor": "none", "savefig.facecolor": "none"}
    with matplotlib.rc_context(transparent):
        viz.course_style()
        ax = viz.loglog_plot([128, 256, 512], {"measured": [1.0, 4.0, 16.0]})
        ax.figure.savefig(tmp_path / "plot.png")
        assert plt.rcParams["axes.facecolor"] == "white"
    pixels = plt.imread(tmp_path / "plot.png")                  # (height, width, RGBA) floats in [0, 1]
    assert pixels.shape[-1] == 4 and np.all(pixels[0, 0] == 1.0)  # the corner: opaque white, not transparent


def test_importing_viz_changes_no_global_setting():
    import subprocess
    import sys

    script = ("import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
              "before = dict(plt.rcParams)\nimport minilib.support.viz\nprint(dict(plt.rcParams) == before)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def test_interact_draws_into_widget_state_so_executors_never_answer_the_kernel(monkeypatch):
    """Under nbclient (nbconvert --execute, papermill), ipywidgets.interact's Output widget makes the executor
    send the kernel a comm message for every captured output while it waits for the cell's reply: the race
    behind a stalled chapter 11. viz.interact draws into the widget's state instead: nothing is sent back."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.output_widget import OutputWidget

    sent = []
    monkeypatch.setattr(OutputWidget, "sync_state", lambda self: sent.append(self.comm_id))
    setup = ("import ipywidgets as widgets\nimport matplotlib.pyplot as plt\nfrom minilib.support import viz\n"
             "def show(n, kind):\n    plt.plot(range(n)); plt.title(kind); plt.show()\n    print('n =', n)\n    return n * 2")
    ours = "viz.interact(show, n=widgets.IntSlider(3, 1, 9), kind=['line', 'bar'])"
    theirs = "widgets.interact(show, n=widgets.IntSlider(3, 1, 9), kind=['line', 'bar']);"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (setup, ours, theirs)])
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.execute_cell(nb.cells[1], 1)
        assert sent == []
        states = [state for state in client.widget_state.values() if state.get("_model_name") == "OutputModel"]
        outputs = states[0]["outputs"]
        assert outputs[0]["text"] == "n = 3\n" and "image/png" in outputs[1]["data"]
        assert outputs[2]["data"]["text/plain"] == "6"          # the returned value, as interact shows it
        client.execute_cell(nb.cells[2], 2)
        assert sent, "ipywidgets.interact no longer makes the executor answer: the reference case changed"

