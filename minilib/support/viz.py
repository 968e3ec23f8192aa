"""Pictures for the course: attention heatmaps, an offline attention explorer, bertviz, log-log plots.

``attentions`` everywhere is what a model returns with ``output_attentions=True``: a tuple (or
list) over layers of ``(batch, heads, seq, seq)`` tensors (minilib and Hugging Face alike), or of
``(heads, seq, seq)``. Row i of a head's matrix says how query token i spreads its attention over
the key tokens (each row sums to 1).

Every function returns a matplotlib ``Figure`` or ``Axes`` (or a widget) so that notebooks show it
and tests can inspect it; :func:`attention_explorer` wraps :func:`plot_attention` in sliders.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["course_style", "attention_heatmap", "attention_grid", "plot_attention", "attention_explorer", "interact",
           "bertviz_view", "loglog_plot", "BERTVIZ_NOTE"]

COURSE_STYLE = {"figure.facecolor": "white", "savefig.facecolor": "white", "axes.facecolor": "white"}


def course_style() -> None:
    """The course's plot style, for every figure that follows: white figures on every theme.

    JupyterLab's, VS Code's and Colab's dark themes show a transparent figure on a black page, and black labels on
    black cannot be read. Each chapter calls this once, in its first code cell.
    """
    plt.rcParams.update(COURSE_STYLE)


BERTVIZ_NOTE = ("Note: bertviz draws with JavaScript it loads from a CDN (require.js, d3), so it renders only "
                "when this browser is online. Offline the view stays blank: use attention_explorer instead.")


# ------------------------------------------------------------------------------------------ inputs
def _as_layers(attentions, batch_index: int = 0) -> list[torch.Tensor]:
    """Normalise ``attentions`` to a list over layers of ``(heads, seq, seq)`` float CPU tensors."""
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, (tuple, list)) or not attentions:
        raise TypeError("attentions must be a non-empty tuple/list over layers of (batch, heads, seq, seq) "
                        f"or (heads, seq, seq) tensors, got {type(attentions).__name__}")
    layers = []
    for index, layer in enumerate(attentions):
        if not isinstance(layer, torch.Tensor) or layer.dim() not in (3, 4) or layer.shape[-1] != layer.shape[-2]:
            shape = tuple(layer.shape) if isinstance(layer, torch.Tensor) else type(layer).__name__
            raise ValueError(f"layer {index}: expected a (batch, heads, seq, seq) or (heads, seq, seq) tensor, got {shape}")
        if layer.dim() == 4:
            if not 0 <= batch_index < layer.shape[0]:
                raise ValueError(f"batch_index must be in 0..{layer.shape[0] - 1}, got {batch_index}")
            layer = layer[batch_index]
        layers.append(layer.detach().float().cpu())
    return layers


def _check_tokens(tokens: Sequence[str], seq: int) -> list[str]:
    tokens = [str(token) for token in tokens]
    if len(tokens) != seq:
        raise ValueError(f"expected {seq} tokens (one per row of the attention matrix), got {len(tokens)}")
    return tokens


def _check_index(name: str, value: int, count: int) -> None:
    if not isinstance(value, int) or not 0 <= value < count:
        raise ValueError(f"{name} must be an integer in 0..{count - 1}, got {value!r}")


# ---------------------------------------------------------------------------------------- heatmaps
def attention_heatmap(weights, tokens: Sequence[str], ax=None, title: str | None = None, highlight: int | None = None):
    """Draw one attention matrix ``(q_seq, k_seq)``: rows are queries, columns the keys they attend to.

    ``highlight`` outlines one query row. Returns the ``Axes``.
    """
    matrix = torch.as_tensor(weights).detach().float().cpu()
    if matrix.dim() != 2:
        raise ValueError(f"weights must be one (q_seq, k_seq) matrix, got shape {tuple(matrix.shape)}")
    tokens = _check_tokens(tokens, matrix.shape[1])
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square self-attention matrix, got shape {tuple(matrix.shape)}")
    ax = ax or plt.subplots(figsize=(4.5, 4))[1]
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, vmax=max(matrix.max().item(), 1e-6))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if highlight is not None:
        _check_index("highlight", highlight, len(tokens))
        ax.add_patch(plt.Rectangle((-0.5, highlight - 0.5), len(tokens), 1, fill=False, edgecolor="red", linewidth=2))
    if title:
        ax.set_title(title)
    return ax


def attention_grid(attentions, tokens: Sequence[str], layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, batch_index: int = 0):
    """A layer × head grid of small heatmaps: the whole model's attention at a glance. Returns the Figure."""
    all_layers = _as_layers(attentions, batch_index)
    tokens = _check_tokens(tokens, all_layers[0].shape[-1])
    layers = list(range(len(all_layers))) if layers is None else list(layers)
    for layer in layers:
        _check_index("each layer", layer, len(all_layers))
    heads = list(range(min(layer.shape[0] for layer in all_layers))) if heads is None else list(heads)
    for head in heads:
        for layer in layers:
            _check_index(f"each head (layer {layer})", head, all_layers[layer].shape[0])
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(1.3 * len(heads) + 0.6, 1.3 * len(layers) + 0.8),
                             squeeze=False, layout="constrained")
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = axes[row, col]
            ax.imshow(all_layers[layer][head].numpy(), cmap="viridis", vmin=0.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    sentence = " ".join(tokens)
    fig.suptitle(sentence if len(sentence) <= 80 else sentence[:77] + "...", fontsize=9)
    return fig


def plot_attention(attentions, tokens: Sequence[str], layer: int, head: int, token: int | None = None,
                   batch_index: int = 0):
    """One head's heatmap; with ``token``, also a bar chart of where that query token looks. Returns the Figure."""
    layers = _as_layers(attentions, batch_index)
    _check_index("layer", layer, len(layers))
    _check_index("head", head, layers[layer].shape[0])
    weights = layers[layer][head]
    tokens = _check_tokens(tokens, weights.shape[-1])
    if token is None:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        attention_heatmap(weights, tokens, ax=ax, title=f"layer {layer}, head {head}")
        return fig
    _check_index("token", token, len(tokens))
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(9.5, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    attention_heatmap(weights, tokens, ax=ax, title=f"layer {layer}, head {head}", highlight=token)
    bars.barh(range(len(tokens)), weights[token].numpy(), color="tab:red")
    bars.set_yticks(range(len(tokens)), tokens, fontsize=8)
    bars.invert_yaxis()  # same top-to-bottom order as the heatmap's keys
    bars.set_xlabel("attention weight")
    bars.set_title(f"where {tokens[token]!r} looks")
    fig.tight_layout()
    return fig


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def attention_explorer(attentions, tokens: Sequence[str], batch_index: int = 0):
    """Sliders for layer and head and a token menu around :func:`plot_attention` (ipywidgets).

    The picture is drawn by matplotlib in the kernel and shown as a PNG image widget, so it works
    with no internet connection. Returns the widget (display it, or leave it last in a cell).
    """
    import ipywidgets as widgets

    layers = _as_layers(attentions, batch_index)
    tokens = _check_tokens(tokens, layers[0].shape[-1])
    layer = widgets.IntSlider(value=0, min=0, max=len(layers) - 1, description="layer")
    head = widgets.IntSlider(value=0, min=0, max=layers[0].shape[0] - 1, description="head")
    token = widgets.Dropdown(options=[("all tokens", None)] + [(f"{i}: {t}", i) for i, t in enumerate(tokens)],
                             value=None, description="token")
    image = widgets.Image(format="png")

    def redraw(_change=None):
        head.max = layers[layer.value].shape[0] - 1  # pruned layers may have fewer heads
        fig = plot_attention(layers, tokens, layer.value, head.value, token.value)
        image.value = _figure_png(fig)

    for control in (layer, head, token):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([layer, head, token]), image])


def interact(fn, **controls):
    """``ipywidgets.interact`` for the course's pictures, safe under every notebook executor.

    ``controls`` are widgets or ``interact``'s abbreviations (``(0, 10)``, a list of choices, a bool).
    ``fn(**values)`` runs now and after every change; what it prints, shows and returns is captured
    and written into an Output widget's state. ``interact`` instead lets the Output widget catch the
    kernel's display messages: an executor playing the browser (nbclient: ``jupyter nbconvert
    --execute``, papermill, Jupyter Book) then answers each one on the kernel's shell channel while it
    waits there for the cell's reply, and now and then misses the reply and sits out its time limit
    (jupyter/nbclient#312). Like ``interact``, it displays the sliders and the picture itself.
    """
    import ipywidgets as widgets
    from IPython.display import display
    from IPython.utils.capture import capture_output

    boxes = {name: control if isinstance(control, widgets.Widget) else widgets.interactive.widget_from_abbrev(control)
             for name, control in controls.items()}
    for name, box in boxes.items():
        box.description = box.description or name
    out = widgets.Output()

    def redraw(_change=None):
        with capture_output() as captured:
            result = fn(**{name: box.value for name, box in boxes.items()})
            if result is not None:
                display(result)
        text = [{"output_type": "stream", "name": "stdout", "text": captured.stdout}] if captured.stdout else []
        out.outputs = tuple(text + [{"output_type": "display_data", "data": shown.data, "metadata": shown.metadata or {}}
                                    for shown in captured.outputs])

    for box in boxes.values():
        box.observe(redraw, names="value")
    redraw()
    display(widgets.VBox([*boxes.values(), out]))


def bertviz_view(attentions, tokens: Sequence[str], view: str = "head", batch_index: int = 0):
    """bertviz's interactive head view (or ``view="model"``) of minilib or Hugging Face attentions.

    Prints :data:`BERTVIZ_NOTE` first: bertviz needs internet in the browser. Returns bertviz's HTML
    object (a notebook displays it when it is the cell's last value).
    """
    from bertviz import head_view, model_view

    views = {"head": head_view, "model": model_view}
    if view not in views:
        raise ValueError(f"view must be one of {list(views)}, got {view!r}")
    layers = _as_layers(attentions, batch_index)
    tokens = _check_tokens(tokens, layers[0].shape[-1])
    heads = [layer.shape[0] for layer in layers]
    if len(set(heads)) > 1:
        raise ValueError(f"bertviz needs the same number of heads in every layer, got {heads}; "
                         "use attention_explorer for pruned models")
    print(BERTVIZ_NOTE)
    return views[view](tuple(layer.unsqueeze(0) for layer in layers), tokens, html_action="return")


# ---------------------------------------------------------------------------------------- scaling
_SUPERSCRIPTS = str.maketrans("0123456789.", "⁰¹²³⁴⁵⁶⁷⁸⁹·")


def _big_o(slope: float) -> str:
    if slope == 1:
        return "O(n)"
    return f"O(n{format(slope, 'g').translate(_SUPERSCRIPTS)})"


def loglog_plot(xs, series: dict, reference_slopes: Sequence[float] = (1, 2), ax=None,
                xlabel: str = "sequence length n", ylabel: str = "time (s)", title: str | None = None):
    """Plot each series against ``xs`` on log-log axes, with dashed reference lines of given slopes.

    On log-log axes y = c·nᵏ is a straight line of slope k, so a measured curve parallel to the
    O(n²) line grows quadratically. Reference lines pass through the first series' last point
    (large n, where the growth rate shows). Returns the ``Axes``.
    """
    xs = np.asarray(xs, dtype=float)
    if xs.ndim != 1 or len(xs) < 2 or (xs <= 0).any():
        raise ValueError(f"xs must be at least two positive numbers, got {xs.tolist()}")
    if not isinstance(series, dict) or not series:
        raise ValueError("series must be a non-empty dict name -> y values")
    ax = ax or plt.subplots(figsize=(5.5, 4))[1]
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=float)
        if ys.shape != xs.shape or (ys <= 0).any():
            raise ValueError(f"series {name!r}: expected {len(xs)} positive values, got {ys.tolist()}")
        ax.loglog(xs, ys, marker="o", label=name)
    anchor_x, anchor_y = xs[-1], float(np.asarray(next(iter(series.values())), dtype=float)[-1])
    for slope, style in zip(reference_slopes, ["--", ":", "-.", (0, (5, 5))]):
        ax.loglog(xs, anchor_y * (xs / anchor_x) ** slope, linestyle=style, color="gray", label=_big_o(slope))
    ax.set_xticks(xs, [f"{x:g}" for x in xs])  # label the measured lengths themselves, not powers of ten
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return ax
