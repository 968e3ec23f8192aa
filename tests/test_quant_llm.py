"""Chapter 14's weight quantizers against llmcompressor, the GPTQ paper's equations and chapter 07's int4.

Real layers: chapter 13's shipped character-level decoder and the inputs its layers see on held-out text.
"""
import copy

import pytest
import torch

from minilib.quant import Int4Linear, pack_int4
from minilib.quant.awq import awq, awq_scale, output_error
from minilib.quant.gptq import gptq, gptq_weight
from minilib.quant.groupwise import GroupQuantLinear, group_grid, pack_bits, round_to_nearest, unpack_bits
from minilib.quant.int8 import QuantLinear
from minilib.quant.layerwise import (
    InputStatistics,
    block_parts,
    compress_blocks,
    decoder_blocks,
    recording,
    scale_channels,
)
from minilib.quant.smoothquant import smoothing_scale, smoothquant, smoothquant_w8a8


# ------------------------------------------------------------------------------------------ storage and RTN
@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_bits_round_trips_in_bits_bytes_per_8_codes(bits):
    codes = torch.randint(0, 2**bits, (3, 64), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.shape == (3, 64 * bits // 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, bits), codes.to(torch.uint8))


def test_pack_bits_at_4_bits_is_chapter_07s_int4_layout():
    codes = torch.randint(0, 16, (5, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pack_bits(codes, 4), pack_int4(codes))


def test_four_bit_round_to_nearest_is_chapter_07s_int4(chapter13_layers):
    weight, _, _ = chapter13_layers["down"]
    linear = torch.nn.Linear(1024, 256)
    linear.weight.data.copy_(weight)
    ours, int4 = GroupQuantLinear.from_linear(linear, 4, 128), Int4Linear.from_linear(linear, 128)
    assert torch.equal(ours.dequantized_weight(), int4.dequantized_weight())
    x = torch.randn(3, 1024)
    torch.testing.assert_close(ours(x), int4(x))


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 128), (4, 32), (4, None)])
def test_group_grids_round_every_weight_to_within_half_a_step(chapter13_layers, bits, group_size):
    weight, _, _ = chapter13_layers["down"]
    grid = group_grid(weight, bits, group_size)
    assert grid.scale.shape == (256, 1024 // (group_size or 1024))
    codes = grid.quantize(weight)
    assert codes.max() <= 2**bits - 1
    step = grid.scale.repeat_interleave(grid.group_size, dim=1)
    assert torch.all((grid.dequantize(codes) - weight).abs() <= step / 2 * (1 + 1e-5))


def test_round_to_nearest_model_stores_bits_per_weight_and_leaves_the_head_float(compressible_llama):
    model = compressible_llama()
    quantized = round_to_nearest(model, bits=3, group_size=32)
    layer = quantized.model.layers[0].mlp.down_proj
    assert isinstance(layer, GroupQuantLinear) and layer.codes.shape == (128, 256 * 3 // 8)
    assert type(quantized.lm_head) is torch.nn.Linear and type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear


@pytest.mark.parametrize("make", [lambda m, ids: round_to_nearest(m, 4, 100), lambda m, ids: gptq(m, ids, 4, 96),
                                  lambda m, ids: awq(m, ids, 4, 0)])
def test_a_group_size_that_does_not_divide_the_inputs_is_refused(make, compressible_llama, calibration_ids):
    with pytest.raises(ValueError, match=r"divisor of the input dimension 128 \(e\.g\. 32, 64, 128\), got (100|96|0)"):
        make(compressible_llama(), calibration_ids())


# ------------------------------------------------------------------------------------------ GPTQ
def reference_gptq(weight, hessian, grid, damp=0.01, order=None):
    """The GPTQ paper's equations 2 and 3 as they are written: an explicit inverse Hessian, updated after each column
    (OBS), one column at a time in float64 — no Cholesky factor, no lazy batches."""
    order = torch.arange(weight.shape[1]) if order is None else order
    W, H = weight.double()[:, order].clone(), hessian.double()[order][:, order].clone()
    H_inv = torch.linalg.inv(H + damp * H.diagonal().mean() * torch.eye(len(order), dtype=torch.float64))
    Q = torch.empty_like(W)
    for q in range(W.shape[1]):
        Q[:, q] = grid.round(W[:, q].float(), order[q]).double()
        error = (W[:, q] - Q[:, q]) / H_inv[q, q]
        W[:, q:] -= error[:, None] * H_inv[q, q:]                                   # eq. 2
        H_inv -= torch.outer(H_inv[:, q], H_inv[q, :]) / H_inv[q, q]                # eq. 3: q leaves F
    return Q[:, torch.argsort(order)].float()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_equals_the_papers_equations(chapter13_layers, act_order):
    weight, _, stats = chapter13_layers["q"]
    weight = weight[:64]
    codes, grid = gptq_weight(weight, stats.hessian, 4, 128, act_order=act_order)
    order = torch.argsort(stats.hessian.diagonal(), descending=True) if act_order else None
    reference = reference_gptq(weight, stats.hessian, grid, order=order)
    assert (grid.dequantize(codes) == reference).float().mean() > 0.995             # float32 vs float64 ties aside
    ours, theirs = output_error(weight, grid.dequantize(codes), stats.xtx), output_error(weight, reference, stats.xtx)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_llmcompressors_gptq_with_our_grids_is_ours(chapter13_layers):
    from minilib.experiments.llm_compression import llmcompressor_gptq_weight

    weight, _, stats = chapter13_layers["q"]
    codes, grid = gptq_weight(weight, stats.hessian, 4, 128)
    assert torch.equal(llmcompressor_gptq_weight(weight, stats.hessian, grid), grid.dequantize(codes))


@pytest.mark.parametrize("bits, group_size, act_order", [(4, 128, False), (4, 128, True), (3, 128, True), (4, 32, True)])
def test_gptq_equals_llmcompressors_gptq_on_a_real_layer(chapter13_layers, bits, group_size, act_order):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    weight, _, stats = chapter13_layers["q"]
    codes, grid = gptq_weight(weight, stats.hessian, bits, group_size, act_order)
    args = QuantizationArgs(num_bits=bits, symmetric=False, strategy="group", group_size=group_size,
                            actorder="weight" if act_order else None)
    groups = weight.reshape(weight.shape[0], -1, group_size)
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)   # their min-max grids
    torch.testing.assert_close(grid.scale, scale)
    assert torch.equal(grid.zero, zero_point.round().int() + 2 ** (bits - 1))        # their codes are signed
    theirs = quantize_weight(weight[None].clone(), stats.hessian[None].clone(), scale[None], zero_point[None], None,
                             args, blocksize=128, percdamp=0.01)[0][0]
    ours = grid.dequantize(codes)
    assert (ours == theirs).float().mean() > 0.999
    assert output_error(weight, ours, stats.xtx) == pytest.approx(output_error(weight, theirs, stats.xtx), rel=1e-3)


def test_gptq_cuts_a_real_layers_output_error_well_below_round_to_nearest(chapter13_layers):
    weight, _, stats = chapter13_layers["down"]
    for bits in (4, 3):
        rtn = group_grid(weight, bits, 128).round(weight)
        codes, grid = gptq_weight(weight, stats.hessian, bits, 128, act_order=True)
        assert output_error(weight, grid.dequantize(codes), stats.xtx) < 0.5 * output_error(weight, rtn, stats.xtx)


def test_a_hessian_from_activations_of_another_width_is_refused(chapter13_layers):
    weight, _, _ = chapter13_layers["down"]
    with pytest.raises(ValueError, match=r"must be \(1024, 1024\).*width 1024; got shape \(256, 256\)"):
        gptq_weight(weight, torch.eye(256))
    with pytest.raises(ValueError, match="must have 1024 features.*got shape \\(2, 5, 256\\)"):
        InputStatistics(1024).add(torch.randn(2, 5, 256))


def test_gptq_model_quantizes_every_block_layer_and_leaves_the_original_alone(compressible_llama, calibration_ids):
    model = compressible_llama()
    before = copy.deepcopy(model.state_dict())
    quantized = gptq(model, calibration_ids(16), bits=3, group_size=64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layers = [m for m in quantized.model.layers.modules() if isinstance(m, (GroupQuantLinear, torch.nn.Linear))]
    assert len(layers) == 14 and all(isinstance(m, GroupQuantLinear) for m in layers)
    held_out = calibration_ids(4, seed=9)
    reference = model(held_out).logits
    error = lambda m: (m(held_out).logits - reference).square().mean().item()
    assert error(quantized) < 0.8 * error(round_to_nearest(model, 3, 64))


@pytest.mark.parametrize("bad", [torch.randn(4, 8), torch.zeros(0, 8, dtype=torch.long), [[1, 2]]])
def test_calibration_text_must_be_token_ids(bad, compressible_llama):
    with pytest.raises(ValueError, match="calibration text must"):
        gptq(compressible_llama(), bad)


# ------------------------------------------------------------------------------------------ block by block
@torch.no_grad()
def test_each_block_sees_the_hidden_states_the_model_gives_it(compressible_llama, calibration_ids):
    model, ids = compressible_llama(), calibration_ids()
    expected = model(ids, output_hidden_states=True).hidden_states
    seen = []

    def look(block, run):
        with recording({"q": block_parts(block).q}) as stats:
            run()
        seen.append(stats["q"])

    compress_blocks(model, ids, look, batch_size=3)
    for i, block in enumerate(decoder_blocks(model)):
        x = block.input_layernorm(expected[i]).reshape(-1, 128)
        torch.testing.assert_close(seen[i].xtx, x.T @ x, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(seen[i].max_abs, x.abs().amax(0))


# ------------------------------------------------------------------------------------------ AWQ
@torch.no_grad()
def test_scaling_channels_leaves_the_block_unchanged(compressible_llama, calibration_ids):
    model, ids = compressible_llama(), calibration_ids()
    reference = model(ids).logits
    parts = block_parts(model.model.layers[0])
    s = torch.rand(128) + 0.5
    scale_channels(parts.attn_norm, [parts.q, parts.k, parts.v], s)
    scale_channels(parts.up, [parts.down], torch.rand(256) + 0.5)
    torch.testing.assert_close(model(ids).logits, reference, rtol=1e-4, atol=1e-5)


def test_awq_scale_protects_salient_channels_and_is_never_worse_than_round_to_nearest(chapter13_layers):
    weight, _, stats = chapter13_layers["down"]
    s, alpha, errors = awq_scale([weight], stats, 4, 128)
    rtn = output_error(weight, group_grid(weight, 4, 128).round(weight), stats.xtx)
    awq_error = output_error(weight, group_grid(weight * s, 4, 128).round(weight * s) / s, stats.xtx)
    assert 0 < alpha <= 1 and awq_error < rtn
    assert errors[0.0] == pytest.approx(rtn) and errors[alpha] == pytest.approx(awq_error) == min(errors.values())
    salient = stats.mean_abs.argsort(descending=True)[:10]
    assert s[salient].min() > s.median()


def test_awq_scale_refuses_activations_of_another_width(chapter13_layers):
    weight, _, stats = chapter13_layers["q"]
    with pytest.raises(ValueError, match=r"width 256 do not fit a weight of shape \(256, 1024\): expected width 1024"):
        awq_scale([torch.randn(256, 1024)], stats)


def test_awq_model_is_closer_to_the_float_model_than_round_to_nearest(compressible_llama, calibration_ids):
    model, ids, held_out = compressible_llama(), calibration_ids(16), calibration_ids(4, seed=9)
    reference = model(held_out).logits
    error = lambda m: (m(held_out).logits - reference).square().mean().item()
    quantized = awq(model, ids, bits=3, group_size=32)
    mlp = quantized.model.layers[1].mlp
    assert all(isinstance(m, GroupQuantLinear) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert error(quantized) < error(round_to_nearest(model, 3, 32))


# ------------------------------------------------------------------------------------------ SmoothQuant
def test_smoothing_scale_is_the_papers_formula():
    x_max, w1, w2 = torch.tensor([1.0, 16.0, 0.25]), torch.randn(4, 3), torch.randn(5, 3)
    w_max = torch.maximum(w1.abs().amax(0), w2.abs().amax(0))
    torch.testing.assert_close(smoothing_scale(x_max, [w1, w2], 0.75), x_max**0.75 / w_max**0.25)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothing_scale(x_max, [w1], 1.5)
    with pytest.raises(ValueError, match=r"width 3 do not fit .*\(4, 2\): expected width 2"):
        smoothing_scale(x_max, [torch.randn(4, 2)])


@torch.no_grad()
def test_smoothquant_leaves_the_float_model_unchanged_and_balances_activations_and_weights(compressible_llama, calibration_ids):
    model, ids = compressible_llama(), calibration_ids()
    smoothed = smoothquant(model, ids, alpha=0.5)
    torch.testing.assert_close(smoothed(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    parts = block_parts(smoothed.model.layers[1])
    with recording({"q": parts.q}, gram=False) as stats:
        smoothed(ids)
    weight_max = torch.cat([parts.q.weight, parts.k.weight, parts.v.weight]).abs().amax(0)
    # α = 0.5: after smoothing, each channel's largest activation equals its largest weight, √(max|X_j| · max|W_j|)
    torch.testing.assert_close(stats["q"].max_abs, weight_max, rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_smoothquant_w8a8_runs_on_chapter_07s_int8_layers_and_beats_plain_w8a8(compressible_llama, calibration_ids):
    from minilib.quant import quantize_model

    model, ids, held_out = compressible_llama(), calibration_ids(), calibration_ids(4, seed=9)
    reference = model(held_out).logits
    w8a8 = smoothquant_w8a8(model, ids)
    assert isinstance(w8a8.model.layers[0].mlp.down_proj, QuantLinear) and type(w8a8.lm_head) is torch.nn.Linear
    plain = quantize_model(model, bits=8, skip=("lm_head",))
    error = lambda m: (m(held_out).logits - reference).square().mean().item()
    assert error(w8a8) < error(plain)
