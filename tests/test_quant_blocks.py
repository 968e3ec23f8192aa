"""q8_0 / q4_0 (minilib.quant.blocks) bit for bit against llama.cpp's formats in the gguf package's numpy code."""
import numpy as np
import pytest
import torch
from torch import nn

gguf = pytest.importorskip("gguf")

from minilib.deploy.hf import load_minilm
from minilib.quant import BlockQuantLinear, dequantize_blocks, quantize_blocks, quantize_model_blocks

TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


def _gguf_scales_and_codes(w: torch.Tensor, fmt: str):
    """gguf's bytes per block: 2 bytes of float16 scale, then the codes (32 int8, or 16 packed bytes)."""
    raw = gguf.quants.quantize(w.numpy(), TYPES[fmt]).reshape(w.shape[0], w.shape[1] // 32, -1)
    return raw[..., :2].copy().view(np.uint16)[..., 0], raw[..., 2:].reshape(w.shape[0], -1)


def _assert_same_as_gguf(w, fmt):
    q = quantize_blocks(w, fmt)
    scales, codes = _gguf_scales_and_codes(w, fmt)
    np.testing.assert_array_equal(q.scales.numpy().view(np.uint16), scales)
    np.testing.assert_array_equal(q.codes.numpy().view(np.uint8), codes)
    expected = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), TYPES[fmt]), TYPES[fmt])
    np.testing.assert_array_equal(dequantize_blocks(q).numpy(), expected)


def _random_weights():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(64, 256, generator=g)                                            # unit variance
    yield torch.randn(32, 128, generator=g) * torch.logspace(-4, 2, 32)[:, None]       # rows of very different scales
    w = torch.randn(8, 64, generator=g)
    w[:, 5] = 40.0                                                                     # one outlier per block
    yield w
    yield torch.zeros(4, 32)                                                           # blocks of zeros: scale 0
    yield (torch.randint(-8, 8, (16, 64), generator=g) / 4.0)                          # exact ties (.5) and ± equal maxima
    yield torch.randn(16, 64, generator=g).half().float()                              # values from float16 weights


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_codes_and_scales_equal_gguf_on_random_weights(fmt):
    for w in _random_weights():
        _assert_same_as_gguf(w, fmt)


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()[0]


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_codes_and_scales_equal_gguf_on_minilm_weights(minilm, fmt):
    layer = minilm.encoder.layer[0]
    for linear in (layer.attention.self.query, layer.intermediate.dense, layer.output.dense):  # 384→384, 384→1536, 1536→384
        _assert_same_as_gguf(linear.weight.detach(), fmt)


@pytest.mark.parametrize("fmt, bits_per_weight", [("q8_0", 8.5), ("q4_0", 4.5)])
def test_storage_is_the_formats_bits_per_weight(fmt, bits_per_weight):
    q = quantize_blocks(torch.randn(96, 256), fmt)
    assert q.nbytes * 8 == 96 * 256 * bits_per_weight


@pytest.mark.parametrize("fmt, bound", [("q8_0", 0.56 / 127), ("q4_0", 1.01 / 8)])
def test_error_stays_within_the_grid_of_each_block(fmt, bound):
    """q8_0: half a step (max/127), plus up to 127 codes × the float16 rounding of the scale (2^-11 relative).
    q4_0: the grid runs from -8 to +7 steps of max/8, so a value near -max (when +max set the scale) is
    clipped by up to one step."""
    w = torch.randn(32, 128)
    error = (w - dequantize_blocks(quantize_blocks(w, fmt))).abs().view(32, 4, 32)
    block_max = w.abs().view(32, 4, 32).amax(-1, keepdim=True)
    assert torch.all(error <= block_max * bound + 1e-6)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_block_quant_linear_runs_the_dequantized_weight(fmt):
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    quantized = BlockQuantLinear.from_linear(linear, fmt)
    x = torch.randn(5, 7, 128)
    expected = nn.functional.linear(x, dequantize_blocks(quantize_blocks(linear.weight, fmt)), linear.bias)
    torch.testing.assert_close(quantized(x), expected)
    relative = (quantized(x) - linear(x)).norm() / linear(x).norm()
    assert relative < (0.01 if fmt == "q8_0" else 0.15)


def test_quantize_model_blocks_swaps_every_linear_but_the_tied_head(tiny_config):
    from minilib.transformer import LanguageModel

    model = LanguageModel(tiny_config(vocab_size=50, d_model=64, n_heads=1, d_ff=128))
    quantized = quantize_model_blocks(model, "q4_0")
    swapped = [name for name, m in quantized.named_modules() if isinstance(m, BlockQuantLinear)]
    assert len(swapped) == 2 * 6 and type(quantized.lm_head) is nn.Linear
    assert type(model.layers[0].ffn.up) is nn.Linear                 # the original is untouched


def test_bad_inputs():
    with pytest.raises(ValueError, match="multiple of 32, got 48"):
        quantize_blocks(torch.randn(4, 48), "q4_0")
    with pytest.raises(ValueError, match="must be one of"):
        quantize_blocks(torch.randn(4, 32), "q5_1")
    with pytest.raises(ValueError, match=r"shape \(out, in\), got \(32,\)"):
        quantize_blocks(torch.randn(32), "q8_0")
