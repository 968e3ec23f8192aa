"""Chapter 03's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts (the library, schedulers, PyTorch's clipping, reference layers) by whatever route they are reached."""
import math

import pytest
import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_clip_by_global_norm,
    check_encoder_layer,
    check_pre_norm_residual,
    check_sinusoidal_positions,
    check_warmup_linear,
)
from minilib.support.train import lr_multiplier
from minilib.transformer import SinusoidalPositions


def sinusoidal(max_len, d_model, base=10000.0, swap=False):
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # 1 / base^(2i/d)
    table = torch.zeros(max_len, d_model)
    even, odd = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    table[:, 0::2] = even(position * frequency)
    table[:, 1::2] = odd(position * frequency[: d_model // 2])
    return table


def sinusoidal_interleaved(max_len, d_model):  # a stack of (sin, cos) pairs, flattened; exp(-log) frequencies
    angles = torch.arange(max_len)[:, None] * torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def sinusoidal_loops(max_len, d_model):  # plain Python loops, as the formula reads
    return torch.tensor([[math.sin(t / 10000 ** (i / d_model)) if i % 2 == 0 else math.cos(t / 10000 ** ((i - 1) / d_model))
                          for i in range(d_model)] for t in range(max_len)])


def test_sinusoidal_positions(stub, refused):
    assert check_sinusoidal_positions(sinusoidal)
    assert check_sinusoidal_positions(sinusoidal_interleaved)
    assert check_sinusoidal_positions(sinusoidal_loops)
    assert not check_sinusoidal_positions(stub)
    refused(check_sinusoidal_positions, lambda max_len, d: SinusoidalPositions(max_len, d).table,
            "minilib.transformer.SinusoidalPositions")
    refused(check_sinusoidal_positions, lambda n, d: sinusoidal(n, d, swap=True), "even columns use sin")
    refused(check_sinusoidal_positions, lambda n, d: sinusoidal(n, d, base=1000.0), "10000^(2i/d)")
    refused(check_sinusoidal_positions, lambda n, d: sinusoidal(n, d).tolist(), "return a tensor of shape (4, 4)",
            "a list")


def test_pre_norm_residual(stub, refused):
    assert check_pre_norm_residual(lambda x, sublayer, norm: x + sublayer(norm(x)))
    assert check_pre_norm_residual(lambda x, sublayer, norm: torch.add(sublayer(norm(x)), x))
    assert not check_pre_norm_residual(stub)
    refused(check_pre_norm_residual, lambda x, sublayer, norm: norm(x + sublayer(x)), "return x itself")    # post-norm
    refused(check_pre_norm_residual, lambda x, sublayer, norm: x + norm(sublayer(x)), "x + sublayer(norm(x))")
    refused(check_pre_norm_residual, lambda x, sublayer, norm: norm(x) + sublayer(norm(x)), "return x itself")
    refused(check_pre_norm_residual, lambda x, sublayer, norm: print(x + sublayer(norm(x))), "None", "`return`")


def warmup_linear(step, total_steps, warmup_steps):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)


def warmup_linear_min(step, total, warmup):  # one expression: the smaller of the two ramps
    rise = (step + 1) / warmup if warmup else math.inf
    return min(rise, (total - step) / (total - warmup))


def test_warmup_linear(stub, refused):
    assert check_warmup_linear(warmup_linear)
    assert check_warmup_linear(warmup_linear_min)
    assert check_warmup_linear(lambda s, t, w: torch.tensor(warmup_linear(s, t, w)))  # a 0-d tensor is a number
    assert not check_warmup_linear(stub)
    refused(check_warmup_linear, lambda step, total, warmup: lr_multiplier(step, total, warmup, "linear"),
            "minilib.support.train.lr_multiplier")
    refused(check_warmup_linear, lambda s, t, w: s / w if s < w else 1 - (s - w) / (t - w), "0-based")   # starts at 0
    refused(check_warmup_linear, lambda s, t, w: (s + 1) / w if s < w else 1 - s / t, "all steps 0…20")  # decays early
    refused(check_warmup_linear, lambda s, t, w: None, "return a number", "None")

    def by_scheduler(step, total, warmup):  # PyTorch's LambdaLR around a schedule: the scheduler is the answer
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / warmup, 1.0, warmup) if warmup else None
        return scheduler.get_last_lr()[0] if scheduler else 1.0

    refused(check_warmup_linear, by_scheduler, "torch.optim.lr_scheduler")

    def by_transformers(step, total, warmup):
        from transformers import get_linear_schedule_with_warmup
        return get_linear_schedule_with_warmup(None, warmup, total).lr_lambdas[0](step + 1)

    refused(check_warmup_linear, by_transformers, "transformers")


def clip_by_global_norm(grads, max_norm):
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g * scale for g in grads]


def clip_in_place(grads, max_norm):  # torch.linalg on the concatenation; scales the given tensors in place
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    if total > max_norm:
        for g in grads:
            g.mul_(max_norm / total)
    return grads


def test_clip_by_global_norm(stub, refused):
    assert check_clip_by_global_norm(clip_by_global_norm)
    assert check_clip_by_global_norm(clip_in_place)
    assert check_clip_by_global_norm(lambda grads, m: tuple(clip_by_global_norm(grads, m)))
    assert not check_clip_by_global_norm(stub)
    refused(check_clip_by_global_norm, lambda grads, m: [g * min(1.0, m / g.norm()) for g in grads], "global norm")
    refused(check_clip_by_global_norm, lambda grads, m: [g.clamp(-m, m) for g in grads], "global norm 5")  # by value
    refused(check_clip_by_global_norm, lambda grads, m: [g * m / math.sqrt(sum(float(x.pow(2).sum()) for x in grads))
                                                         for g in grads], "only scale")  # rescales small ones too
    refused(check_clip_by_global_norm, lambda grads, m: clip_by_global_norm(grads, m)[0], "a list of 1 tensor")

    def by_torch(grads, max_norm):  # PyTorch's clipping, on parameters made to carry the gradients
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return [p.grad for p in params]

    refused(check_clip_by_global_norm, by_torch, "torch.nn.utils.clip_grad")


class BertEncoderLayer(torch.nn.Module):
    """The model answer of Exercise 3.6, with switches for the mistakes the check must catch."""

    def __init__(self, d_model=384, n_heads=12, d_ff=1536, eps=1e-12, pre_norm=False, approximate="none",
                 transposed=False):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.query, self.key, self.value = (torch.nn.Linear(d_model, d_model) for _ in range(3))
        self.attn_out, self.attn_norm = torch.nn.Linear(d_model, d_model), torch.nn.LayerNorm(d_model, eps=eps)
        self.ffn_up, self.ffn_down = torch.nn.Linear(d_model, d_ff), torch.nn.Linear(d_ff, d_model)
        self.ffn_norm = torch.nn.LayerNorm(d_model, eps=eps)
        self.pre_norm, self.approximate, self.transposed = pre_norm, approximate, transposed

    def attend(self, x, attention_mask):
        batch, seq, d_model = x.shape

        def heads(t):
            return t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

        query = x @ self.query.weight + self.query.bias if self.transposed else self.query(x)
        q, k, v = heads(query), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        return self.attn_out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, d_model))

    def ffn(self, h):
        return self.ffn_down(F.gelu(self.ffn_up(h), approximate=self.approximate))

    def forward(self, x, attention_mask):
        if self.pre_norm:
            h = x + self.attend(self.attn_norm(x), attention_mask)
            return h + self.ffn(self.ffn_norm(h))
        h = self.attn_norm(x + self.attend(x, attention_mask))
        return self.ffn_norm(h + self.ffn(h))


def encoder_variant(**mistake):
    return lambda *sizes: BertEncoderLayer(*sizes, **mistake)


class StubLayer(BertEncoderLayer):
    def forward(self, x, attention_mask):
        raise NotImplementedError


class LibraryResidual(BertEncoderLayer):
    """The shortcut: minilib's residual helper does the sublayer wiring."""

    def forward(self, x, attention_mask):
        from minilib.transformer import sublayer_connection
        h = sublayer_connection(x, lambda t: self.attend(t, attention_mask), self.attn_norm, torch.nn.Identity(), False)
        return sublayer_connection(h, self.ffn, self.ffn_norm, torch.nn.Identity(), False)


class FusedAttentionLayer(BertEncoderLayer):
    """Another correct answer: PyTorch's fused attention (allowed here: chapter 02's lesson), einsum projections."""

    def attend(self, x, attention_mask):
        def heads(t):  # (B, T, d) -> (B, nh, T, hs)
            return t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

        q, k, v = (heads(torch.einsum("btd,ed->bte", x, lin.weight) + lin.bias)
                   for lin in (self.query, self.key, self.value))
        keys = attention_mask[:, None, None, :].bool()
        return self.attn_out(F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).flatten(2))


class ChapterTwoAttentionLayer(BertEncoderLayer):
    """Another correct answer: minilib's attention function of chapter 02 (the exercise allows it)."""

    def attend(self, x, attention_mask):
        from minilib.attention import scaled_dot_product_attention
        split = [t.view(*x.shape[:2], self.n_heads, -1).transpose(1, 2) for t in (self.query(x), self.key(x), self.value(x))]
        out = scaled_dot_product_attention(*split, attn_mask=attention_mask[:, None, None, :].bool())
        return self.attn_out(out.transpose(1, 2).reshape(x.shape))


class HuggingFaceInside(BertEncoderLayer):
    """The shortcut: Hugging Face's BertLayer, built in __init__ and given the check's weights at every call."""

    def __init__(self, d_model=384, n_heads=12, d_ff=1536, eps=1e-12):
        super().__init__(d_model, n_heads, d_ff, eps)
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer
        self.bert_layer = BertLayer(BertConfig(hidden_size=d_model, num_attention_heads=n_heads,
                                               intermediate_size=d_ff, layer_norm_eps=eps)).eval()

    def forward(self, x, attention_mask):
        hf = self.bert_layer
        for ours, theirs in [(self.query, hf.attention.self.query), (self.key, hf.attention.self.key),
                             (self.value, hf.attention.self.value), (self.attn_out, hf.attention.output.dense),
                             (self.attn_norm, hf.attention.output.LayerNorm), (self.ffn_up, hf.intermediate.dense),
                             (self.ffn_down, hf.output.dense), (self.ffn_norm, hf.output.LayerNorm)]:
            theirs.load_state_dict(ours.state_dict())
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return hf(x, attention_mask=bias)[0]


class TorchLayerInside(BertEncoderLayer):
    """The shortcut: PyTorch's TransformerEncoderLayer, reached through its defining module, built in __init__."""

    def __init__(self, d_model=384, n_heads=12, d_ff=1536, eps=1e-12):
        super().__init__(d_model, n_heads, d_ff, eps)
        from torch.nn.modules import transformer
        self.reference = transformer.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                                             layer_norm_eps=eps, batch_first=True)

    def forward(self, x, attention_mask):
        return self.reference(x, src_key_padding_mask=attention_mask == 0)


@pytest.fixture(scope="module")
def minilm():
    from minilib.deploy.hf import load_minilm
    return load_minilm()[0]


def test_encoder_layer(minilm, refused):
    assert check_encoder_layer(BertEncoderLayer, minilm)
    assert check_encoder_layer(FusedAttentionLayer, minilm)
    assert check_encoder_layer(ChapterTwoAttentionLayer, minilm)
    assert not check_encoder_layer(StubLayer, minilm)
    refused(check_encoder_layer, encoder_variant(pre_norm=True), "post-norm", bert=minilm)      # GPT-2's order
    refused(check_encoder_layer, encoder_variant(approximate="tanh"), "erf", bert=minilm)       # MiniLM's gelu
    refused(check_encoder_layer, encoder_variant(transposed=True), "MiniLM's layer 0", bert=minilm)  # x @ W


def test_encoder_layer_refuses_reference_layers(minilm, refused):
    refused(check_encoder_layer, LibraryResidual, "minilib.transformer", bert=minilm)
    refused(check_encoder_layer, HuggingFaceInside, "transformers", bert=minilm)
    refused(check_encoder_layer, TorchLayerInside, "TransformerEncoderLayer", bert=minilm)
    refused(check_encoder_layer, BertEncoderLayer(), "pass the class BertEncoderLayer", bert=minilm)
