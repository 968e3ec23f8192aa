"""The course's diagrams, drawn by code so that they are exact and regenerable.

    python -m minilib diagrams [NAME ...] [--png DIR]

draws each diagram (the names are the keys of :data:`DIAGRAMS`) as a PNG and embeds it in the teacher's edition
(``notebooks/solutions/``) as an attachment of the markdown cell that shows it, ``![…](attachment:03_encoder_decoder.png)``;
then ``python -m minilib assignments build --self-study`` carries it into the student edition. A notebook
thus holds its own pictures: it shows them wherever it is opened (a class handout in any folder, a student's
download from Binder, Colab, a submission being graded), with no folder of images beside it. PNG, because
JupyterLab renders PNG attachments but not SVG ones.

Where a diagram shows a mask, a grid or a number, it is computed by the library function the chapter teaches
(``minilib.sparse``, ``minilib.prune``, ``minilib.quant``, ``minilib.attention``), so the picture cannot drift
from the code. The output is byte-identical on every run (no date or software stamp, a fixed 256-colour palette),
so a test can redraw the diagrams and compare bytes. Every figure has an opaque white background: readable on
light and dark notebook themes.
"""
from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import torch
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image

from minilib.attention import KEY_CHUNK, QUERY_BLOCK
from minilib.course.editions import teacher_notebooks

DPI = 110       # about as wide on screen as the notebook's text column
COLOURS = 256   # a palette this size keeps the antialiased edges and makes a file a third of full colour
STYLE = {"font.family": "DejaVu Sans", "font.size": 10,
         "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
         "text.color": "#222222", "axes.edgecolor": "#444444", "axes.labelcolor": "#222222",
         "xtick.color": "#444444", "ytick.color": "#444444"}
# fills for boxes, one per role, readable with dark text
BLUE, GREEN, ORANGE, RED, PURPLE, GREY, YELLOW = ("#dbe9f7", "#dcefd9", "#fde3c8", "#f8d4d4", "#e6dcf2", "#eeeeee",
                                                  "#fff3bf")
INK = "#222222"
STRONG = {"blue": "#2b6cb0", "green": "#2f855a", "orange": "#c05621", "red": "#c53030", "purple": "#6b46c1",
          "grey": "#718096"}


# --------------------------------------------------------------------------------------------- drawing kit
def _canvas(width, height, inches_per_unit=0.5):
    """A figure whose axes span (0, width) × (0, height) in data units, no ticks, equal aspect."""
    fig = plt.figure(figsize=(width * inches_per_unit, height * inches_per_unit))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text="", fill=GREY, size=10, weight="normal", edge=INK, rounded=True):
    """A box with its lower-left corner at (x, y) and centred text; returns its centre."""
    style = "round,pad=0,rounding_size=0.15" if rounded else "square,pad=0"
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=fill, edgecolor=edge, linewidth=1.2))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, color=INK)
    return x + w / 2, y + h / 2


def _arrow(ax, start, end, color=INK, style="-|>", width=1.3, curve=0.0, dashed=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, linewidth=width,
                                 connectionstyle=f"arc3,rad={curve}", linestyle="--" if dashed else "-",
                                 shrinkA=0, shrinkB=0))


def _path(ax, points, color=INK, width=1.3, arrow=True, dashed=False):
    """A polyline through ``points``, with an arrow head on its last segment."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1], ys[:-1], color=color, linewidth=width, linestyle="--" if dashed else "-",
            solid_capstyle="butt")
    _arrow(ax, points[-2], points[-1], color=color, width=width, style="-|>" if arrow else "-", dashed=dashed)


def _plus(ax, x, y, r=0.28):
    """The ⊕ of a residual connection, centred at (x, y)."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=INK, linewidth=1.2, zorder=3))
    ax.plot([x - r * 0.6, x + r * 0.6], [y, y], color=INK, linewidth=1.2, zorder=4)
    ax.plot([x, x], [y - r * 0.6, y + r * 0.6], color=INK, linewidth=1.2, zorder=4)


def _grid(ax, x, y, values, cell=0.4, cmap=None, on=STRONG["blue"], off="white", edge="#bbbbbb", vmax=None):
    """Draw a (rows, cols) tensor as a grid of cells, row 0 at the top, lower-left corner at (x, y).

    Boolean values: ``on``/``off`` colours; float values: shades of ``cmap`` (0 = white).
    """
    rows, cols = values.shape
    vmax = vmax or (float(values.abs().max()) if values.dtype != torch.bool else 1.0)
    for i in range(rows):
        for j in range(cols):
            value = values[i, j]
            if values.dtype == torch.bool:
                colour = on if bool(value) else off
            else:
                colour = plt.get_cmap(cmap)(0.15 + 0.85 * float(value.abs()) / vmax) if float(value) != 0 else off
            ax.add_patch(Rectangle((x + j * cell, y + (rows - 1 - i) * cell), cell, cell, facecolor=colour,
                                   edgecolor=edge, linewidth=0.5))
    ax.add_patch(Rectangle((x, y), cols * cell, rows * cell, fill=False, edgecolor=INK, linewidth=1.0))


# --------------------------------------------------------------------------------------------- chapter 00
# NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bfloat16 on the tensor cores (1,979 is with 2:4 sparsity), 3.35 TB/s
H100_PEAK, H100_BANDWIDTH = 989e12, 3.35e12


def roofline():
    """Chapter 00: both roofs, min(peak, bandwidth × intensity), with the ridge and where four computations sit."""
    ridge = H100_PEAK / H100_BANDWIDTH                                     # FLOPs per byte where the roofs meet
    attainable = lambda intensity: min(H100_PEAK, H100_BANDWIDTH * intensity) / 1e12   # TFLOP/s
    fig, ax = plt.subplots(figsize=(10.5, 5.2))
    xs = torch.logspace(-2, 4, 400).tolist()
    ax.loglog(xs, [H100_BANDWIDTH * x / 1e12 for x in xs], color=STRONG["blue"], linewidth=1, linestyle=":")
    ax.loglog(xs, [H100_PEAK / 1e12] * len(xs), color=STRONG["orange"], linewidth=1, linestyle=":")
    ax.loglog(xs, [attainable(x) for x in xs], color=INK, linewidth=2.6)
    ax.fill_between([x for x in xs if x <= ridge], 1e-2, [attainable(x) for x in xs if x <= ridge], color=BLUE)
    ax.fill_between([x for x in xs if x >= ridge], 1e-2, [attainable(x) for x in xs if x >= ridge], color=ORANGE)
    ax.text(3.0, 0.02, "memory-bound: time = bytes ÷ bandwidth", ha="center", va="bottom", fontsize=10,
            color=STRONG["blue"], weight="bold", zorder=4, bbox=dict(facecolor=BLUE, edgecolor="none"))
    ax.text(1800, 0.02, "compute-bound:\ntime = FLOPs ÷ peak", ha="center", va="bottom", fontsize=10,
            color=STRONG["orange"], weight="bold", zorder=4, bbox=dict(facecolor=ORANGE, edgecolor="none"))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.11)
    ax.set_xlim(1e-2, 1e4)
    ax.set_ylim(1e-2, 1e4)
    (x0, y0), (x1, y1) = ax.transData.transform([(0.05, 0.05), (5.0, 5.0)])   # the slanted roof's angle on screen
    ax.text(0.03, H100_BANDWIDTH * 0.03 / 1e12 * 2.6, "bandwidth roof: bandwidth × intensity\n(slope 1: twice the "
                                                     "FLOPs per byte, twice the speed)",
            rotation=math.degrees(math.atan2(y1 - y0, x1 - x0)), rotation_mode="anchor", fontsize=9.5,
            color=STRONG["blue"], ha="left", va="bottom")
    ax.text(1300, H100_PEAK / 1e12 * 1.25, "compute roof: the peak", ha="center", fontsize=9.5,
            color=STRONG["orange"])
    ax.plot([ridge], [H100_PEAK / 1e12], "o", color=STRONG["red"], markersize=9, zorder=5)
    ax.annotate(f"ridge point: peak ÷ bandwidth\n= {ridge:.0f} FLOPs per byte", xy=(ridge, H100_PEAK / 1e12),
                xytext=(ridge / 40, H100_PEAK / 1e12 * 2.6), fontsize=9.5, color=STRONG["red"], ha="center",
                arrowprops=dict(arrowstyle="-|>", color=STRONG["red"], lw=1.2))
    # where computations sit: FLOPs per byte moved, from their formulas (bfloat16: 2 bytes a number; float32: 4)
    n = 4096
    workloads = [(1 / 12, "adding two float32\nvectors: 1/12"),
                 (1.0, "generating 1 token,\nbatch 1 (bf16): ≈ 1"),
                 (64.0, "batch of 64\ntokens: ≈ 64"),
                 (2 * n ** 3 / (3 * n * n * 2), f"{n}×{n} matmul\n(bf16): n/3 ≈ {n // 3}")]
    for x, label in workloads:
        y = attainable(x)
        ax.plot([x], [y], "s", color=STRONG["purple"], markersize=7, zorder=5)
        ax.plot([x, x], [1e-2, y], color=STRONG["purple"], linewidth=0.8, linestyle="--")
        ax.text(x, y * 0.55, label, ha="center", va="top", fontsize=8.5, color=STRONG["purple"],
                bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))
    ax.set_xlabel("arithmetic intensity: FLOPs per byte moved (log scale)")
    ax.set_ylabel("attainable TFLOP/s (log scale)")
    ax.set_title("The roofline of an NVIDIA H100 SXM (datasheet: 989 TFLOP/s dense bfloat16, 3.35 TB/s)\n"
                 "speed ≤ min(peak, bandwidth × intensity)", fontsize=10.5)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------- chapter 02
# one query row's scores against 12 keys, seen in 3 chunks of 4 (the numbers are the picture's data)
TILING_SCORES = torch.tensor([0.3, 1.1, -0.4, 0.8, 2.0, 0.1, 1.5, -1.0, 0.6, 2.6, 1.9, 0.2])


def online_softmax_trace(scores: torch.Tensor, chunk: int):
    """(running max m, running sum ℓ) after each chunk of ``scores`` (1-d), as memory-efficient attention keeps them."""
    m, total, trace = -math.inf, 0.0, []
    for j0 in range(0, len(scores), chunk):
        s = scores[j0:j0 + chunk]
        new_m = max(m, float(s.max()))
        total = total * math.exp(m - new_m) + float(torch.exp(s - new_m).sum())   # ℓ' = ℓ·e^(m−m') + Σ e^(s−m')
        m = new_m
        trace.append((m, total))
    return trace


def tiling():
    """Chapter 02: query blocks × key chunks of the score matrix, and the running max and sum of one row."""
    n_q, n_k, q_block, k_chunk, cell = 8, 12, 4, 4, 0.55
    fig = plt.figure(figsize=(11.5, 4.6))
    ax = fig.add_axes([0.0, 0.0, 0.46, 1.0])
    ax.set_xlim(-1.6, n_k * cell + 1.2)
    ax.set_ylim(-1.6, n_q * cell + 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    top = n_q * cell
    for i in range(n_q):
        for j in range(n_k):
            in_block = i < q_block
            fill = [BLUE, GREEN, ORANGE][j // k_chunk] if in_block else "white"
            ax.add_patch(Rectangle((j * cell, top - (i + 1) * cell), cell, cell, facecolor=fill, edgecolor="#bbbbbb",
                                   linewidth=0.5))
    for j in range(0, n_k + 1, k_chunk):
        ax.plot([j * cell, j * cell], [0, top], color=INK, linewidth=1.2)
    for i in range(0, n_q + 1, q_block):
        ax.plot([0, n_k * cell], [top - i * cell, top - i * cell], color=INK, linewidth=1.2)
    for t in range(n_k // k_chunk):
        ax.text((t + 0.5) * k_chunk * cell, top - q_block * cell / 2, f"tile {t + 1}", ha="center", va="center",
                fontsize=10, weight="bold")
    ax.text(n_k * cell / 2, top - (q_block + n_q) * cell / 2, "next query block: the same tiles again", ha="center",
            va="center", fontsize=9, color=STRONG["grey"], bbox=dict(facecolor="white", edgecolor="none"))
    ax.add_patch(Rectangle((0, top - cell), n_k * cell, cell, fill=False, edgecolor=STRONG["red"], linewidth=2.0))
    ax.text(n_k * cell + 0.15, top - cell / 2, "row\nplotted\n→", fontsize=8, color=STRONG["red"], va="center")
    ax.text(n_k * cell / 2, top + 0.9, "scores S = QKᵀ/√d, never stored whole", ha="center", fontsize=11,
            weight="bold")
    _arrow(ax, (0, top + 0.35), (n_k * cell, top + 0.35))
    ax.text(n_k * cell / 2, top + 0.45, "keys, chunk_size at a time", ha="center", va="bottom", fontsize=9)
    _arrow(ax, (-0.35, top), (-0.35, 0))
    ax.text(-0.5, top / 2, "queries, query_chunk_size\nat a time", ha="right", va="center", fontsize=9,
            rotation=90, multialignment="center")
    ax.text(n_k * cell / 2, -0.6, f"memory: one {q_block}×{k_chunk} tile at a time, not {n_q}×{n_k}",
            ha="center", fontsize=10)
    ax.text(n_k * cell / 2, -1.2, f"(here {n_q} queries × {n_k} keys; by default a tile is {QUERY_BLOCK} queries × "
            f"{KEY_CHUNK} keys)", ha="center", fontsize=9,
            color=STRONG["grey"])

    # right: one row's scores, chunk by chunk, with the running max m and sum ℓ
    trace = online_softmax_trace(TILING_SCORES, k_chunk)
    exact = float(torch.exp(TILING_SCORES - TILING_SCORES.max()).sum())
    assert abs(trace[-1][1] - exact) < 1e-5 and trace[-1][0] == float(TILING_SCORES.max())
    plot = fig.add_axes([0.55, 0.25, 0.43, 0.62])
    keys = torch.arange(n_k)
    colours = [[STRONG["blue"], STRONG["green"], STRONG["orange"]][j // k_chunk] for j in range(n_k)]
    plot.bar(keys.tolist(), TILING_SCORES.tolist(), color=colours, width=0.6, label="score s_j of key j")
    for t, (m, total) in enumerate(trace):
        j0, j1 = t * k_chunk - 0.5, (t + 1) * k_chunk - 0.5
        plot.plot([j0, j1], [m, m], color=STRONG["red"], linewidth=2.2, label="running max m" if t == 0 else None)
        plot.text((j0 + j1) / 2, 3.05, f"m = {m:.1f}\nℓ = {total:.2f}", ha="center", va="bottom", fontsize=9)
        if t:
            plot.axvline(j0, color="#999999", linewidth=0.8, linestyle=":")
    plot.set_ylim(-1.3, 4.1)
    plot.set_xlim(-0.7, n_k - 0.3)
    plot.set_xticks(range(n_k))
    plot.set_xlabel("key j (one query row, 3 chunks of 4 keys)")
    plot.axhline(0, color="#888888", linewidth=0.6)
    plot.legend(loc="lower right", fontsize=8, frameon=False)
    plot.spines[["top", "right"]].set_visible(False)
    fig.text(0.765, 0.08, "when m grows to m', old ℓ and a are rescaled by exp(m − m')\n"
                          "ℓ' = ℓ·exp(m − m') + Σ_j exp(s_j − m');   at the end: softmax(s)·V = a / ℓ",
             ha="center", va="center", fontsize=9)
    return fig


def multihead_split():
    """Chapter 02: Q (seq, 384) cut into 12 column blocks of 32, viewed as (seq, 12, 32), transposed to (12, seq, 32)."""
    heads, seq, unit = 12, 6, 0.34
    colours = plt.get_cmap("tab20")(range(heads))
    fig, ax = _canvas(23.4, 8.2)
    x0, y0 = 0.6, 1.6
    for h in range(heads):                                     # Q: one row per token, 12 blocks of 32 columns
        for t in range(seq):
            ax.add_patch(Rectangle((x0 + h * 3 * unit, y0 + t * unit), 3 * unit, unit, facecolor=colours[h],
                                   edgecolor="white", linewidth=0.6))
        ax.text(x0 + (h + 0.5) * 3 * unit, y0 - 0.3, f"{h}", ha="center", va="top", fontsize=8, color=INK)
    ax.text(x0 + heads * 1.5 * unit, y0 + seq * unit + 0.3, "Q = X W_Q: (seq, 384), one row per token",
            ha="center", va="bottom", fontsize=10, weight="bold")
    ax.text(x0 + heads * 1.5 * unit, y0 - 0.85, "head h owns columns 32h … 32h + 31", ha="center", va="top",
            fontsize=9, color=STRONG["grey"])
    _arrow(ax, (13.3, y0 + seq * unit / 2), (15.5, y0 + seq * unit / 2))
    ax.text(14.4, y0 + seq * unit / 2 - 0.3, ".view(seq, 12, 32)\n.transpose(0, 1)", ha="center", va="top",
            fontsize=8, family="DejaVu Sans Mono")
    x1 = 16.0
    for h in reversed(range(heads)):                           # (12, seq, 32): the heads stacked, head 0 in front
        dx, dy = h * 0.36, h * 0.3
        ax.add_patch(Rectangle((x1 + dx, y0 + dy), 3 * unit, seq * unit, facecolor=colours[h], edgecolor=INK,
                               linewidth=0.8))
    ax.text(x1 + 0.5 * 3 * unit, y0 - 0.3, "head 0", ha="center", va="top", fontsize=8)
    ax.text(x1 + 11 * 0.36 + 0.5 * 3 * unit, y0 + 11 * 0.3 + seq * unit + 0.15, "head 11", ha="center",
            va="bottom", fontsize=8)
    ax.text(x1 + 2.6, y0 - 0.85, "(12, seq, 32): the heads become a batch dimension;\n"
                                 "one call attends in all twelve, each on its own 32 columns",
            ha="center", va="top", fontsize=9, color=STRONG["grey"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 03
def _sublayer_stack(ax, x, y0, w, names, fills, residual_side="left"):
    """Post-norm sublayers stacked upwards: each is block → ⊕ (residual from below) → LayerNorm.

    Returns the y of the stack's top and the list of block centres (for extra inputs such as cross-attention).
    """
    y, centres, cx = y0, [], x + w / 2
    for name, fill in zip(names, fills):
        start = y
        _arrow(ax, (cx, y), (cx, y + 0.5))
        _box(ax, x, y + 0.5, w, 0.9, name, fill)
        centres.append((x, y + 0.95))
        _arrow(ax, (cx, y + 1.4), (cx, y + 1.82))
        _plus(ax, cx, y + 2.1)
        side = x - 0.45 if residual_side == "left" else x + w + 0.45
        _path(ax, [(cx, start + 0.25), (side, start + 0.25), (side, y + 2.1), (cx - 0.28 if residual_side == "left"
                                                                               else cx + 0.28, y + 2.1)],
              color=STRONG["red"], width=1.6)
        _arrow(ax, (cx, y + 2.38), (cx, y + 2.7))
        _box(ax, x, y + 2.7, w, 0.6, "LayerNorm", YELLOW, size=9)
        y += 3.3
    return y, centres


def encoder_decoder():
    """Chapter 03: the encoder and decoder blocks (post-norm, as in BERT and MiniLM) with their residual paths."""
    fig, ax = _canvas(17, 15.2)
    w = 4.4
    ex, dx = 1.6, 10.2
    # encoder
    _box(ax, ex, 0.3, w, 0.8, "token embeddings + positions", GREY, size=9)
    enc_top, _ = _sublayer_stack(ax, ex, 1.1, w, ["multi-head\nself-attention", "feed-forward\n(d → 4d → d)"],
                                 [BLUE, GREEN])
    ax.add_patch(Rectangle((ex - 0.9, 1.3), w + 1.6, enc_top - 1.3 + 0.1, fill=False, edgecolor=STRONG["grey"],
                           linewidth=1.2, linestyle="--"))
    ax.text(ex + w + 0.85, (1.3 + enc_top) / 2, "× N", fontsize=13, weight="bold", va="center")
    _arrow(ax, (ex + w / 2, enc_top), (ex + w / 2, enc_top + 0.6))
    _box(ax, ex, enc_top + 0.6, w, 0.8, "encoder output (memory)", GREY, size=9)
    ax.text(ex + w / 2, 14.6, "Encoder layer (BERT, MiniLM)", ha="center", fontsize=12, weight="bold")
    # decoder
    _box(ax, dx, 0.3, w, 0.8, "target embeddings + positions", GREY, size=9)
    dec_top, centres = _sublayer_stack(ax, dx, 1.1, w, ["masked (causal)\nself-attention", "cross-attention\nQ: decoder, K, V: memory",
                                                        "feed-forward\n(d → 4d → d)"], [BLUE, PURPLE, GREEN],
                                       residual_side="right")
    ax.add_patch(Rectangle((dx - 0.7, 1.3), w + 1.6, dec_top - 1.3 + 0.1, fill=False, edgecolor=STRONG["grey"],
                           linewidth=1.2, linestyle="--"))
    ax.text(dx - 1.0, (1.3 + dec_top) / 2, "N ×", fontsize=13, weight="bold", va="center", ha="right")
    _arrow(ax, (dx + w / 2, dec_top), (dx + w / 2, dec_top + 0.5))
    _box(ax, dx, dec_top + 0.5, w, 0.7, "linear → softmax: next token", GREY, size=9)
    ax.text(dx + w / 2, 14.6, "Decoder layer (original Transformer)", ha="center", fontsize=12, weight="bold")
    # memory → cross-attention
    mem = (ex + w, enc_top + 1.0)
    cross = centres[1]
    _path(ax, [mem, (8.1, enc_top + 1.0), (8.1, cross[1]), cross], color=STRONG["purple"], width=1.8)
    ax.text(8.25, (enc_top + 1.0 + cross[1]) / 2 + 1.2, "K, V", color=STRONG["purple"], fontsize=10, weight="bold")
    # legend
    ax.plot([5.6, 6.4], [12.9, 12.9], color=STRONG["red"], linewidth=1.8)
    ax.text(6.55, 12.9, "residual path: x + sublayer(x)", va="center", fontsize=9)
    ax.text(8.5, 13.8, "post-norm: LayerNorm(x + sublayer(x)).  Pre-norm (GPT-2, exercise 3.2):\n"
                       "x + sublayer(LayerNorm(x)): the red path then skips every LayerNorm.",
            ha="center", va="center", fontsize=9, color=STRONG["grey"])
    return fig


def teacher_forcing():
    """Chapter 03: one target row, what the decoder reads (tgt[:, :-1]) and must predict (tgt[:, 1:]), all at once."""
    from minilib.support.data import TARGET_CHARS, CharVocab

    vocab = CharVocab(TARGET_CHARS)
    tgt = vocab.encode_batch(["1998-03-03"], bos=True)[0]                 # as translation_dataset encodes a target
    reads, predicts = tgt[:-1].tolist(), tgt[1:].tolist()                 # seq2seq_loss's tgt_in and tgt_out
    pitch, w, x0, seen = 1.45, 1.15, 5.4, 4
    fills = plt.get_cmap("Set3")(range(12))                              # one colour per element of tgt

    def cell(x, y, index, token_id):
        """Element ``index`` of tgt, coloured by its place in tgt, with its id below it."""
        ax.add_patch(FancyBboxPatch((x, y), w, 0.9, boxstyle="round,pad=0,rounding_size=0.12", facecolor=fills[index],
                                    edgecolor=INK, linewidth=1.0))
        ax.text(x + w / 2, y + 0.45, vocab.itos[token_id], ha="center", va="center", fontsize=10, weight="bold",
                family="DejaVu Sans Mono")
        ax.text(x + w / 2, y - 0.1, f"id {token_id}", ha="center", va="top", fontsize=7, color=STRONG["grey"])

    top = x0 + len(reads) * pitch
    fig, ax = _canvas(top + 0.3, 11.6)
    for t, (r, p) in enumerate(zip(reads, predicts)):
        x = x0 + t * pitch
        cell(x, 2.2, t, r)                                                # tgt[t]
        cell(x, 7.1, t + 1, p)                                            # tgt[t + 1]: the colour one place left
        _arrow(ax, (x + w / 2, 3.1), (x + w / 2, 3.75))
        _arrow(ax, (x + w / 2, 5.75), (x + w / 2, 6.7))
        ax.text(x + w / 2, 1.62, f"{t}", ha="center", va="top", fontsize=8.5, color=STRONG["grey"])
    ax.text(x0 - 0.3, 2.65, "decoder reads\ntgt[:, :-1]", ha="right", va="center", fontsize=10, weight="bold")
    ax.text(x0 - 0.3, 7.55, "must predict\ntgt[:, 1:]", ha="right", va="center", fontsize=10, weight="bold")
    ax.text(x0 - 0.3, 1.5, "position t", ha="right", va="center", fontsize=8.5, color=STRONG["grey"])
    _box(ax, x0, 3.75, top - x0 - (pitch - w), 2.0, "", BLUE)
    ax.text((x0 + top) / 2, 5.2, "decoder, one pass over all positions", ha="center", va="center", fontsize=10.5,
            weight="bold")
    ax.text((x0 + top) / 2, 4.35, "masked self-attention: position t sees what is read at 0 … t;   "
                                  "cross-attention: the encoder's memory", ha="center", va="center", fontsize=9)
    _box(ax, 0.3, 3.95, 3.6, 1.6, "encoder memory\nof the source\n\"march 3rd, 1998\"", PURPLE, size=9)
    _arrow(ax, (3.9, 4.75), (x0, 4.75), color=STRONG["purple"], width=1.6)
    # what one position may see
    right = x0 + seen * pitch + w
    ax.plot([x0, x0, right, right], [1.15, 1.0, 1.0, 1.15], color=STRONG["red"], linewidth=1.4)
    ax.text(x0, 0.75, f"position {seen} reads {' '.join(vocab.itos[i] for i in reads[:seen + 1])} and must predict "
                      f"\"{vocab.itos[predicts[seen]]}\": the mask hides what comes after",
            ha="left", va="top", fontsize=9, color=STRONG["red"])
    ax.add_patch(Rectangle((x0 + seen * pitch - 0.08, 7.02), w + 0.16, 1.06, fill=False, edgecolor=STRONG["red"],
                           linewidth=1.6))
    # the loss and the idea
    middle = (x0 + top) / 2
    ax.text(middle, 8.55, f"loss: cross-entropy at all {len(reads)} positions at once (padding, <pad> = id 0, "
                          "left out)", ha="center", va="bottom", fontsize=10)
    ax.text(middle, 10.55, "Teacher forcing: same colour = same element of tgt", ha="center", va="bottom",
            fontsize=11.5, weight="bold")
    ax.text(middle, 9.3, "the row to predict is the row read, shifted one place left; the decoder reads the TRUE\n"
                         "previous character, never its own guess (generation feeds its guesses back, one pass each)",
            ha="center", va="bottom", fontsize=9.5, color=STRONG["grey"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 04
def sparse_masks():
    """Chapter 04: sliding window, global tokens, random blocks and their union (BigBird), as (n, n) masks."""
    from minilib.sparse import bigbird_layout, global_mask, layout_to_mask, random_block_layout, sliding_window_mask

    n, block = 16, 2
    masks = {
        "sliding window\n(window 3: |i − j| < 3)": sliding_window_mask(n, 3),
        "global tokens\n(first 2 see and are seen by all)": global_mask(n, 2),
        "random blocks\n(1 random 2×2 block per row)": layout_to_mask(random_block_layout(n // block, 1, seed=0),
                                                                       block),
        "BigBird: all three\n(at block level)": layout_to_mask(bigbird_layout(n // block, 1, 1, 1, seed=0), block),
    }
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.1))
    colours = [STRONG["blue"], STRONG["orange"], STRONG["green"], STRONG["purple"]]
    for ax, (title, mask), colour in zip(axes, masks.items(), colours):
        ax.imshow(mask.numpy(), cmap=matplotlib.colors.ListedColormap(["white", colour]), vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([x - 0.5 for x in range(0, n + 1, 4)], minor=False)
        ax.set_xticks([x - 0.5 for x in range(n + 1)], minor=True)
        ax.set_yticks([x - 0.5 for x in range(n + 1)], minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title, fontsize=10)
        kept = int(mask.sum())
        ax.set_xlabel(f"keys j → \n{kept}/{n * n} scores computed ({kept / n / n:.0%})", fontsize=9)
        ax.set_ylabel("queries i →", fontsize=9)
    fig.suptitle("Which scores each pattern computes (n = 16 tokens; coloured = query i may attend to key j)",
                 fontsize=11)
    fig.subplots_adjust(left=0.03, right=0.99, top=0.8, bottom=0.12, wspace=0.25)
    return fig


# --------------------------------------------------------------------------------------------- chapter 05
def _matrix(ax, x, y, rows, cols, label, fill, unit=0.32):
    """A matrix of ``rows × cols`` as a rectangle (lower-left at (x, y)) with its name inside and sizes around it."""
    w, h = cols * unit, rows * unit
    _box(ax, x, y, w, h, label, fill, size=10, rounded=False)
    return x + w, y + h


def kernel_trick():
    """Chapter 05: (φ(Q)φ(K)ᵀ)V needs an n×n matrix; φ(Q)(φ(K)ᵀV) an f×d one: the same product, reordered."""
    n, f, d, u = 12, 3, 3, 0.32
    fig, ax = _canvas(21, 13.6)

    def row(y, title, cost, steps):
        ax.text(0.4, y + n * u + 1.0, title, fontsize=12, weight="bold", va="bottom")
        x = 0.6
        for rows, cols, label, fill, shape in steps:
            if rows == 0:                                            # an operator between two matrices
                ax.text(x + 0.35, y + n * u / 2, label, fontsize=16, ha="center", va="center")
                x += 0.7
                continue
            top = y + n * u / 2 + rows * u / 2
            _matrix(ax, x, top - rows * u, rows, cols, label, fill, unit=u)
            ax.text(x + cols * u / 2, top - rows * u - 0.35, shape, ha="center", va="top", fontsize=9,
                    color=STRONG["grey"])
            x += cols * u + 0.25
        ax.text(x + 0.5, y + n * u / 2, cost, fontsize=10, va="center")

    def op(symbol):
        return 0, 0, symbol, None, ""

    row(8.0, "softmax order:  (φ(Q) φ(K)ᵀ) V", "cost ≈ 2n²f + 2n²d FLOPs\nmemory: n×n scores\ngrows as n²",
        [(n, f, "φ(Q)", BLUE, "n×f"), op("·"), (f, n, "φ(K)ᵀ", GREEN, "f×n"), op("="), (n, n, "n × n", RED, "n×n"),
         op("·"), (n, d, "V", ORANGE, "n×d"), op("="), (n, d, "out", GREY, "n×d")])
    row(2.0, "linear order:  φ(Q) (φ(K)ᵀ V)", "cost ≈ 4nfd FLOPs\nmemory: f×d summary S\ngrows as n",
        [(f, n, "φ(K)ᵀ", GREEN, "f×n"), op("·"), (n, d, "V", ORANGE, "n×d"), op("="), (f, d, "S", PURPLE, "f×d"),
         op(";"), (n, f, "φ(Q)", BLUE, "n×f"), op("·"), (f, d, "S", PURPLE, "f×d"), op("="),
         (n, d, "out", GREY, "n×d")])
    ax.text(10.5, 0.2, "Matrix products are associative: both orders give the same numbers (the normaliser "
                       "φ(Q)(φ(K)ᵀ1) likewise).\nexp(q·k) does not split into a product of a q part and a k part, "
                       "so softmax attention must form the n×n matrix;\na feature map with sim(q, k) = φ(q)·φ(k) "
                       "is what makes the reordering possible.",
            ha="center", va="bottom", fontsize=9, color=STRONG["grey"])
    return fig


def _numbers(ax, x, y, values, cell, vmax, cmap="RdBu_r"):
    """A (rows, cols) tensor as cells with their values printed, shaded from blue (−vmax) to red (+vmax), row 0 on top."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            value = round(float(values[i, j]), 1) + 0.0                  # + 0.0: no "-0.0"
            ax.add_patch(Rectangle((x + j * cell, y + (rows - 1 - i) * cell), cell, cell, edgecolor="#888888",
                                   facecolor=plt.get_cmap(cmap)(0.5 + 0.28 * value / vmax), linewidth=0.6))
            ax.text(x + (j + 0.5) * cell, y + (rows - 0.5 - i) * cell, f"{value:.1f}", ha="center", va="center",
                    fontsize=6.5)
    ax.add_patch(Rectangle((x, y), cols * cell, rows * cell, fill=False, edgecolor=INK, linewidth=1.0))


def linear_attention_rnn():
    """Chapter 05: causal linear attention read token by token, S_t = S_{t-1} + φ(k_t)v_tᵀ, beside a growing KV cache."""
    from minilib.linear_attention import step

    steps, d, cell, pitch = 4, 3, 0.42, 5.2
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, steps, d, generator=generator) for _ in range(3))
    states, outputs, state = [torch.zeros(d, d)], [], None
    for t in range(steps):
        state, out = step(state, q[:, :, t], k[:, :, t], v[:, :, t])
        states.append(state[0][0, 0])
        outputs.append(out[0, 0])
    vmax = max(float(s.abs().max()) for s in states)
    fig, ax = _canvas(23.2, 13.4)
    chain, size = 7.4, d * cell
    ax.text(11.6, 12.6, "Causal linear attention is an RNN: the state S (f × d per head) is all it keeps",
            ha="center", fontsize=12, weight="bold")
    ax.text(11.6, 11.8, r"$S_t = S_{t-1} + \phi(k_t)\,v_t^\top,\quad z_t = z_{t-1} + \phi(k_t),\quad "
                        r"\mathrm{out}_t = \phi(q_t)^\top S_t \,/\, \phi(q_t)^\top z_t$"
                        "        (here f = d = 3, φ = elu + 1; the numbers are minilib's step)",
            ha="center", fontsize=10.5)
    _numbers(ax, 0.5, chain - size / 2, states[0], cell, vmax)
    ax.text(0.5 + size / 2, chain - size / 2 - 0.2, r"$S_0 = 0$", ha="center", va="top", fontsize=10)
    previous_right = 0.5 + size
    for t in range(1, steps + 1):
        plus = 3.2 + (t - 1) * pitch
        _arrow(ax, (previous_right, chain), (plus - 0.28, chain), color=STRONG["purple"], width=1.8)
        _plus(ax, plus, chain)
        left = plus + 0.75
        _arrow(ax, (plus + 0.28, chain), (left, chain), color=STRONG["purple"], width=1.8)
        _numbers(ax, left, chain - size / 2, states[t], cell, vmax)
        ax.text(left + size / 2, chain - size / 2 - 0.2, f"$S_{t}$", ha="center", va="top", fontsize=11,
                weight="bold", color=STRONG["purple"])
        previous_right = left + size
        # the write: φ(k_t) v_tᵀ, a rank-1 f × d matrix, from this token's key and value
        update = states[t] - states[t - 1]
        _numbers(ax, plus - size / 2, 4.3, update, cell, vmax)
        ax.text(plus, 4.1, rf"$\phi(k_{t})\,v_{t}^\top$", ha="center", va="top", fontsize=10)
        _arrow(ax, (plus, 4.3 + size), (plus, chain - 0.28))
        _box(ax, plus - 1.0, 2.4, 2.0, 0.75, rf"$k_{t},\ v_{t}$", GREEN, size=10)
        _arrow(ax, (plus, 3.15), (plus, 3.55))
        # the read: out_t from φ(q_t) and S_t
        top = left + size / 2
        _box(ax, top - 1.5, 9.55, 3.0, 0.8, rf"$\mathrm{{out}}_{t}$ = ({', '.join(f'{float(x):.1f}' for x in outputs[t - 1])})",
             ORANGE, size=8.5)
        _arrow(ax, (top, chain + size / 2), (top, 9.55))
        ax.text(top + 0.12, 9.0, rf"$\phi(q_{t})$", fontsize=9.5, va="center")
        # softmax attention instead: a cache that holds every key and value so far
        ax.add_patch(Rectangle((plus - 1.0, 0.4), 2.0, 0.32 * t, facecolor=RED, edgecolor=STRONG["red"]))
        for row in range(1, t):
            ax.plot([plus - 1.0, plus + 1.0], [0.4 + 0.32 * row] * 2, color=STRONG["red"], linewidth=0.6)
        ax.text(plus + 1.1, 0.4 + 0.16 * t, f"{t} key{'s' * (t > 1)},\n{t} value{'s' * (t > 1)}", fontsize=7.5,
                va="center", color=STRONG["red"])
    ax.text(0.3, 1.05, "softmax:\nKV cache\ngrows with t", fontsize=9, color=STRONG["red"], va="center")
    ax.text(0.3, 2.78, "token t", fontsize=9, va="center")
    ax.text(0.3, 10.6, "read: one product\nwith the state", fontsize=9, va="center")
    ax.text(20.3, 4.9, "S keeps its size\nat every step:\nconstant memory\nand work per token", fontsize=8.5,
            va="center", color=STRONG["purple"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 06
def distillation():
    """Chapter 06: one batch through a frozen teacher and a trainable student, and the three losses."""
    fig, ax = _canvas(20, 11)
    _box(ax, 0.3, 4.8, 2.6, 1.4, "batch of\nsentences x", GREY)
    _box(ax, 4.2, 7.0, 4.2, 3.2, "teacher\nlarge, already trained\nfrozen (no gradient)", BLUE, size=10)
    _box(ax, 4.2, 1.0, 3.0, 2.4, "student\nsmall\ntrained", GREEN, size=10)
    _path(ax, [(2.9, 5.5), (3.5, 5.5), (3.5, 8.6), (4.2, 8.6)])
    _path(ax, [(3.5, 5.5), (3.5, 2.2), (4.2, 2.2)])
    # logits
    _box(ax, 9.6, 8.9, 2.8, 1.0, "teacher logits / T", BLUE, size=9)
    _box(ax, 9.6, 2.4, 2.8, 1.0, "student logits / T", GREEN, size=9)
    _arrow(ax, (8.4, 9.4), (9.6, 9.4))
    _arrow(ax, (7.2, 2.9), (9.6, 2.9))
    _box(ax, 13.5, 8.9, 2.6, 1.0, "softmax → p_T", BLUE, size=9)
    _box(ax, 13.5, 2.4, 2.6, 1.0, "softmax → p_S", GREEN, size=9)
    _arrow(ax, (12.4, 9.4), (13.5, 9.4))
    _arrow(ax, (12.4, 2.9), (13.5, 2.9))
    # loss 1: soft targets
    _box(ax, 16.8, 5.4, 3.0, 1.6, "① soft targets\nT² · KL(p_T ‖ p_S)", RED, size=9, weight="bold")
    _path(ax, [(16.1, 9.4), (18.3, 9.4), (18.3, 7.0)], color=STRONG["red"])
    _path(ax, [(16.1, 2.9), (18.3, 2.9), (18.3, 5.4)], color=STRONG["red"])
    # loss 2: hard labels
    _box(ax, 9.6, 0.2, 3.2, 1.4, "② hard labels\nCE(student logits, y)", ORANGE, size=9, weight="bold")
    _path(ax, [(7.2, 1.6), (8.7, 1.6), (8.7, 0.9), (9.6, 0.9)], color=STRONG["orange"])
    _box(ax, 14.0, 0.4, 1.8, 1.0, "labels y", GREY, size=9)
    _arrow(ax, (14.0, 0.9), (12.8, 0.9), color=STRONG["orange"])
    # loss 3: hidden states
    _box(ax, 8.8, 4.6, 4.2, 1.9, "③ hidden states\nMSE(H_s W_h, H_t) or 1 − cos\n(layers paired by layer_map)",
         PURPLE, size=9, weight="bold")
    _path(ax, [(6.3, 7.0), (6.3, 6.2), (8.8, 6.2)], color=STRONG["purple"], dashed=True)
    ax.text(6.45, 6.55, "H_t", fontsize=9, color=STRONG["purple"])
    _path(ax, [(5.7, 3.4), (5.7, 4.9), (8.8, 4.9)], color=STRONG["purple"], dashed=True)
    ax.text(5.85, 4.1, "H_s", fontsize=9, color=STRONG["purple"])
    ax.text(10.0, 10.75, "L = α·T²·KL(p_T ‖ p_S) + (1 − α)·CE(z_S, y) + β·Σ hidden-state loss",
            ha="center", va="center", fontsize=11, weight="bold")
    ax.text(13.4, 6.3, "gradients reach the\nstudent only (the teacher\nruns once; its outputs\nare stored)", fontsize=9,
            color=STRONG["grey"], va="center")
    return fig


# --------------------------------------------------------------------------------------------- chapter 07
def number_line():
    """Chapter 07: reals on a line, the 4-bit affine grid over a clipping range, rounding and clipping."""
    from minilib.quant.affine import quantize

    lo, hi, bits = -1.0, 2.0, 4
    samples = torch.tensor([-1.45, -0.62, 0.0, 0.47, 1.23, 2.4])
    qt = quantize(samples, bits=bits, symmetric=False, clip=(lo, hi))
    scale, zero = float(qt.scale), int(qt.zero_point)
    back = qt.dequantize()
    fig, ax = plt.subplots(figsize=(12, 4.6))
    ax.set_xlim(-1.75, 2.75)
    ax.set_ylim(-2.5, 2.0)
    ax.axis("off")
    ax.axvspan(lo, hi, ymin=0.3, ymax=0.8, color=YELLOW, zorder=0)
    ax.text(2.72, 1.7, "yellow: the clipping range [lo, hi] = [−1, 2]", fontsize=10, ha="right")
    ax.plot([-1.7, 2.7], [1, 1], color=INK, linewidth=1.2)
    ax.text(-1.72, 1.7, "real values x (float32)", fontsize=10, weight="bold")
    for tick in (-1, 0, 1, 2):
        ax.plot([tick, tick], [0.93, 1.07], color=INK)
        ax.text(tick + 0.02, 0.78, f"{tick}", ha="left", fontsize=9)
    ax.plot([-1.7, 2.7], [-0.6, -0.6], color=INK, linewidth=1.2)
    ax.text(-1.72, -1.15, f"integers q ∈ [0, {2 ** bits - 1}]\n({bits} bits: 16 levels;\nint8 has 256)",
            fontsize=10, weight="bold", va="top")
    for q in range(2 ** bits):
        x = scale * (q - zero)
        ax.plot([x, x], [-0.68, -0.52], color=INK)
        ax.text(x, -0.9, f"{q}", ha="center", fontsize=8, color=STRONG["red"] if q == zero else INK,
                weight="bold" if q == zero else "normal")
        ax.plot([x, x], [-0.52, 0.93], color="#cccccc", linewidth=0.6, zorder=1)
    for x, xq in zip(samples.tolist(), back.tolist()):
        colour = STRONG["red"] if not lo <= x <= hi else STRONG["blue"]
        ax.plot([x], [1], "o", color=colour, zorder=4)
        ax.annotate("", xy=(xq, -0.5), xytext=(x, 0.95), arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.3))
        ax.text(x, 1.2, f"{x:.2f}", ha="center", fontsize=9, color=colour)
    ax.text(0.5, -1.75, f"s = (hi − lo) / (2^b − 1) = {scale:.2f}      z = round(−lo / s) = {zero}\n"
                        "q = clamp(round(x / s) + z, 0, 15)      x̂ = s · (q − z): error ≤ s/2 inside the range",
            ha="center", va="center", fontsize=10, bbox=dict(facecolor="white", edgecolor="#888888"))
    ax.text(-1.5, 0.2, "clipped\nto 0", color=STRONG["red"], fontsize=9, ha="center")
    ax.text(2.5, 0.2, "clipped\nto 15", color=STRONG["red"], fontsize=9, ha="center")
    ax.text(0.04, 0.05, "0.0 → z, exactly", color=STRONG["blue"], fontsize=9, ha="left")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.98, bottom=0.02)
    return fig


SCALE_FILLS = ("#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb", "#fcbba1", "#fff3bf",    # one fill per scale
               "#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#ffe066")


def _scaled_matrix(ax, x, y, rows, cols, scale_of, cell=0.5):
    """A (rows, cols) matrix whose cell (i, j) is filled with the colour of its scale ``scale_of(i, j)``."""
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(Rectangle((x + j * cell, y + (rows - 1 - i) * cell), cell, cell,
                                   facecolor=SCALE_FILLS[scale_of(i, j) % len(SCALE_FILLS)], edgecolor="#999999",
                                   linewidth=0.5))
    ax.add_patch(Rectangle((x, y), cols * cell, rows * cell, fill=False, edgecolor=INK, linewidth=1.2))


def scale_layouts():
    """Chapter 07: which numbers share a scale: per tensor, per output channel (weights), per token (activations),
    per group of inputs (4-bit weights); each colour is one scale."""
    rows, cols, cell = 6, 8, 0.5
    fig, ax = _canvas(27.5, 8.4)
    panels = [
        ("per tensor", "W or x: one scale s", lambda i, j: 0, "1 scale"),
        ("per channel (weights)", "W (out, in): a scale per row", lambda i, j: i, "s_w: (out,)"),
        ("per token (activations)", "x (tokens, in): a scale per row", lambda i, j: i, "s_x: (tokens, 1)"),
        ("per group (4-bit weights)", "W (out, in): a scale per g inputs", lambda i, j: 2 * i + j // 4,
         "(out, in / g); here g = 4"),
    ]
    for k, (title, shape, scale_of, count) in enumerate(panels):
        x0 = 0.6 + k * 6.8
        ax.text(x0 + cols * cell / 2 + 0.5, 7.8, title, ha="center", fontsize=11, weight="bold")
        ax.text(x0 + cols * cell / 2 + 0.5, 7.2, shape, ha="center", fontsize=9)
        _scaled_matrix(ax, x0, 3.4, rows, cols, scale_of, cell)
        if k:                                                                # the scales beside the rows
            groups = 2 if k == 3 else 1
            _scaled_matrix(ax, x0 + cols * cell + 0.35, 3.4, rows, groups, lambda i, j: scale_of(i, 4 * j), cell)
            ax.text(x0 + cols * cell + 0.35 + groups * cell / 2, 2.9, "s", ha="center", fontsize=10, style="italic")
        else:
            ax.add_patch(Rectangle((x0 + cols * cell + 0.35, 3.4 + (rows - 1) * cell / 2), cell, cell,
                                   facecolor=SCALE_FILLS[0], edgecolor=INK, linewidth=0.8))
            ax.text(x0 + cols * cell + 0.6, 2.9, "s", ha="center", fontsize=10, style="italic")
        ax.text(x0 + cols * cell / 2 + 0.5, 2.2, count, ha="center", fontsize=9, color=STRONG["grey"])
    ax.text(0.6, 1.4, "per tensor: the largest value sets the step of all   ·   per channel × per token: "
                      "y[m, n] ≈ s_x[m] · s_w[n] · Σ_k x_q[m, k] W_q[n, k], both scales outside the integer sum",
            fontsize=9.5, va="center")
    ax.text(0.6, 0.6, "a scale per input column k would sit inside the sum: that is why activations get one per token, "
                      "and an outlier feature (a column) still stretches every token's step",
            fontsize=9.5, va="center")
    return fig


def int8_gemm():
    """Chapter 07: the W8A8 linear layer's dataflow, which steps are integer and which are float."""
    fig, ax = _canvas(21, 8.6)
    _box(ax, 0.3, 5.6, 3.0, 1.4, "x  (M×K)\nfloat32", GREY, size=9)
    _box(ax, 4.3, 5.6, 3.8, 1.4, "quantize_rows\ns_x = max|x_m| / 127\nround(x / s_x)", ORANGE, size=9)
    _box(ax, 9.2, 6.2, 2.8, 1.2, "x_q  (M×K)  int8", BLUE, size=9)
    _box(ax, 9.2, 4.6, 2.8, 1.0, "s_x  (M×1)", YELLOW, size=9)
    _box(ax, 0.3, 1.2, 3.0, 1.4, "W  (N×K)\nfloat32", GREY, size=9)
    _box(ax, 4.3, 1.2, 3.8, 1.4, "per-channel quantize\nonce, when the model\nis converted", ORANGE, size=9)
    _box(ax, 9.2, 2.3, 2.8, 1.2, "W_q  (N×K)  int8", BLUE, size=9)
    _box(ax, 9.2, 0.6, 2.8, 1.0, "s_w  (N)", YELLOW, size=9)
    _box(ax, 13.2, 3.9, 3.0, 2.2, "torch._int_mm\nΣ_k x_q·W_q\nint8 × int8 → int32", BLUE, size=9, weight="bold")
    _box(ax, 13.2, 0.6, 3.0, 1.7, "acc  (M×N)\nint32, exact", BLUE, size=9)
    _box(ax, 17.4, 3.0, 3.3, 2.6, "rescale\ny = acc · s_x · s_w\n+ b", ORANGE, size=9, weight="bold")
    _box(ax, 17.4, 0.6, 3.3, 1.4, "y  (M×N)\nfloat32", GREY, size=9)
    _arrow(ax, (3.3, 6.3), (4.3, 6.3))
    _arrow(ax, (8.1, 6.6), (9.2, 6.8))
    _arrow(ax, (8.1, 5.9), (9.2, 5.1))
    _arrow(ax, (3.3, 1.9), (4.3, 1.9))
    _arrow(ax, (8.1, 2.3), (9.2, 2.9))
    _arrow(ax, (8.1, 1.5), (9.2, 1.1))
    _arrow(ax, (12.0, 6.8), (13.2, 5.6), color=STRONG["blue"], width=1.8)
    _arrow(ax, (12.0, 2.9), (13.2, 4.3), color=STRONG["blue"], width=1.8)
    _arrow(ax, (14.7, 3.9), (14.7, 2.3), color=STRONG["blue"], width=1.8)
    _arrow(ax, (16.2, 1.45), (17.4, 4.2), color=STRONG["blue"], width=1.8)
    _path(ax, [(12.0, 5.1), (12.6, 5.1), (12.6, 7.7), (19.05, 7.7), (19.05, 5.6)], color=STRONG["orange"])
    _path(ax, [(12.0, 1.1), (12.6, 1.1), (12.6, 0.25), (16.8, 0.25), (16.8, 3.3), (17.4, 3.3)], color=STRONG["orange"])
    _arrow(ax, (19.05, 3.0), (19.05, 2.0))
    ax.text(10.6, 8.2, "y[m, n] ≈ s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k] + b[n]", ha="center",
            fontsize=11, weight="bold")
    ax.add_patch(Rectangle((0.3, 7.55), 0.5, 0.3, facecolor=BLUE, edgecolor=INK))
    ax.text(0.95, 7.7, "integer", va="center", fontsize=9)
    ax.add_patch(Rectangle((2.4, 7.55), 0.5, 0.3, facecolor=ORANGE, edgecolor=INK))
    ax.text(3.05, 7.7, "float work: extra passes over memory", va="center", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------- chapter 08
def sparsity_patterns():
    """Chapter 08: the same weight pruned to 50% three ways: unstructured, 2:4 (N:M), whole rows (structured)."""
    from minilib.prune import magnitude_mask, nm_mask

    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    row_norms = weight.norm(dim=1)
    rows_kept = torch.zeros(8, dtype=torch.bool)
    rows_kept[row_norms.argsort(descending=True)[:4]] = True
    patterns = {
        "unstructured (magnitude, 50%)\nzeros anywhere: same dense kernel,\nno speed-up without a sparse format":
            magnitude_mask(weight, 0.5),
        "2:4 (N:M)\n2 of every 4 in a row kept: up to 2×\non sparse tensor cores (GPUs since Ampere)": nm_mask(weight, 2, 4),
        "structured (whole rows = neurons)\nrows removed: a smaller dense\nmatrix, faster on any hardware":
            rows_kept[:, None].expand(8, 16),
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.7))
    for ax, (title, mask) in zip(axes, patterns.items()):
        kept = (weight.abs() * mask).numpy()
        ax.imshow(kept, cmap="Blues", vmin=-1.2 * float(weight.abs().max()), vmax=float(weight.abs().max()),
                  interpolation="nearest")
        for i, j in (~mask).nonzero().tolist():
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="#dddddd", hatch="///",
                                   linewidth=0))
        ax.set_xticks([x - 0.5 for x in range(17)], minor=True)
        ax.set_yticks([x - 0.5 for x in range(9)], minor=True)
        ax.grid(which="minor", color="#999999", linewidth=0.5)
        if "2:4" in title:
            for x in range(4, 16, 4):
                ax.axvline(x - 0.5, color=STRONG["red"], linewidth=1.6)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel(f"input features; {int(mask.sum())}/{mask.numel()} weights kept", fontsize=9)
    axes[0].set_ylabel("output neurons", fontsize=9)
    fig.suptitle("One 8×16 weight, half of it pruned three ways (blue: kept, shade = |w|; hatched: zero)",
                 fontsize=11)
    fig.subplots_adjust(left=0.03, right=0.99, top=0.72, bottom=0.08, wspace=0.12)
    return fig


def head_removal():
    """Chapter 08: prune.prune_heads on a 4-head layer: heads 1 and 3 lose their rows of W_q, W_k, W_v and columns of W_o."""
    from minilib import prune
    from minilib.transformer import Encoder, TransformerConfig

    heads, head_dim, removed = 4, 3, [1, 3]
    d = heads * head_dim
    model = Encoder(TransformerConfig(vocab_size=8, d_model=d, n_heads=heads, n_layers=1, d_ff=2 * d))
    attn = model.layers[0].attn
    names = {"W_q": attn.q_proj, "W_k": attn.k_proj, "W_v": attn.v_proj, "W_o": attn.out_proj}
    before = {name: linear.weight.detach().clone() for name, linear in names.items()}
    prune.prune_heads(model, {0: removed})
    after = {name: linear.weight.detach() for name, linear in
             {"W_q": attn.q_proj, "W_k": attn.k_proj, "W_v": attn.v_proj, "W_o": attn.out_proj}.items()}

    def origin(name):
        """The head each kept row (W_q, W_k, W_v) or column (W_o) of the pruned weight came from."""
        old, new = (before[name], after[name]) if name != "W_o" else (before[name].T, after[name].T)
        return [next(i for i in range(d) if torch.equal(old[i], row)) // head_dim for row in new]

    fills = [BLUE, GREEN, ORANGE, PURPLE]
    cell = 0.3
    fig, ax = _canvas(20.4, 14.6)

    def matrix(x, top, heads_of_lines, by_rows, struck=()):
        """A weight hanging from ``top``: each row (or column) in its head's colour; struck heads crossed out in red."""
        lines = len(heads_of_lines)
        rows, cols = (lines, d) if by_rows else (d, lines)
        for line, head in enumerate(heads_of_lines):
            for k in range(d):
                i, j = (line, k) if by_rows else (k, line)
                gone = head in struck
                ax.add_patch(Rectangle((x + j * cell, top - (i + 1) * cell), cell, cell,
                                       facecolor="white" if gone else fills[head],
                                       edgecolor="#e8a0a0" if gone else "#aaaaaa", linewidth=0.4,
                                       hatch="xxx" if gone else None))
        ax.add_patch(Rectangle((x, top - rows * cell), cols * cell, rows * cell, fill=False, edgecolor=INK,
                               linewidth=1.1))
        return cols * cell, rows * cell

    every = [line // head_dim for line in range(d)]
    for x, name in zip([0.6, 5.4, 10.2, 15.0], names):
        by_rows = name != "W_o"
        w, h = matrix(x, 12.0, every, by_rows, struck=removed)
        ax.text(x + w / 2, 12.2, f"{name} ({d} × {d})", ha="center", va="bottom", fontsize=10, weight="bold")
        ax.text(x + w / 2, 12.0 - h - 0.15, "rows: a block of 3 per head" if by_rows else
                "columns: a block of 3 per head", ha="center", va="top", fontsize=8, color=STRONG["grey"])
        kept = origin(name)
        w2, _ = matrix(x, 6.4, kept, by_rows)
        shape = f"({len(kept)} × {d})" if by_rows else f"({d} × {len(kept)})"
        ax.text(x + w2 / 2, 6.6, f"{name} {shape}", ha="center", va="bottom", fontsize=10, weight="bold")
    _arrow(ax, (10.0, 7.9), (10.0, 7.15), width=1.8)
    ax.text(10.25, 7.55, f"prune.prune_heads(model, {{0: {removed}}})", va="center", fontsize=9.5,
            family="DejaVu Sans Mono")
    for head in range(heads):
        gone = head in removed
        ax.add_patch(Rectangle((0.6 + head * 3.8, 13.35), 0.4, 0.4, facecolor="white" if gone else fills[head],
                               edgecolor=STRONG["red"] if gone else INK, hatch="xxx" if gone else None))
        ax.text(1.15 + head * 3.8, 13.55, f"head {head}" + (" (removed)" if gone else ""), va="center", fontsize=9)
    ax.text(0.6, 14.1, f"Removing heads {removed[0]} and {removed[1]} of a layer of {heads} heads of {head_dim} "
                       f"(d_model = {d}; nn.Linear weights are out × in)", fontsize=11, weight="bold")
    ax.text(10.2, 4.0, "every matmul of the layer\nshrinks: Q, K, V have 6\nfeatures, W_o reads 6", ha="center",
            va="top", fontsize=9, color=STRONG["grey"])
    minilm = 4 * 32 * 384
    ax.text(0.6, 1.6, f"In MiniLM (12 heads of 32, d_model = 384) each head removed takes 32 rows of W_q, W_k, W_v "
                      f"(with their biases)\nand 32 columns of W_o, each of 384 weights: {minilm:,} weights per head "
                      "and layer.", va="center", fontsize=9.5)
    return fig


# --------------------------------------------------------------------------------------------- chapter 09
def grouped_and_bottleneck():
    """Chapter 09: a dense vs a block-diagonal (grouped) weight with the channel shuffle, and MobileBERT's bottleneck."""
    from minilib.arch import GroupedLinear, channel_shuffle

    d, g = 8, 4
    grouped = GroupedLinear(d, d, g)
    block_diagonal = torch.block_diag(*grouped.weight.detach().transpose(1, 2))      # (d_out, d_in) as nn.Linear
    dense = torch.randn(d, d, generator=torch.Generator().manual_seed(1))
    order = channel_shuffle(torch.arange(d), g).tolist()                              # new position k takes channel
    fig, ax = _canvas(24, 9)
    cell = 0.5
    _grid(ax, 0.6, 2.5, dense, cell=cell, cmap="Blues")
    ax.text(0.6 + d * cell / 2, 7.0, f"dense W ({d}×{d})\n{d * d} weights", ha="center", fontsize=10)
    _grid(ax, 6.0, 2.5, block_diagonal, cell=cell, cmap="Greens")
    ax.text(6.0 + d * cell / 2, 7.0, f"grouped, g = {g}: block-diagonal\n{d * d // g} weights (1/g)", ha="center",
            fontsize=10)
    ax.text(6.0 + d * cell / 2, 1.6, "group k only sees group k", ha="center", fontsize=9, color=STRONG["grey"])
    # channel shuffle: from groups (rows of 2) to interleaved
    sx, top, bottom = 11.2, 6.3, 2.9
    colours = [STRONG["blue"], STRONG["green"], STRONG["orange"], STRONG["purple"]]
    for c in range(d):
        group = c // (d // g)
        ax.add_patch(Rectangle((sx + c * 0.55, top), 0.45, 0.45, facecolor=colours[group], edgecolor=INK))
        new = order.index(c)
        ax.add_patch(Rectangle((sx + new * 0.55, bottom - 0.45), 0.45, 0.45, facecolor=colours[group],
                               edgecolor=INK))
        _arrow(ax, (sx + c * 0.55 + 0.225, top), (sx + new * 0.55 + 0.225, bottom), color=colours[group], width=1.0)
    ax.text(sx + d * 0.55 / 2, 7.0, "channel shuffle\n(g, c) → (c, g)", ha="center", fontsize=10)
    ax.text(sx + d * 0.55 / 2, 1.6, "next grouped layer: each group\nnow mixes all previous groups", ha="center",
            fontsize=9, color=STRONG["grey"], va="center")
    # bottleneck
    bx = 17.3
    ax.text(bx + 3.2, 8.3, "bottleneck layer (MobileBERT)", ha="center", fontsize=11, weight="bold")
    _box(ax, bx + 0.2, 0.3, 6.0, 0.7, "x: residual stream, width 512", GREY, size=9)
    _arrow(ax, (bx + 3.2, 1.0), (bx + 3.2, 1.5))
    _box(ax, bx + 1.2, 1.5, 4.0, 0.7, "down: 512 → 128", ORANGE, size=9)
    _arrow(ax, (bx + 3.2, 2.2), (bx + 3.2, 2.6))
    _box(ax, bx + 2.0, 2.6, 2.4, 1.8, "encoder layer\nat width 128\n(attention\n+ FFN)", BLUE, size=9)
    _arrow(ax, (bx + 3.2, 4.4), (bx + 3.2, 4.8))
    _box(ax, bx + 1.2, 4.8, 4.0, 0.7, "up: 128 → 512", ORANGE, size=9)
    _arrow(ax, (bx + 3.2, 5.5), (bx + 3.2, 5.92))
    _plus(ax, bx + 3.2, 6.2)
    _path(ax, [(bx + 0.6, 1.0), (bx + 0.6, 6.2), (bx + 2.92, 6.2)], color=STRONG["red"], width=1.6)
    _arrow(ax, (bx + 3.2, 6.48), (bx + 3.2, 6.8))
    _box(ax, bx + 1.2, 6.8, 4.0, 0.7, "LayerNorm", YELLOW, size=9)
    return fig


# --------------------------------------------------------------------------------------------- chapter 10
def deployment_pipeline():
    """Chapter 10: from a Hugging Face checkpoint to a served model."""
    fig, ax = _canvas(23, 7.6)
    steps = [(0.3, "Hugging Face\ncheckpoint\nall-MiniLM-L6-v2\n(AutoModel…)", GREY),
             (4.7, "fine-tune\non the task\n(Trainer or\nminilib.support.train.fit)", BLUE),
             (9.1, "compress\ndistil (06)\nprune (08)\nquantize (07)", GREEN),
             (13.5, "export\ntorch.onnx.export\n→ model.onnx\n(dynamic batch, seq)", ORANGE)]
    for x, text, fill in steps:
        _box(ax, x, 2.6, 3.6, 2.4, text, fill, size=9.5)
    for x in (3.9, 8.3, 12.7):
        _arrow(ax, (x, 3.8), (x + 0.8, 3.8), width=1.8)
    _box(ax, 18.6, 5.1, 4.1, 1.9, "ONNX Runtime\nin the app's process\n(phone, edge box)", PURPLE, size=9)
    _box(ax, 18.6, 2.8, 4.1, 1.9, "Triton Inference Server\nconfig.pbtxt,\ndynamic batching", PURPLE, size=9)
    _box(ax, 18.6, 0.5, 4.1, 1.9, "TensorRT, OpenVINO\nimport the ONNX file,\ncompile for their chips", PURPLE, size=9)
    for y in (6.05, 3.75, 1.45):
        _path(ax, [(17.1, 3.8), (17.85, 3.8), (17.85, y), (18.6, y)], color=STRONG["purple"], width=1.5)
    ax.text(22.7, 7.25, "serve: no PyTorch needed", ha="right", fontsize=10, weight="bold")
    ax.text(8.5, 5.6, "in PyTorch (Python needed)", ha="center", fontsize=10, color=STRONG["grey"])
    ax.plot([0.3, 17.1], [5.3, 5.3], color=STRONG["grey"], linewidth=0.8)
    ax.text(8.5, 1.6, "each step is measured in the chapter's before/after table: size, latency, accuracy",
            ha="center", fontsize=9, color=STRONG["grey"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 11
BLEU_EXAMPLE = ("the cat the cat sat on the mat", "the cat sat on the mat")      # (hypothesis, reference)
ROUGE_EXAMPLE = ("a cat sat on the red mat", "the cat sat on the mat")


def _tokens(ax, x, y, words, fills, width=1.25, label=""):
    """A sentence as a row of word boxes from (x, y); returns the x of each box's centre."""
    ax.text(x - 0.2, y + 0.35, label, ha="right", va="center", fontsize=10, weight="bold")
    centres = []
    for i, (word, fill) in enumerate(zip(words, fills)):
        centres.append(_box(ax, x + i * (width + 0.15), y, width, 0.7, word, fill, size=10)[0])
    return centres


def bleu_clipping():
    """Chapter 11: BLEU's clipped unigram and bigram counts on one sentence, by minilib.metrics."""
    from minilib.metrics import bleu, ngram_counts

    hypothesis, reference = (s.split() for s in BLEU_EXAMPLE)
    fig, ax = _canvas(22, 11.3)
    ax.text(11, 10.7, "BLEU's clip: a hypothesis n-gram counts at most as often as it occurs in the reference",
            ha="center", fontsize=12, weight="bold")
    unigram_clip = ngram_counts(reference, 1)
    seen, fills = {}, []
    for word in hypothesis:                                   # the first occurrences up to the clip count, the rest not
        seen[word] = seen.get(word, 0) + 1
        fills.append(GREEN if seen[word] <= unigram_clip[(word,)] else RED)
    _tokens(ax, 4.2, 9.1, reference, [GREY] * len(reference), label="reference")
    _tokens(ax, 4.2, 7.9, hypothesis, fills, label="hypothesis")
    ax.text(4.2, 7.35, "green: counted; red: beyond the reference's count (which copy is red does not matter, only "
                       "how many)", fontsize=9, color=STRONG["grey"], va="center")
    precisions = bleu([BLEU_EXAMPLE[0]], [BLEU_EXAMPLE[1]], max_order=2).precisions
    for n, x in ((1, 0.6), (2, 11.4)):
        hyp, ref = ngram_counts(hypothesis, n), ngram_counts(reference, n)
        rows = [(" ".join(g), count, ref[g], min(count, ref[g])) for g, count in hyp.items()]
        matches, total = sum(r[3] for r in rows), sum(hyp.values())
        assert abs(100 * matches / total - precisions[n - 1]) < 1e-9      # the table is what bleu() counts
        top, widths = 6.5, (3.6, 2.0, 2.0, 2.4)
        headers = (f"{n}-gram", "in hyp.", "in ref.", "clipped: min")
        for k, (header, width) in enumerate(zip(headers, widths)):
            left = x + sum(widths[:k])
            ax.text(left + width / 2, top, header, ha="center", va="center", fontsize=9.5, weight="bold")
        ax.plot([x, x + sum(widths)], [top - 0.35] * 2, color=INK, linewidth=1.0)
        for r, row in enumerate(rows):
            y = top - 0.8 - r * 0.62
            if row[3] < row[1]:                                  # clipped (red), or not in the reference (grey)
                ax.add_patch(Rectangle((x, y - 0.29), sum(widths), 0.58, facecolor=RED if row[2] else GREY,
                                       edgecolor="none"))
            for k, (value, width) in enumerate(zip(row, widths)):
                ax.text(x + sum(widths[:k]) + width / 2, y, str(value), ha="center", va="center", fontsize=9.5,
                        family="DejaVu Sans Mono" if k == 0 else None, weight="bold" if k == 3 else "normal")
        y = top - 0.8 - len(rows) * 0.62
        ax.plot([x, x + sum(widths)], [y + 0.3] * 2, color=INK, linewidth=1.0)
        ax.text(x + widths[0] / 2, y - 0.05, "sum", ha="center", va="center", fontsize=9.5, weight="bold")
        ax.text(x + widths[0] + widths[1] / 2, y - 0.05, str(total), ha="center", va="center", fontsize=9.5)
        ax.text(x + sum(widths[:3]) + widths[3] / 2, y - 0.05, str(matches), ha="center", va="center", fontsize=9.5,
                weight="bold")
        unclipped = sum(count for g, count in hyp.items() if ref[g])
        ax.text(x + sum(widths) / 2, y - 0.8, f"p{n} = {matches}/{total} = {100 * matches / total:.1f}%", ha="center",
                va="center", fontsize=10.5, weight="bold")
        ax.text(x + sum(widths) / 2, y - 1.4, f"(without the clip: {unclipped}/{total})", ha="center", va="center",
                fontsize=9, color=STRONG["grey"])
    ax.add_patch(Rectangle((0.6, 0.35), 0.5, 0.35, facecolor=RED, edgecolor="none"))
    ax.text(1.25, 0.52, "clipped: occurs more often than in the reference", va="center", fontsize=9)
    ax.add_patch(Rectangle((9.0, 0.35), 0.5, 0.35, facecolor=GREY, edgecolor="none"))
    ax.text(9.65, 0.52, "not in the reference: counts 0", va="center", fontsize=9)
    return fig


def lcs_table():
    """Chapter 11: ROUGE-L's dynamic-programming table, each entry minilib.metrics.lcs_length of two prefixes."""
    from minilib.metrics import lcs_length, rouge_l

    hypothesis, reference = (s.split() for s in ROUGE_EXAMPLE)
    rows, cols = len(hypothesis), len(reference)
    table = [[lcs_length(hypothesis[:i], reference[:j]) for j in range(cols + 1)] for i in range(rows + 1)]
    path, (i, j) = set(), (rows, cols)                              # walk back from the corner: where the LCS came from
    while i and j:
        if hypothesis[i - 1] == reference[j - 1]:
            path.add((i, j))
            i, j = i - 1, j - 1
        elif table[i - 1][j] >= table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    common = [hypothesis[i - 1] for i, _ in sorted(path)]
    score = rouge_l(hypothesis, reference)
    assert len(common) == table[rows][cols] == round(score.recall * cols)
    cell, x0, top = 1.0, 2.4, 8.9
    fig, ax = _canvas(20.5, 10.5)
    ax.text(10.25, 9.95, "ROUGE-L's table: L[i][j] = LCS of the first i hypothesis words and "
                                              "the first j reference words", ha="center", fontsize=11.5, weight="bold")
    for j in range(cols + 1):
        ax.text(x0 + (j + 0.5) * cell, top + 0.35, reference[j - 1] if j else "", ha="center", va="bottom",
                fontsize=10, weight="bold")
    for i in range(rows + 1):
        ax.text(x0 - 0.2, top - (i + 0.5) * cell, hypothesis[i - 1] if i else "", ha="right", va="center",
                fontsize=10, weight="bold")
        for j in range(cols + 1):
            match = i and j and hypothesis[i - 1] == reference[j - 1]
            fill = GREEN if (i, j) in path else YELLOW if match else GREY if not (i and j) else "white"
            ax.add_patch(Rectangle((x0 + j * cell, top - (i + 1) * cell), cell, cell, facecolor=fill,
                                   edgecolor="#999999", linewidth=0.6))
            ax.text(x0 + (j + 0.5) * cell, top - (i + 0.5) * cell, str(table[i][j]), ha="center", va="center",
                    fontsize=10, weight="bold" if (i, j) in path else "normal")
    ax.text(x0 - 0.2, top + 0.35, "hyp. ↓  ref. →", ha="right", va="bottom", fontsize=8.5, color=STRONG["grey"])
    right = x0 + (cols + 1) * cell + 0.8
    ax.text(right, 8.2, "L[i][j] = L[i−1][j−1] + 1          if the words match\n"
                        "L[i][j] = max(L[i−1][j], L[i][j−1])   otherwise", fontsize=10, va="center",
            family="DejaVu Sans Mono")
    legend = [(YELLOW, "the words match: the diagonal + 1"),
              (GREEN, "a match on the longest common subsequence"),
              (GREY, "an empty prefix: 0")]
    for k, (fill, text) in enumerate(legend):
        ax.add_patch(Rectangle((right, 6.7 - k * 0.7), 0.45, 0.45, facecolor=fill, edgecolor="#999999"))
        ax.text(right + 0.65, 6.92 - k * 0.7, text, va="center", fontsize=9.5)
    ax.text(right, 4.3, f"LCS = \"{' '.join(common)}\": {len(common)} words, in order, gaps allowed",
            fontsize=10, weight="bold", va="center")
    ax.text(right, 3.0, f"P = LCS / |hyp| = {len(common)}/{rows} = {score.precision:.3f}\n"
                        f"R = LCS / |ref| = {len(common)}/{cols} = {score.recall:.3f}\n"
                        f"F = 2PR / (P + R) = {score.fmeasure:.3f}", fontsize=10, va="center")
    ax.text(right, 1.5, "the answer is the bottom-right corner (minilib.metrics.lcs_length keeps\none row of this "
                        "table at a time); rouge_l divides it by the two lengths", fontsize=9,
            va="center", color=STRONG["grey"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 13
def kv_cache():
    """Chapter 13: the KV cache of one layer through a prefill and two decoding steps."""
    fig, ax = _canvas(22, 10.2)
    cell, x0, max_len = 0.85, 5.0, 12
    stages = [("prefill: the prompt \"The cat\"\nin one pass (7 tokens)", 7, 7),
              ("step 1: one new token\n(the model runs on 1 token)", 8, 1),
              ("step 2: one new token", 9, 1)]
    for row, (label, length, new) in enumerate(stages):
        y = 7.4 - row * 3.1
        ax.text(0.3, y + 0.85, label, fontsize=9.5, va="center")
        for name, dy, fill, strong in (("K", 0.9, BLUE, STRONG["blue"]), ("V", 0.0, GREEN, STRONG["green"])):
            ax.text(x0 - 0.35, y + dy + cell / 2, name, fontsize=11, weight="bold", ha="right", va="center")
            for j in range(max_len):
                stored, fresh = j < length, length - new <= j < length
                ax.add_patch(Rectangle((x0 + j * cell, y + dy), cell, cell * 0.95, linewidth=1.4 if fresh else 0.6,
                                       facecolor=fill if stored else "white", edgecolor=strong if fresh else "#bbbbbb"))
                if stored:
                    ax.text(x0 + j * cell + cell / 2, y + dy + cell * 0.47, f"{name.lower()}{j}", ha="center",
                            va="center", fontsize=7.5)
        ax.annotate("", xy=(x0 + length * cell, y + 1.95), xytext=(x0 + length * cell, y + 2.45),
                    arrowprops=dict(arrowstyle="-|>", color=STRONG["red"], lw=1.4))
        ax.text(x0 + length * cell + 0.1, y + 2.25, f"length = {length}", color=STRONG["red"], fontsize=9)
        q = x0 + max_len * cell + 0.6
        _box(ax, q, y + 0.35, 2.4, 1.2, f"q{length - 1}" if new == 1 else f"q0 … q{length - 1}", ORANGE, size=10)
        _arrow(ax, (q, y + 0.95), (x0 + length * cell + 0.05, y + 0.95), color=STRONG["orange"])
        ax.text(q + 2.6, y + 0.95, "attends over\nevery stored\nposition" if new == 1 else "causal: query i\nsees keys ≤ i",
                fontsize=8.5, va="center", color=STRONG["grey"])
    ax.text(x0, 0.25, "preallocated for max_len positions (white: empty); each step writes one column of keys and "
                      "values and reads all of them", fontsize=9, color=STRONG["grey"])
    return fig


def grouped_heads():
    """Chapter 13: 8 query heads reading 8, 2 or 1 key/value heads, and the cache each needs."""
    fig, ax = _canvas(22, 9.6)
    colours = [STRONG["blue"], STRONG["green"], STRONG["orange"], STRONG["purple"], STRONG["red"], "#4a5568",
               "#b7791f", "#2c7a7b"]
    layouts = [("multi-head (H_kv = 8)", 8), ("grouped-query (H_kv = 2)", 2), ("multi-query (H_kv = 1)", 1)]
    for col, (title, n_kv) in enumerate(layouts):
        x = 0.4 + col * 7.3
        ax.text(x + 3.2, 9.0, title, ha="center", fontsize=11, weight="bold")
        group = 8 // n_kv
        for h in range(8):
            _box(ax, x + h * 0.8, 7.0, 0.65, 0.9, f"q{h}", BLUE, size=8)
        width = 6.4 / n_kv
        for j in range(n_kv):
            kw = min(width, 1.6) - 0.15
            kx = x + j * width + (width - kw) / 2
            ax.add_patch(Rectangle((kx, 3.6), kw, 1.0, facecolor=colours[j] + "55", edgecolor=colours[j], lw=1.4))
            ax.text(kx + kw / 2, 4.1, f"K,V {j}" if n_kv > 1 else "K,V", ha="center", va="center", fontsize=8)
            for h in range(j * group, (j + 1) * group):
                _arrow(ax, (x + h * 0.8 + 0.325, 7.0), (kx + kw / 2, 4.6), color=colours[j], width=1.0)
        ax.text(x + 3.2, 3.05, f"each K,V head serves {group} query head{'s' if group > 1 else ''}", ha="center",
                fontsize=9, color=STRONG["grey"])
        ax.add_patch(Rectangle((x, 1.75), 6.4 * n_kv / 8, 0.6, facecolor=GREY, edgecolor=INK))
        ax.text(x, 1.35, "cache: 2·L·B·8·T·d numbers" if n_kv == 8 else f"cache: {n_kv}/8 of multi-head's",
                fontsize=9, va="center")
    ax.text(11, 0.55, "the query heads of a group read the same stored keys and values: fold the group into the query "
                      "rows,\n(B, H_kv, group·n_q, d) against (B, H_kv, T, d), instead of copying K and V for every "
                      "query head at every step", ha="center", va="center", fontsize=9, color=STRONG["grey"])
    return fig


def q4_0_block():
    """Chapter 13: one q4_0 block of 32 weights in its 18 bytes, with the numbers ``minilib.quant`` computes."""
    from minilib.quant.blocks import block_codes, dequantize_blocks, quantize_blocks

    w = torch.randn(1, 32, generator=torch.Generator().manual_seed(4)) * 0.1
    q = quantize_blocks(w, "q4_0")
    codes, scale = block_codes(q)[0], float(q.scales[0, 0])
    largest = float(w[0, w[0].abs().argmax()])
    fig, ax = _canvas(24, 10.4)
    ax.text(12, 9.8, "q4_0: 32 weights → 2 bytes of scale + 16 bytes of 4-bit codes = 18 bytes (4.5 bits per weight)",
            ha="center", fontsize=11, weight="bold")
    cell = 0.7
    for j in range(32):
        x = 0.8 + j * cell
        ax.add_patch(Rectangle((x, 7.2), cell, 1.2, facecolor=BLUE if j < 16 else GREEN, edgecolor="#888888", lw=0.6))
        ax.text(x + cell / 2, 8.05, f"{float(w[0, j]):+.2f}"[0] + f"{abs(float(w[0, j])):.2f}"[1:], ha="center",
                va="center", fontsize=6.2, rotation=90)
        ax.text(x + cell / 2, 6.85, f"{int(codes[j]):d}", ha="center", va="center", fontsize=7.5)
    ax.text(0.75, 8.7, "w (32 weights)", fontsize=9)
    ax.text(0.75, 6.35, "q = code − 8 ∈ [−8, 7]", fontsize=9)
    # the 18 bytes
    y = 3.3
    _box(ax, 0.8, y, 2.4, 1.3, f"d (fp16)\n{scale:.5f}", YELLOW, size=9, rounded=False)
    ax.text(2.0, y - 0.4, "bytes 0–1", ha="center", fontsize=8, color=STRONG["grey"])
    for b in range(16):
        x = 3.6 + b * 1.25
        ax.add_patch(Rectangle((x, y), 1.15, 0.65, facecolor=GREEN, edgecolor="#888888"))
        ax.add_patch(Rectangle((x, y + 0.65), 1.15, 0.65, facecolor=BLUE, edgecolor="#888888"))
        ax.text(x + 0.575, y + 0.97, f"{b}", ha="center", va="center", fontsize=7)
        ax.text(x + 0.575, y + 0.32, f"{b + 16}", ha="center", va="center", fontsize=7)
    ax.text(3.6, y - 0.4, "bytes 2–17: byte j holds code j in its low nibble (blue) and code j + 16 in its high "
                          "nibble (green)", fontsize=8, color=STRONG["grey"])
    ax.text(0.8, 1.5, f"m = the weight of largest magnitude, with its sign = {largest:+.4f};   d = m / −8 = {scale:.5f}"
                      "  (stored as float16)", fontsize=9.5)
    ax.text(0.8, 0.7, "code = min(15, trunc(w / d + 8.5)),   w ≈ d · (code − 8):   m lands exactly on −8; its "
                      "opposite, +|m|, would need +8 and is clamped to 7", fontsize=9.5)
    error = float((dequantize_blocks(q) - w).abs().max())
    ax.text(23.2, 5.8, f"largest error\n{error:.4f} ≤ |d| / 2", ha="right", fontsize=9, color=STRONG["grey"])
    return fig


def speculative_round():
    """Chapter 13: one round of speculative decoding: draft k = 4, verify in one pass, keep 2 and a correction."""
    fig, ax = _canvas(24, 11.6)
    ax.text(0.3, 10.9, "1. the draft proposes k = 4 tokens, one cheap pass each", fontsize=10.5, weight="bold")
    _box(ax, 0.4, 9.0, 3.4, 1.1, "… the cat", GREY, size=10)
    drafts = ["sat", "on", "a", "mat"]
    for i, token in enumerate(drafts):
        x = 4.6 + i * 2.6
        _box(ax, x, 9.0, 2.1, 1.1, f"d{i + 1} = {token}", ORANGE, size=9.5)
        _arrow(ax, (x - 0.75 if i else 3.8, 9.55), (x, 9.55), color=STRONG["orange"])
    ax.text(15.4, 9.55, "4 draft passes", fontsize=9, va="center", color=STRONG["grey"])
    ax.text(0.3, 7.9, "2. the target scores [cat, d1 … d4] in ONE pass: its own choices (greedy) or distributions p0 … p4",
            fontsize=10.5, weight="bold")
    targets = ["sat", "on", "the", "rug", "."]
    verdicts = ["keep", "keep", "reject", "(unused)", "(unused)"]
    colours = [GREEN, GREEN, RED, GREY, GREY]
    for i, (token, verdict, fill) in enumerate(zip(targets, verdicts, colours)):
        x = 4.6 + i * 2.6
        _box(ax, x, 5.8, 2.1, 1.1, f"p{i}: {token}", BLUE, size=9.5)
        _box(ax, x, 4.5, 2.1, 0.9, verdict, fill, size=9)
    ax.text(0.4, 6.35, "one target pass\nover 5 positions", fontsize=9, va="center", color=STRONG["grey"])
    ax.text(0.4, 4.95, "d_i = p_(i−1)?\n(sampling: keep with\nprob. min(1, p/q))", fontsize=8.5, va="center",
            color=STRONG["grey"])
    ax.text(0.3, 3.5, "3. keep the agreeing prefix and the target's correction: 3 new tokens for one target pass",
            fontsize=10.5, weight="bold")
    _box(ax, 0.4, 1.9, 3.4, 1.1, "… the cat", GREY, size=10)
    for i, (token, fill) in enumerate((("sat", GREEN), ("on", GREEN), ("the", BLUE))):
        _box(ax, 4.6 + i * 2.6, 1.9, 2.1, 1.1, token, fill, size=10)
    ax.text(12.7, 2.45, "← correction: the target's p2 (sampling: a draw from max(0, p − q))", fontsize=9,
            va="center")
    ax.text(0.3, 0.6, "4. roll both caches back: the target's keeps the keys and values of \"… the cat sat on\" "
                      "(the rejected a, mat are forgotten: truncate); \"the\" is fed next round",
            fontsize=9.5, color=STRONG["red"])
    return fig


# --------------------------------------------------------------------------------------------- chapter 14
def gptq_sweep():
    """Chapter 14: GPTQ's column sweep: columns done, the one rounded now, the errors pushed onto the rest."""
    fig, ax = _canvas(21.5, 7.8)
    rows, cols, cell, x0, y0 = 6, 12, 0.62, 0.4, 1.6
    fills = [GREEN] * 5 + [ORANGE] + [BLUE] * 2 + ["#eef4fb"] * 4
    for j, fill in enumerate(fills):
        for i in range(rows):
            ax.add_patch(Rectangle((x0 + j * cell, y0 + i * cell), cell, cell, facecolor=fill, edgecolor="#999999",
                                   linewidth=0.6))
    ax.add_patch(Rectangle((x0, y0), cols * cell, rows * cell, fill=False, edgecolor=INK, linewidth=1.2))
    for start in (0, 4, 8):                                                  # blocks of 4 columns (128 in practice)
        left, right = x0 + start * cell, x0 + (start + 4) * cell
        ax.plot([left + 0.05, left + 0.05, right - 0.05, right - 0.05], [y0 - 0.25, y0 - 0.4, y0 - 0.4, y0 - 0.25],
                color=STRONG["grey"], linewidth=1.2)
    ax.text(x0 + 6 * cell, y0 - 0.85, "lazy batches: blocks of B columns (B = 128)", ha="center", fontsize=9,
            color=STRONG["grey"])
    ax.text(x0, y0 + rows * cell + 1.5, "W (out × in): all rows at once, column by column →", fontsize=10,
            weight="bold")
    q = x0 + 5.5 * cell
    _path(ax, [(q, y0 + rows * cell), (q, y0 + rows * cell + 1.0), (x0 + 6.9 * cell, y0 + rows * cell + 1.0),
               (x0 + 6.9 * cell, y0 + rows * cell)], color=STRONG["orange"], width=1.6)
    _path(ax, [(q, y0 + rows * cell + 1.0), (x0 + 10 * cell, y0 + rows * cell + 1.0),
               (x0 + 10 * cell, y0 + rows * cell)], color=STRONG["blue"], width=1.3, dashed=True)
    legend = [(GREEN, "done: rounded to its group's grid, never touched again"),
              (ORANGE, "column q: rounded now, q = grid.round(w_q)"),
              (BLUE, "rest of its block: e · U[q, q+1:] subtracted at once"),
              ("#eef4fb", "after the block: the block's errors E · U[block, rest], one matmul")]
    for k, (fill, text) in enumerate(legend):
        ax.add_patch(Rectangle((9.0, 6.7 - k * 0.75), 0.5, 0.42, facecolor=fill, edgecolor=INK))
        ax.text(9.7, 6.91 - k * 0.75, text, va="center", fontsize=9.5)
    ax.text(9.0, 2.95, "e = (w_q − q) / U_qq          W[:, q+1:] −= e ⊗ U[q, q+1:]\n"
                      "U: the upper Cholesky factor of (H + λI)⁻¹, H = 2XᵀX, λ = 1% of mean(diag H)\n"
                      "its row q is OBS's H_F⁻¹[q, F] / √H_F⁻¹[q, q] for the columns F still free",
            fontsize=9.5, va="center", bbox=dict(facecolor="white", edgecolor="#888888"))
    ax.text(9.0, 1.0, "round-to-nearest rounds every column on its own; GPTQ lets the columns still free absorb\n"
                      "each rounding error, so the layer's outputs XWᵀ move as little as possible",
            fontsize=9.5, va="center", color=STRONG["grey"])
    return fig


def smoothing():
    """Chapter 14: SmoothQuant's per-channel scales move an activation outlier's range into the weights (α = 0.5)."""
    from minilib.quant.smoothquant import smoothing_scale

    generator = torch.Generator().manual_seed(0)
    x_max = 1 + 2 * torch.rand(16, generator=generator)
    x_max[5] = 40.0                                                          # an outlier feature
    w_max = 0.1 + 0.2 * torch.rand(16, generator=generator)
    s = smoothing_scale(x_max, [w_max[None, :]], alpha=0.5)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.9))
    channels = torch.arange(16)
    for ax, before, after, title in ((axes[0], x_max, x_max / s, "activations: max|X_j| per input channel"),
                                     (axes[1], w_max, w_max * s, "weights: max|W_j| per input channel")):
        ax.bar(channels - 0.2, before, width=0.4, color=STRONG["grey"], label="before")
        ax.bar(channels + 0.2, after, width=0.4, color=STRONG["blue"], label="after smoothing")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("input channel j", fontsize=9)
        ax.set_xticks(channels)
        ax.legend(fontsize=8.5, frameon=False)
    ratio = lambda v: float(v.max() / v.median())
    fig.suptitle(f"SmoothQuant, α = 0.5: s_j = √(max|X_j| / max|W_j|); X / s and W · s keep XWᵀ.\n"
                 f"Across channels, the activations' "
                 f"max/median falls from {ratio(x_max):.0f}× to {ratio(x_max / s):.1f}×, the weights' rises from "
                 f"{ratio(w_max):.1f}× to {ratio(w_max * s):.1f}×", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.78, bottom=0.14, wspace=0.18)
    return fig


def wanda_versus_magnitude():
    """Chapter 14: 50% of a weight pruned by |W| alone and by Wanda's |W|·‖X_j‖, when one input is large."""
    from minilib.prune import magnitude_mask
    from minilib.prune.wanda import wanda_mask

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 12, generator=generator)
    norms = 1 + torch.rand(12, generator=generator)
    norms[4] = 12.0                                                          # input 4 carries large activations
    masks = {"magnitude: prunes the 50% smallest |W_ij| of the layer": magnitude_mask(weight, 0.5),
             "Wanda: prunes the 50% smallest |W_ij| · ‖X_j‖₂ of each row": wanda_mask(weight, norms, 0.5)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 4.8), gridspec_kw={"height_ratios": [1, 3]})
    for column, (title, mask) in enumerate(masks.items()):
        bars, grid = axes[0, column], axes[1, column]
        bars.bar(range(12), norms, color=[STRONG["orange"] if j == 4 else STRONG["grey"] for j in range(12)])
        bars.set_xlim(-0.5, 11.5)
        bars.set_xticks([])
        if column == 0:
            bars.set_ylabel("‖X_j‖₂", fontsize=9)
        bars.set_title(title, fontsize=10)
        grid.imshow((weight.abs() * mask).numpy(), cmap="Blues", vmin=-0.3 * float(weight.abs().max()),
                    interpolation="nearest", aspect="auto")
        for i, j in (~mask).nonzero().tolist():
            grid.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="#dddddd", hatch="///",
                                     linewidth=0))
        grid.set_xticks(range(12))
        grid.set_yticks([])
        grid.set_xlabel(f"input j; column 4 keeps {int(mask[:, 4].sum())} of 8 weights", fontsize=9)
    fig.suptitle("The same 8×12 weight at 50% sparsity (blue: kept, shade = |w|; hatched: pruned)", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.86, bottom=0.1, hspace=0.08, wspace=0.08)
    return fig


DIAGRAMS = {
    "00_roofline.png": roofline,
    "02_tiling.png": tiling,
    "02_multihead_split.png": multihead_split,
    "03_encoder_decoder.png": encoder_decoder,
    "03_teacher_forcing.png": teacher_forcing,
    "04_sparse_masks.png": sparse_masks,
    "05_kernel_trick.png": kernel_trick,
    "05_linear_attention_rnn.png": linear_attention_rnn,
    "06_distillation.png": distillation,
    "07_number_line.png": number_line,
    "07_int8_gemm.png": int8_gemm,
    "07_scale_layouts.png": scale_layouts,
    "08_sparsity_patterns.png": sparsity_patterns,
    "08_head_removal.png": head_removal,
    "09_grouped_bottleneck.png": grouped_and_bottleneck,
    "10_deployment_pipeline.png": deployment_pipeline,
    "11_bleu_clipping.png": bleu_clipping,
    "11_lcs_table.png": lcs_table,
    "13_kv_cache.png": kv_cache,
    "13_grouped_heads.png": grouped_heads,
    "13_q4_0_block.png": q4_0_block,
    "13_speculative_round.png": speculative_round,
    "14_gptq_sweep.png": gptq_sweep,
    "14_smoothing.png": smoothing,
    "14_wanda_versus_magnitude.png": wanda_versus_magnitude,
}
ATTACHED = re.compile(r"!\[[^\]]*\]\(attachment:([^)\s]+)\)")   # ![alt](attachment:name) in a markdown cell


def render(name: str) -> bytes:
    """The diagram ``name`` (a key of :data:`DIAGRAMS`) as PNG bytes, the same bytes on every call."""
    if name not in DIAGRAMS:
        raise ValueError(f"unknown diagram {name!r}; the diagrams are {sorted(DIAGRAMS)}")
    torch.manual_seed(0)                      # layers drawn from the library start from the same weights
    with plt.rc_context(STYLE):
        fig = DIAGRAMS[name]()
        drawn = io.BytesIO()
        fig.savefig(drawn, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
        plt.close(fig)
    image = Image.open(drawn).convert("RGB").quantize(COLOURS, dither=Image.Dither.NONE)
    png = io.BytesIO()
    image.save(png, format="png", optimize=True)
    return png.getvalue()


def attached_names(cell) -> list[str]:
    """The attachments a markdown cell shows, in order: ``["02_tiling.png"]`` for ``![…](attachment:02_tiling.png)``."""
    return ATTACHED.findall(cell.source) if cell.cell_type == "markdown" else []


def embed(notebooks=None, names=None) -> list[Path]:
    """Draw the diagrams that ``notebooks`` (default: the teacher's edition) show and attach them to their cells.

    ``names``: only these diagrams. Returns the notebooks that changed (the others are not rewritten). A cell that
    shows an attachment no diagram draws is an error naming the notebook and the cell.
    """
    unknown = sorted(set(names or ()) - set(DIAGRAMS))
    if unknown:
        raise ValueError(f"unknown diagram(s) {unknown}; the diagrams are {sorted(DIAGRAMS)}")
    drawn, changed = {}, []
    for path in map(Path, notebooks or teacher_notebooks()):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        for index, cell in enumerate(nb.cells):
            for name in attached_names(cell):
                if name not in DIAGRAMS:
                    raise ValueError(f"{path.name}, cell {index + 1} shows attachment:{name}, which no diagram draws "
                                     f"(the diagrams are {sorted(DIAGRAMS)})")
                if names and name not in names:
                    continue
                if name not in drawn:
                    drawn[name] = base64.b64encode(render(name)).decode("ascii")
                cell.setdefault("attachments", {})[name] = {"image/png": drawn[name]}
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def write_png(out, names=None) -> list[Path]:
    """Write the diagrams (or those in ``names``) as PNG files into ``out``, to look at them outside a notebook."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or DIAGRAMS:
        (out / name).write_bytes(render(name))
        written.append(out / name)
    return written
