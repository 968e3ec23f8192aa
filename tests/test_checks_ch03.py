"""Chapter 03's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.course.checks import (check_clip_by_global_norm, check_pre_norm_residual, check_sinusoidal_positions,
                            check_warmup_linear)
from minilib.train import lr_multiplier
from minilib.transformer import SinusoidalPositions


def sinusoidal(max_len, d_model, base=10000.0, swap=False):
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # 1 / base^(2i/d)
    table = torch.zeros(max_len, d_model)
    even, odd = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    table[:, 0::2] = even(position * frequency)
    table[:, 1::2] = odd(position * frequency[: d_model // 2])
    return table


def test_sinusoidal_positions(stub):
    assert check_sinusoidal_positions(sinusoidal)
    assert not check_sinusoidal_positions(lambda max_len, d: SinusoidalPositions(max_len, d).table)   # the library's own
    assert not check_sinusoidal_positions(stub)
    assert not check_sinusoidal_positions(lambda n, d: sinusoidal(n, d, swap=True))       # sin and cos swapped
    assert not check_sinusoidal_positions(lambda n, d: sinusoidal(n, d, base=1000.0))     # wrong base


def test_pre_norm_residual(stub):
    assert check_pre_norm_residual(lambda x, sublayer, norm: x + sublayer(norm(x)))
    assert not check_pre_norm_residual(stub)
    assert not check_pre_norm_residual(lambda x, sublayer, norm: norm(x + sublayer(x)))      # post-norm
    assert not check_pre_norm_residual(lambda x, sublayer, norm: norm(x) + sublayer(norm(x)))  # normalised residual


def warmup_linear(step, total_steps, warmup_steps):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)


def test_warmup_linear(stub):
    assert check_warmup_linear(warmup_linear)
    assert not check_warmup_linear(lambda step, total, warmup: lr_multiplier(step, total, warmup, "linear"))   # the library's
    assert not check_warmup_linear(stub)
    assert not check_warmup_linear(lambda s, t, w: s / w if s < w else 1 - (s - w) / (t - w))  # starts at 0
    assert not check_warmup_linear(lambda s, t, w: (s + 1) / w if s < w else 1 - s / t)        # decays from step 0


def clip_by_global_norm(grads, max_norm):
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g * scale for g in grads]


def test_clip_by_global_norm(stub):
    assert check_clip_by_global_norm(clip_by_global_norm)
    assert not check_clip_by_global_norm(stub)
    assert not check_clip_by_global_norm(lambda grads, m: [g * min(1.0, m / g.norm()) for g in grads])  # per tensor
    assert not check_clip_by_global_norm(lambda grads, m: [g.clamp(-m, m) for g in grads])             # by value
    assert not check_clip_by_global_norm(lambda grads, m: [g * m / math.sqrt(sum(float(x.pow(2).sum()) for x in grads))
                                                           for g in grads])  # always rescales, even small ones
