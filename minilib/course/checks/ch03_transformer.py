"""Checks for chapter 03 (the Transformer): sinusoidal positions, a pre-norm residual block, the warm-up
schedule and gradient clipping by global norm.

The chapter's "build it" check: an encoder layer that, loaded with MiniLM's layer 0, reproduces Hugging Face.
"""
import math

import torch
from torch import nn

import minilib.attention as attention
import minilib.support.train as train
import minilib.transformer as transformer
from minilib.course.checks.core import (
    as_number,
    exercise,
    expect_attribute,
    expect_close,
    expect_tensor,
    expect_tensors,
)
from minilib.course.checks.guards import COURSE, REFERENCE_LAYERS, guarded
from minilib.support.train import lr_multiplier
from minilib.transformer import SinusoidalPositions


@exercise(points=2)
def check_sinusoidal_positions(fn):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), as a (max_len, d) table."""
    sizes = [(4, 4), (50, 16), (7, 6)]
    expected = {size: SinusoidalPositions(*size).table for size in sizes}
    with guarded(fn, [transformer, COURSE],
                 "build the table with sin and cos yourself: minilib's SinusoidalPositions is the reference"):
        got = {size: fn(*size) for size in sizes}
    expect_tensor("sinusoidal_positions(4, 4)", got[4, 4], (4, 4))
    expect_close("position 0 of a (4, 4) table: sin 0 = 0 in even columns, cos 0 = 1 in odd ones", got[4, 4][0],
                 torch.tensor([0.0, 1.0, 0.0, 1.0]), hint="even columns use sin, odd columns cos")
    expect_close("position 1, d = 4: columns sin(1), cos(1), sin(1/100), cos(1/100)", got[4, 4][1],
                 torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]),
                 hint="columns 2i and 2i+1 share the frequency 1 / 10000^(2i/d); here 2i/d = 2/4 for the second pair")
    for size in sizes[1:]:
        expect_close(f"the {size} table against minilib.transformer.SinusoidalPositions", got[size], expected[size],
                     atol=1e-5)


@exercise(points=1)
def check_pre_norm_residual(fn):
    """Pre-norm (GPT-2): x + sublayer(norm(x)), so the residual path carries x untouched."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, generator=generator) * 3 + 1
    norm, sublayer, zero = nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 8)
    with torch.no_grad():
        sublayer.weight.copy_(torch.randn(8, 8, generator=generator))
        nn.init.zeros_(zero.weight)
        nn.init.zeros_(zero.bias)
        expected = x + sublayer(norm(x))
        with guarded(fn, [transformer, COURSE], "write the residual sum yourself"):
            got, got_zero = fn(x, sublayer, norm), fn(x, zero, norm)
    expect_close("with a sublayer that outputs 0 the block must return x itself", got_zero, x,
                 hint="the residual path is the identity; the LayerNorm sits on the branch, before the sublayer")
    expect_close("a LayerNorm and a Linear sublayer on x (2, 5, 8)", got, expected,
                 hint="normalise the sublayer's input, not the sum: x + sublayer(norm(x))")


@exercise(points=2)
def check_warmup_linear(fn):
    """Linear warm-up to the peak over warmup_steps, then linear decay to 0 at total_steps (a multiplier of lr)."""
    total, warmup = 20, 4
    expected = torch.tensor([lr_multiplier(step, total, warmup, "linear") for step in range(total + 1)])
    with guarded(fn, [train, COURSE, torch.optim.lr_scheduler, "transformers"],
                 "write the schedule yourself: a scheduler (the course's lr_multiplier, PyTorch's LambdaLR or "
                 "LinearLR, Hugging Face's get_linear_schedule_with_warmup) computes the answer"):
        got = [fn(step, total, warmup) for step in range(total + 1)]
        no_warmup = fn(0, 10, 0)
    got = torch.tensor([as_number(f"warmup_linear({step}, {total}, {warmup})", value) for step, value in enumerate(got)])
    expect_close("the first steps: (step + 1) / warmup_steps", got[:warmup], expected[:warmup],
                 hint="step is 0-based: the first update already uses 1 / warmup_steps of the peak, not 0")
    expect_close(f"all steps 0…{total} with total_steps={total}, warmup_steps={warmup}", got, expected,
                 hint="after warm-up, progress p = (step − warmup) / (total − warmup) and the multiplier is 1 − p")
    expect_close("no warm-up (warmup_steps=0): start at the peak", torch.tensor(as_number("warmup_linear(0, 10, 0)",
                                                                                         no_warmup)),
                 torch.tensor(1.0), hint="with warmup_steps = 0 skip the warm-up branch (no division by 0)")


@exercise(points=2)
def check_clip_by_global_norm(fn):
    """Scale all gradients by one factor max_norm / ‖g‖ when their global L2 norm ‖g‖ exceeds max_norm."""
    small = [torch.tensor([0.3, 0.4])]
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm √(9 + 16) = 5
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model(torch.randn(4, 6, generator=generator)).pow(2).sum().backward()
    model_grads = [p.grad.clone() for p in model.parameters()]
    nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # the reference clips the real gradients in place
    with guarded(fn, [torch.nn.utils.clip_grad, COURSE],
                 "compute the global norm and the factor yourself: torch.nn.utils.clip_grad_norm_ is the reference"):
        got_small, got, got_model = fn([g.clone() for g in small], 1.0), fn([g.clone() for g in grads], 1.0), \
            fn(model_grads, 0.1)
    got_small = expect_tensors("clip_by_global_norm([one gradient], 1.0)", got_small, 1)
    got = expect_tensors("clip_by_global_norm([two gradients], 1.0)", got, 2)
    got_model = expect_tensors("clip_by_global_norm(a small network's 4 gradients, 0.1)", got_model, 4)
    expect_close("a gradient of norm 0.5 with max_norm=1: unchanged", got_small[0], small[0],
                 hint="only scale when the norm is larger than max_norm")
    expect_close("gradients [3, 0] and [[0], [4]] (global norm 5) with max_norm=1: first", got[0],
                 torch.tensor([0.6, 0.0]), hint="one factor for all tensors: max_norm / global norm = 1/5")
    expect_close("… second", got[1], torch.tensor([[0.0], [0.8]]),
                 hint="the global norm is √(Σ over all tensors of Σ g²), not each tensor's own norm")
    for (name, p), mine in zip(model.named_parameters(), got_model):
        expect_close(f"a small network's gradient {name} against torch.nn.utils.clip_grad_norm_", mine, p.grad,
                     atol=1e-6)


# --- the "build it" exercise ------------------------------------------------------------

_LAYOUT = {"query": nn.Linear, "key": nn.Linear, "value": nn.Linear, "attn_out": nn.Linear, "attn_norm": nn.LayerNorm,
           "ffn_up": nn.Linear, "ffn_down": nn.Linear, "ffn_norm": nn.LayerNorm}


def _load_bert_layer(layer, theirs):
    """Copy a Hugging Face BertLayer's weights into a layer with the exercise's attribute names."""
    attention_ = theirs.attention
    sources = {"query": attention_.self.query, "key": attention_.self.key, "value": attention_.self.value,
               "attn_out": attention_.output.dense, "attn_norm": attention_.output.LayerNorm,
               "ffn_up": theirs.intermediate.dense, "ffn_down": theirs.output.dense,
               "ffn_norm": theirs.output.LayerNorm}
    for name, kind in _LAYOUT.items():
        expect_attribute("your layer's layout", layer, name, kind).load_state_dict(sources[name].state_dict())


@exercise(points=4)
def check_encoder_layer(cls, bert=None):
    """Your layer, loaded with MiniLM's layer 0, gives Hugging Face's layer-0 output on a padded batch.

    ``bert``: the Hugging Face MiniLM already loaded (``minilib.deploy.hf.load_minilm``), or None to load it here.
    """
    import transformers.models.bert.modeling_bert as modeling_bert

    from minilib.deploy.hf import load_minilm, load_tokenizer

    if bert is None:
        bert, tokenizer = load_minilm()
    else:
        tokenizer = load_tokenizer()
    batch = tokenizer(["The movie was not bad at all.",
                       "I expected it to be bad, and it was not: a delightful surprise from start to finish."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch, output_hidden_states=True).hidden_states  # embeddings, then one per layer
    config = bert.config
    forbid = [transformer, attention.MultiHeadAttention, COURSE, modeling_bert, *REFERENCE_LAYERS]
    allow = [attention.scaled_dot_product_attention, attention.memory_efficient_attention]
    with guarded(cls, forbid, "the attention, the residual connections, the LayerNorms and the feed-forward network "
                              "are the exercise (an attention function of chapter 02 is fine)", allow=allow) as run:
        layer = run.build(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                          config.layer_norm_eps)
        _load_bert_layer(layer, bert.encoder.layer[0])
        with torch.no_grad():
            got = layer.eval()(hidden[0], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    expect_tensor(f"the layer's output on embeddings {tuple(hidden[0].shape)}", got, tuple(hidden[1].shape),
                  hint="return (batch, seq, d_model), like the input")
    expect_close("MiniLM's layer 0 on two sentences (the first one padded), real tokens", got[real], hidden[1][real],
                 atol=1e-4,
                 hint="post-norm, as BERT: h = attn_norm(x + attn_out(attention(x))), then "
                      "ffn_norm(h + ffn_down(gelu(ffn_up(h)))); divide the scores by √head_dim (32); hide padded "
                      "*keys* (attention_mask 0) with -inf; gelu is the exact (erf) one, not the tanh approximation")
