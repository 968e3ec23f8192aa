"""minilib.quant against PyTorch's own quantization (torch.quantize_per_*, torch.ao) and exact integer math."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib import quant
from minilib.quant import (
    FakeQuantLinear,
    Int4Linear,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    QuantLinear,
    dequantize,
    fake_quantize,
    int8_matmul,
    pack_int4,
    prepare_qat,
    qrange,
    quantize,
    quantize_model,
    quantize_rows,
    unpack_int4,
)
from minilib.quant.affine import absmax_quantize
from minilib.quant.model import ProjectionSlice, SharedInputProjections, fuse_for_inference, layer_stack
from minilib.support.bench import model_size_bytes


def _rows_of_different_scales(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 64, generator=g) * torch.logspace(-2, 1, 16).unsqueeze(1)


# ------------------------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, axis):
    x = _rows_of_different_scales() + 0.3  # not centred: exercises the zero point
    qx = quantize(x, bits, symmetric, axis)
    q_min, q_max = qrange(bits, symmetric)
    assert q_min <= qx.q.min() and qx.q.max() <= q_max
    error = (x - dequantize(qx)).abs()
    assert torch.all(error <= qx.scale / 2 * (1 + 1e-5) + 1e-7)


def test_ranges_and_storage_types():
    assert qrange(8, True) == (-127, 127) and qrange(8, False) == (0, 255) and qrange(2, True) == (-1, 1)
    assert quantize(torch.randn(5), 8, True).q.dtype == torch.int8
    assert quantize(torch.randn(5), 8, False).q.dtype == torch.uint8


def test_affine_matches_torch_quantize_per_tensor():
    x = torch.randn(200) * 3 + 1
    ours = quantize(x, 8, symmetric=False)
    theirs = torch.quantize_per_tensor(x, ours.scale.item(), int(ours.zero_point), torch.quint8)
    assert torch.equal(ours.q, theirs.int_repr())
    assert torch.allclose(dequantize(ours), theirs.dequantize(), atol=1e-6)


def test_symmetric_per_channel_matches_torch_quantize_per_channel():
    w = _rows_of_different_scales()
    ours = quantize(w, 8, symmetric=True, axis=0)
    theirs = torch.quantize_per_channel(w, ours.scale.flatten().double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(ours.q, theirs.int_repr())


def test_zero_is_exact_and_constant_tensors_survive():
    x = torch.tensor([0.0, 0.7, 2.5, -0.2])
    assert dequantize(quantize(x, 4, symmetric=False))[0] == 0
    zeros = torch.zeros(3, 4)
    assert torch.equal(dequantize(quantize(zeros, 8, axis=0)), zeros)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_never_worse_than_per_tensor(bits):
    from minilib.deploy.hf import load_minilm
    bert, _ = load_minilm()
    for w in (_rows_of_different_scales(), bert.encoder.layer[0].intermediate.dense.weight.detach()):
        per_tensor = (w - dequantize(quantize(w, bits, axis=None))).pow(2).mean()
        per_channel = (w - dequantize(quantize(w, bits, axis=0))).pow(2).mean()
        assert per_channel <= per_tensor


def test_clip_range_clips():
    qx = quantize(torch.tensor([-10.0, 0.5, 10.0]), 8, symmetric=True, clip=(-1.0, 1.0))
    assert torch.allclose(dequantize(qx), torch.tensor([-1.0, 0.5, 1.0]), atol=qx.scale.item() / 2)


@pytest.mark.parametrize("bits", [1, 9, 0, 3.0, True, "8"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        quantize(torch.randn(4), bits)


def test_bad_axis_and_integer_input():
    with pytest.raises(ValueError, match="axis must be None or an int in \\[-2, 1\\]"):
        quantize(torch.randn(3, 4), axis=2)
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64"):
        quantize(torch.arange(5))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        dequantize(torch.randn(3))


# ----------------------------------------------------------------------------------------- observers
def _activations_with_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4096, generator=g)
    x[0, :3] = torch.tensor([80.0, -60.0, 70.0])  # the few huge values LLM.int8 found in Transformers
    return x


def test_observers_ranges():
    x = _activations_with_outliers()
    minmax, pct = MinMaxObserver(), PercentileObserver(99.0)
    for batch in x:
        minmax.update(batch)
        pct.update(batch)
    assert minmax.range() == (x.min().item(), x.max().item())
    bound = torch.quantile(x.abs().flatten(), 0.99).item()
    assert pct.range(symmetric=True) == pytest.approx((-bound, bound), rel=1e-5)
    lo, hi = pct.range(symmetric=False)
    assert lo == pytest.approx(torch.quantile(x.flatten(), 0.01).item(), rel=1e-5)


def test_one_outlier_coarsens_the_min_max_grid_for_everything_else():
    x = _activations_with_outliers()
    ordinary = x[1:]
    errors = []
    for data in (ordinary, x):
        obs = MinMaxObserver()
        obs.update(data)
        x_hat = dequantize(quantize(ordinary, 8, symmetric=True, clip=obs.range(8, True)))
        errors.append((ordinary - x_hat).pow(2).mean().item())
    assert errors[1] > 50 * errors[0]


@pytest.mark.parametrize("bits", [4, 8])
def test_clipping_observers_on_heavy_tailed_values(bits):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    errors = {}
    for name, obs in {"minmax": MinMaxObserver(), "percentile": PercentileObserver(99.9), "mse": MSEObserver()}.items():
        obs.update(x)
        errors[name] = (x - dequantize(quantize(x, bits, symmetric=True, clip=obs.range(bits, True)))).pow(2).mean().item()
    assert errors["mse"] <= errors["minmax"] and errors["mse"] <= errors["percentile"]
    if bits == 4:  # at low bit widths clipping the tails wins clearly
        assert errors["percentile"] < errors["minmax"] and errors["mse"] < errors["minmax"] / 2


def test_observer_errors():
    with pytest.raises(ValueError, match="has seen no data"):
        MinMaxObserver().range()
    with pytest.raises(ValueError, match="percentile must be in"):
        PercentileObserver(30)
    with pytest.raises(TypeError, match="floating-point"):
        MinMaxObserver().update(torch.arange(3))


# ------------------------------------------------------------------------------------ int8 kernels
def test_quantize_rows_equals_general_per_row_quantization():
    x = _rows_of_different_scales()
    x_q, scale = quantize_rows(x)
    reference = quantize(x, 8, symmetric=True, axis=0)
    assert torch.equal(x_q, reference.q) and torch.allclose(scale, reference.scale)


def test_int8_matmul_is_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (33, 1536), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (1536, 40), generator=g, dtype=torch.int8)
    exact = a.long() @ b.long()
    assert torch.equal(int8_matmul(a, b).long(), exact)
    assert torch.equal(int8_matmul(a, b.t().contiguous().t()).long(), exact)  # transposed weights (as QuantLinear uses)


def test_int8_matmul_fallback_warns_and_is_exact_for_small_k(monkeypatch):
    monkeypatch.setattr(quant.int8, "int_mm_supported", lambda a, b: False)
    monkeypatch.setattr(quant.int8, "_warned_fallback", False)
    a = torch.randint(-127, 128, (5, 384), dtype=torch.int8)
    b = torch.randint(-127, 128, (384, 7), dtype=torch.int8)
    with pytest.warns(UserWarning, match="falling back to a float matmul"):
        out = int8_matmul(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), a.long() @ b.long())


def test_int8_matmul_errors():
    with pytest.raises(TypeError, match="two int8 matrices"):
        int8_matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        int8_matmul(torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8))


def test_quant_linear_is_the_exact_integer_computation_and_close_to_f_linear():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(3, 7, 96)
    layer = QuantLinear.from_linear(linear)
    out = layer(x)
    # reference: dequantized operands multiplied in float64 (what the integers stand for)
    x_hat = dequantize(quantize(x.reshape(-1, 96), 8, axis=0)).double()
    w_hat = dequantize(quantize(linear.weight, layer.weight_bits, axis=0)).double()   # 7 bits on AVX2-only CPUs
    reference = (x_hat @ w_hat.T + linear.bias.double()).reshape(3, 7, 40)
    assert torch.allclose(out.double(), reference, atol=1e-5)
    with torch.no_grad():
        exact = linear(x)
    assert (out - exact).norm() / exact.norm() < 0.01  # stated tolerance: 1% relative error at 8 bits
    assert layer.weight_q.dtype == torch.int8 and out.shape == (3, 7, 40)


needs_u8s8 = pytest.mark.skipif(quant.int8.u8s8_weight_bits() is None,
                                reason="oneDNN's u8·s8 int8 kernel is not available on this machine (x86 CPUs only)")


def test_unsigned_codes_are_the_signed_codes_plus_128():
    x = _rows_of_different_scales()
    x_q, scale = quantize_rows(x)
    x_u8, scale_u8 = quantize_rows(x, unsigned=True)
    assert x_u8.dtype == torch.uint8 and torch.equal(x_u8.long() - 128, x_q.long()) and torch.equal(scale, scale_u8)


@needs_u8s8
@pytest.mark.parametrize("bias", [True, False])
def test_the_u8s8_kernel_gives_the_same_outputs_as_torch_int_mm(monkeypatch, bias):
    """MiniLM-sized layer, unit-variance tokens with an all-zero one: the two kernels sum the same integers."""
    torch.manual_seed(0)
    linear = nn.Linear(384, 1536, bias=bias)
    x = torch.randn(2, 64, 384)
    x[1, 5] = 0.0
    layer = QuantLinear.from_linear(linear)
    fast = layer(x)
    monkeypatch.setattr(quant.int8, "u8s8_kernel_available", lambda weight_bits=8: False)
    reference = layer(x)
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(fast[1, 5], linear.bias.detach() if bias else torch.zeros(1536))


@needs_u8s8
def test_the_packed_weights_follow_new_weights_and_copies():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(64, 32))
    x = torch.randn(5, 64)
    before = layer(x)
    other = QuantLinear.from_linear(nn.Linear(64, 32))
    layer.load_state_dict(other.state_dict())           # new weights in the same tensors: packed again
    torch.testing.assert_close(layer(x), other(x))
    assert not torch.allclose(layer(x), before)
    copied = copy.deepcopy(layer)                        # the packed copy is not part of the module
    torch.testing.assert_close(copied(x), layer(x))


def test_weight_bits_follow_the_cpu_and_eight_bits_run_exactly_everywhere(monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(6, 96)
    assert QuantLinear.from_linear(linear).weight_bits == quant.int8.default_weight_bits() in (7, 8)
    seven, eight = (QuantLinear.from_linear(linear, weight_bits=bits) for bits in (7, 8))
    assert seven.weight_q.abs().max() <= 63 and eight.weight_q.abs().max() == 127
    for layer in (seven, eight):                  # each on the kernel that multiplies its codes exactly here
        x_q, x_scale = quantize_rows(x)
        exact = (x_q.double() @ layer.weight_q.double().t()) * x_scale.double() * layer.weight_scale.double()
        torch.testing.assert_close(layer(x).double(), exact + linear.bias.double(), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(quant.int8, "_U8S8_WEIGHT_BITS", [7])     # an AVX2-only CPU
    assert quant.int8.default_weight_bits() == 7 and not quant.int8.u8s8_kernel_available(8)
    saved_on_vnni = QuantLinear(96, 40, weight_bits=8)                # 8-bit codes loaded on the AVX2-only CPU
    saved_on_vnni.load_state_dict(eight.state_dict())
    with pytest.raises(ValueError, match=r"up to ±63 exactly, got codes up to ±127"):
        quant.int8.u8s8_linear_op(quantize_rows(x, unsigned=True)[0], saved_on_vnni.weight_q,
                                  saved_on_vnni.weight_scale)
    with pytest.raises(ValueError, match="weight_bits must be 8, 7 or None"):
        QuantLinear(4, 4, weight_bits=4)


def test_quant_linear_without_bias_and_bad_input():
    linear = nn.Linear(8, 4, bias=False)
    layer = QuantLinear.from_linear(linear)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), F.linear(x, linear.weight), atol=0.05)
    with pytest.raises(ValueError, match=r"input \(\.\.\., 8\), got \(5, 9\)"):
        layer(torch.randn(5, 9))
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(2, 2, 1))


def test_compiled_kernels_compute_the_same_numbers():
    kernels = quant.int8.compiled_kernels()
    x = _rows_of_different_scales()
    x_q, scale = kernels.quantize(x)
    eager_q, eager_scale = quantize_rows(x)
    assert torch.equal(x_q, eager_q) and torch.allclose(scale, eager_scale)
    acc = int8_matmul(x_q, x_q[:8].t())
    w_scale, bias = torch.rand(8), torch.randn(8)
    assert torch.allclose(kernels.rescale(acc, scale, w_scale, bias), quant.int8.rescale(acc, scale, w_scale, bias))


def test_absmax_quantize_is_per_slice_symmetric_quantization():
    x = _rows_of_different_scales()
    x[2] = 0.0                                                  # an all-zero row: codes 0, no NaN
    q, scale = absmax_quantize(x, 8, dim=-1)
    reference = quantize(x, 8, symmetric=True, axis=0)
    assert torch.equal(q, reference.q) and q.dtype == torch.int8 and not q[2].any()
    columns, column_scale = absmax_quantize(x, 4, dim=0)        # one scale per column, 4 bits
    assert column_scale.shape == (1, x.shape[1]) and columns.abs().max() <= 7
    assert torch.equal(columns, quantize(x, 4, symmetric=True, axis=1).q)


def test_absmax_quantize_float16_scales_stay_within_half_a_step_and_in_range():
    x = torch.randn(64, 32) * torch.logspace(-3, 2, 64)[:, None]     # scales down to float16's subnormals
    for bits in (8, 4):
        q, scale = absmax_quantize(x, bits, scale_dtype=torch.float16)
        assert scale.dtype == torch.float16 and q.abs().max() <= 2 ** (bits - 1) - 1
        error = (x - q.float() * scale.float()).abs()
        assert torch.all(error <= scale.float() / 2 * (1 + 1e-3) + 1e-12)


def test_absmax_quantize_llama_cpp_rounds_halves_away_from_zero_and_unsigned_shifts_by_128():
    x = torch.tensor([[-127.0, -2.5, 0.5, 1.5, 127.0]])        # scale 1: the ties show the rounding
    assert absmax_quantize(x, 8)[0].tolist() == [[-127, -2, 0, 2, 127]]
    assert absmax_quantize(x, 8, llama_cpp=True)[0].tolist() == [[-127, -3, 1, 2, 127]]
    u8, _ = absmax_quantize(x, 8, unsigned=True)
    assert u8.dtype == torch.uint8 and u8.tolist() == [[1, 126, 128, 130, 255]]


def test_compiled_quantized_encoder_uses_fused_attention_and_matches_eager(tiny_classifier):
    model = tiny_classifier(n_layers=2)
    ids = torch.randint(1, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0                                             # a padded sequence
    eager = quantize_model(model).eval()
    compiled = quantize_model(model, compiled=True).eval()
    attentions = {type(m).__name__: m.attention for m in compiled.modules() if hasattr(m, "attention")}
    assert attentions == {"MultiHeadAttention": F.scaled_dot_product_attention}
    assert [layer._compiled_call_impl is not None for layer in layer_stack(compiled)] == [True, True]
    with torch.inference_mode():
        torch.testing.assert_close(compiled(ids, mask), eager(ids, mask), rtol=0.02, atol=0.02)
        other = compiled(ids[:2, :9], mask[:2, :9])             # another shape: compiled once for all shapes
    assert other.shape == (2, 2)


def test_fuse_for_inference_switches_hugging_face_bert_to_sdpa(tiny_bert):
    bert = tiny_bert()
    bert.set_attn_implementation("eager")
    fused = fuse_for_inference(quantize_model(bert))
    assert fused.config._attn_implementation == "sdpa" and len(layer_stack(fused)) == bert.config.num_hidden_layers


# ----------------------------------------------------------------------------------------------- int4
def test_pack_int4_layout_and_round_trip():
    assert pack_int4(torch.tensor([1, 2, 15, 0])).tolist() == [0x21, 0x0F]  # low nibble = even column
    codes = torch.randint(0, 16, (6, 32), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (6, 16) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


def test_pack_int4_errors():
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes in \[0, 15\]"):
        pack_int4(torch.tensor([3, 16]))
    with pytest.raises(TypeError, match="integer tensor"):
        pack_int4(torch.zeros(2))
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(2))


def test_int4_linear_group_error_bound_and_forward():
    torch.manual_seed(0)
    linear = nn.Linear(256, 48)
    layer = Int4Linear.from_linear(linear, group_size=64)
    w_hat = layer.dequantized_weight()
    groups_error = (linear.weight - w_hat).abs().reshape(48, 4, 64)
    assert torch.all(groups_error <= layer.scale / 2 * (1 + 1e-5))
    x = torch.randn(5, 256)
    assert torch.allclose(layer(x), F.linear(x, w_hat, linear.bias), atol=1e-5)
    fp32, packed = model_size_bytes(linear), model_size_bytes(Int4Linear.from_linear(linear, group_size=128))
    assert fp32 / packed >= 7  # 4 bits + a float32 scale and a uint8 zero point per group of 128 (bias stays float)
    with pytest.raises(ValueError, match="group_size must be even and divide in_features=256, got 100"):
        Int4Linear.from_linear(linear, group_size=100)


# ---------------------------------------------------------------------------------------- quantize_model
def test_quantize_model_on_minilib_classifier(tiny_classifier):
    model = tiny_classifier()
    ids = torch.randint(1, 100, (4, 10))
    q8 = quantize_model(model, bits=8, skip=("head",)).eval()
    assert type(q8.head) is nn.Linear and type(model.encoder.layers[0].ffn.up) is nn.Linear  # a copy by default
    assert isinstance(q8.encoder.layers[0].ffn.up, QuantLinear)
    assert isinstance(q8.encoder.layers[0].attn.q_proj, ProjectionSlice)
    with torch.no_grad():
        reference = model(ids)
        assert torch.allclose(q8(ids), reference, atol=0.05)
        assert torch.allclose(quantize_model(model, bits=4, group_size=32)(ids), reference, atol=0.15)


def test_fused_qkv_equals_separate_projections(tiny_classifier):
    model = tiny_classifier()
    ids = torch.randint(1, 100, (3, 12))
    with torch.no_grad():
        fused = quantize_model(model, 8, fuse_qkv=True)(ids)
        separate = quantize_model(model, 8, fuse_qkv=False)(ids)
    assert torch.allclose(fused, separate, atol=1e-5)


def test_shared_projections_with_different_inputs_like_cross_attention():
    torch.manual_seed(0)
    linears = [nn.Linear(16, 8) for _ in range(3)]
    shared = SharedInputProjections.from_linears(linears)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    outputs = [shared.project(x, 0), shared.project(context, 1), shared.project(context, 2)]
    for out, linear, inp in zip(outputs, linears, (x, context, context)):
        assert torch.allclose(out, QuantLinear.from_linear(linear)(inp), atol=1e-5)
    assert shared._input is None  # nothing kept alive after all three were handed out


def test_quantize_model_errors(tiny_classifier):
    with pytest.raises(ValueError, match="has no nn.Linear layers to quantize"):
        quantize_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="bits=8 .* or bits=4 .* got 6"):
        quantize_model(tiny_classifier(), bits=6)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        quantize_model("bert")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(tiny_classifier(), skip=("*",))


def test_real_minilm_int8_keeps_sentence_embeddings():
    from minilib.deploy.hf import load_minilm, sentence_embeddings
    bert, tokenizer = load_minilm()
    sentences = ["The film was not good at all.", "I loved the food, but the service was slow.",
                 "Quantized models store weights in eight bits.", "Stock prices fell after the announcement."]
    reference = sentence_embeddings(bert, tokenizer, sentences)
    q8 = quantize_model(bert, bits=8).eval()
    cosine = (sentence_embeddings(q8, tokenizer, sentences) * reference).sum(-1)
    assert cosine.min() >= 0.99
    assert sum(isinstance(m, QuantLinear) for m in q8.modules()) == 6 * 4 + 1  # fused QKV, out, up, down; pooler


# ---------------------------------------------------------------------------------- fake quant and QAT
def test_fake_quantize_forward_values_and_straight_through_gradient():
    x = torch.randn(4, 6, requires_grad=True)
    y = fake_quantize(x, 4, axis=0)
    assert torch.allclose(y, dequantize(quantize(x, 4, axis=0)))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_fake_quant_linear_simulates_quant_linear():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x = torch.randn(6, 32)
    with torch.no_grad():
        assert torch.allclose(FakeQuantLinear.from_linear(linear, 8, 8)(x), QuantLinear.from_linear(linear, weight_bits=8)(x), atol=1e-5)


def test_qat_recovers_what_2_bit_post_training_quantization_loses():
    """Two interleaved spirals (chapter 07's QAT example): 2-bit weights after training lose most of the accuracy;
    training through fake quantization recovers it. Accuracy, not the loss, is compared: with 2-bit weights the
    loss jumps between steps as weights cross a rounding boundary, differently for every thread count."""
    torch.manual_seed(0)
    angle = torch.rand(2000) * 3 * math.pi
    labels = torch.randint(0, 2, (2000,))
    radius = angle / (3 * math.pi)
    points = torch.stack([radius * torch.cos(angle + math.pi * labels), radius * torch.sin(angle + math.pi * labels)], 1)
    points += 0.02 * torch.randn(2000, 2)
    train_x, test_x, train_y, test_y = points[:1500], points[1500:], labels[:1500], labels[1500:]

    def train(net, lr, steps):
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(net(train_x), train_y).backward()
            optimizer.step()
        return accuracy(net)

    def accuracy(net):
        with torch.no_grad():
            return (net(test_x).argmax(-1) == test_y).float().mean().item()

    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    float_accuracy = train(model, 1e-2, 500)
    qat = prepare_qat(model, weight_bits=2, act_bits=8)
    assert isinstance(qat[0], FakeQuantLinear) and type(model[0]) is nn.Linear  # a copy
    post_training = accuracy(qat)
    assert float_accuracy > 0.95 and post_training < 0.8
    assert train(qat, 3e-3, 300) > max(0.9, float_accuracy - 0.05)


def test_prepare_qat_errors(tiny_classifier):
    with pytest.raises(ValueError, match="bits must be"):
        prepare_qat(tiny_classifier(), weight_bits=1)
    with pytest.raises(ValueError, match="no nn.Linear"):
        prepare_qat(nn.Sequential(nn.Tanh()))


# ------------------------------------------------------------------------------------ the experiment
def test_experiment_helpers_on_a_small_model(tiny_classifier):
    from minilib.experiments import ch07_quantization as experiment
    model = tiny_classifier(d_model=128, n_layers=1, d_ff=256)
    variants = experiment.quantized_variants(model)
    assert list(variants) == [experiment.FP32, experiment.TORCH_AO, experiment.INT8, experiment.INT4]
    fp32_bytes = experiment.linear_weight_bytes(model)
    assert fp32_bytes == sum(4 * p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    for name in (experiment.TORCH_AO, experiment.INT8):
        assert 3.5 < fp32_bytes / experiment.linear_weight_bytes(variants[name]) < 4
    assert fp32_bytes / experiment.linear_weight_bytes(variants[experiment.INT4]) > 6
    timing = experiment.latency(variants, batch=2, seq=8, warmup=0, repeats=1, vocab_size=100)
    assert set(timing.timings) == set(variants) and timing.ratio(experiment.FP32) == 1


def test_real_sentences_are_english_prose():
    from minilib.experiments.ch07_quantization import real_sentences
    sentences = real_sentences(10)
    assert len(sentences) == 10 and all(s[0].isupper() and 6 <= len(s.split()) <= 40 for s in sentences)
    with pytest.raises(ValueError, match="asked for 1000000"):
        real_sentences(1_000_000)


def test_profiles_sort_one_forward_into_kinds_of_work(tiny_classifier, tmp_path):
    from minilib.experiments import ch07_quantization as experiment

    assert experiment.operation_kind("aten::_int_mm") == "int8 GEMM"
    assert experiment.operation_kind("MatMulInteger") == "int8 GEMM"
    assert experiment.operation_kind("SkipLayerNormalization") == "LayerNorm"
    assert experiment.operation_kind("aten::flip") == "other"
    model = tiny_classifier()
    ids = torch.randint(1, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    fp32 = experiment.time_by_kind(lambda: model(ids, mask), repeats=2)
    int8 = experiment.time_by_kind(lambda: quantize_model(model)(ids, mask), repeats=2)
    assert fp32["float GEMM"] > 0 and "int8 GEMM" not in fp32 and int8["int8 GEMM"] > 0
    table = experiment.profile_table({"fp32": fp32, "int8": int8})
    assert table.splitlines()[0] == "| kind of work | fp32 | int8 |" and "**total (ms)**" in table
    pytest.importorskip("onnxruntime")
    from minilib.deploy.export import export_onnx

    path = export_onnx(model, ids[:1], mask[:1], tmp_path / "tiny.onnx")
    ort = experiment.onnx_time_by_kind(path, ids, mask, threads=1, repeats=2)
    assert ort.get("float GEMM", 0) > 0 and not list(tmp_path.glob("*profile*"))   # its trace file is removed


@pytest.mark.parametrize("weight_bits", [7, 8])
def test_minilm_in_int8_keeps_its_sentence_embeddings_with_the_weights_every_cpu_gets(weight_bits, monkeypatch):
    """Chapter 07's fidelity goal (cosine ≥ 0.99 to float32 on real sentences) with 8-bit weights (VNNI, AMX) and the
    7-bit ones a CPU with AVX2 alone gets: the same numbers whichever CPU runs this test."""
    from minilib.deploy.hf import load_minilm
    from minilib.experiments.ch07_quantization import FP32, INT8, embedding_cosines, real_sentences

    monkeypatch.setattr(quant.int8, "default_weight_bits", lambda: weight_bits)
    bert, tokenizer = load_minilm(attn_implementation="sdpa")
    quantized = quant.quantize_model(bert).eval()
    layers = [m for m in quantized.modules() if isinstance(m, quant.QuantLinear)]
    assert len(layers) == 6 * 4 + 1 and all(m.weight_bits == weight_bits for m in layers)  # Q/K/V fused; the pooler
    assert max(int(m.weight_q.to(torch.int16).abs().max()) for m in layers) == 2 ** (weight_bits - 1) - 1
    cosines = embedding_cosines({FP32: bert, INT8: quantized}, tokenizer, real_sentences(64))[INT8]
    assert cosines.min() >= 0.99, f"worst of 64 sentences: {cosines.min():.4f}"
