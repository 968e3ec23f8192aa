"""Chapter 14's rotary exercise: correct answers written differently pass; stubs, mistakes and shortcuts fail."""
import math

import pytest
import torch

from minilib.course.checks import check_decoder_parameters, check_gptq_layer, check_rotary, check_wanda_mask


def _angles(x, positions, base, exponent=2.0):
    half = x.shape[-1] // 2
    theta = base ** (-exponent * torch.arange(half, dtype=torch.float32) / x.shape[-1])
    return positions.float()[:, None] * theta                                  # (seq, d/2)


def rotate_halves(x, positions, base=10000.0, sign=1.0, exponent=2.0):
    """The reference answer, with switches for two plausible mistakes."""
    angles = _angles(x, positions, base, exponent)
    cos, sin = angles.cos().repeat(1, 2), sign * angles.sin().repeat(1, 2)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def rotate_with_complex_numbers(x, positions, base=10000.0):
    """Another correct answer: pair (i, i + d/2) as a complex number, multiplied by e^{i m θ_i} (in float64)."""
    half = x.shape[-1] // 2
    theta = torch.exp(-math.log(base) * torch.arange(0, x.shape[-1], 2, dtype=torch.float64) / x.shape[-1])
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions.double()[:, None] * theta)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def rotate_interleaved(x, positions, base=10000.0):
    """The RoPE paper's layout: pairs (2i, 2i + 1)."""
    angles = _angles(x, positions, base)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * angles.cos() - odd * angles.sin(), odd * angles.cos() + even * angles.sin()], -1).flatten(-2)


def test_correct_answers_pass(stub):
    assert check_rotary(rotate_halves)
    assert check_rotary(rotate_with_complex_numbers)
    assert not check_rotary(stub)


@pytest.mark.parametrize("mistake, named", [
    (rotate_interleaved, "2i and 2i+1"),
    (lambda x, p, base: rotate_halves(x, p, base, sign=-1.0), "turns the wrong way"),
    (lambda x, p, base: rotate_halves(x, p, base, exponent=1.0), "factor 2"),
    (lambda x, p, base: rotate_halves(x, torch.arange(len(p)), base), "positions you are given"),
    (lambda x, p, base: rotate_halves(x, p), "base^(-2i/d)"),                         # base ignored: always 10000
    (lambda x, p, base: x, "pair i is dimensions i and i + d/2"),
    (lambda x, p, base: rotate_halves(x, p, base)[..., :-1], "a tensor of x's shape"),
])
def test_mistakes_fail_and_are_named(mistake, named, capsys):
    assert not check_rotary(mistake)
    assert named in capsys.readouterr().out


def test_the_library_is_refused(capsys):
    from transformers.models.llama import modeling_llama

    from minilib.rotary import RotaryEmbedding, apply_rotary

    def with_ours(x, positions, base):
        return apply_rotary(x, *RotaryEmbedding(x.shape[-1], base)(positions))

    def with_hugging_face(x, positions, base):
        cos, sin = (t.repeat(1, 2) for t in (_angles(x, positions, base).cos(), _angles(x, positions, base).sin()))
        return modeling_llama.apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=0)[0]

    def half_turn_by_a_computed_name(x, positions, base):   # the library's rotate_half, found by getattr
        import minilib.rotary

        angles = _angles(x, positions, base).repeat(1, 2)
        return x * angles.cos() + getattr(minilib.rotary, "rotate_" + "half")(x) * angles.sin()

    for shortcut, label in ((with_ours, "minilib.rotary"), (with_hugging_face, "apply_rotary_pos_emb"),
                            (half_turn_by_a_computed_name, "minilib.rotary")):
        assert not check_rotary(shortcut)
        assert label in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ exercise 14.4
def count_by_formula(config):
    """The model answer: embeddings (once when tied), per block attention, SwiGLU and two gains, the final gain."""
    attention = config.d_model * config.head_dim * (2 * config.n_heads + 2 * config.n_kv_heads)
    block = attention + 3 * config.d_model * config.d_ff + 2 * config.d_model
    tables = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
    return tables + config.n_layers * block + config.d_model


def count_matrix_by_matrix(config):
    """Another correct answer: every weight's shape listed, then multiplied out (a float result is accepted)."""
    d, hd = config.d_model, config.head_dim
    shapes = [(d, config.n_heads * hd), (d, config.n_kv_heads * hd), (d, config.n_kv_heads * hd),
              (config.n_heads * hd, d), (d, config.d_ff), (d, config.d_ff), (config.d_ff, d), (d, 1), (d, 1)]
    per_block = sum(rows * cols for rows, cols in shapes)
    heads = [(config.vocab_size, d)] * (1 if config.tie_embeddings else 2)
    return float(config.n_layers * per_block + sum(r * c for r, c in heads) + d)


def test_decoder_parameter_counts_pass(stub):

    assert check_decoder_parameters(count_by_formula)
    assert check_decoder_parameters(count_matrix_by_matrix)
    assert not check_decoder_parameters(stub)


def _variant(**changes):
    """count_by_formula with one plausible miscount."""
    def count(c):
        d, hd = c.d_model, changes.get("head_dim", lambda c: c.head_dim)(c)
        kv = changes.get("kv", lambda c: c.n_kv_heads)(c)
        attention = d * hd * (2 * c.n_heads + 2 * kv)
        block = attention + changes.get("ffn", 3) * d * c.d_ff + changes.get("gains", 2) * d
        tables = c.vocab_size * d * changes.get("tables", lambda c: 1 if c.tie_embeddings else 2)(c)
        return tables + c.n_layers * block + changes.get("final", 1) * d + changes.get("extra", lambda c: 0)(c)
    return count


@pytest.mark.parametrize("miscount, named", [
    (_variant(tables=lambda c: 2), "count it once"),
    (_variant(tables=lambda c: 1), "count it once"),
    (_variant(kv=lambda c: c.n_heads), "n_kv_heads heads"),
    (_variant(head_dim=lambda c: c.d_model // c.n_heads), "need not be d_model / n_heads"),
    (_variant(gains=0, final=0), "two RMSNorm gains"),
    (_variant(final=0), "the final norm"),
    (_variant(ffn=2), "three matrices"),
    (_variant(extra=lambda c: c.max_len * c.d_model), "no position table"),
    (_variant(extra=lambda c: 7), "embeddings V·d"),
])
def test_decoder_parameter_miscounts_are_named(miscount, named, capsys):

    assert not check_decoder_parameters(miscount)
    assert named in capsys.readouterr().out


def test_decoder_parameters_refuses_building_the_model(capsys):
    import torch

    from minilib.llama import LlamaDecoder

    def built_on_meta(config):
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaDecoder(config).parameters())

    def built_small_for_real(config):   # torch alone: a tensor as large as the embedding table
        return torch.zeros(config.vocab_size, config.d_model).numel() * 0 + count_by_formula(config)

    assert not check_decoder_parameters(built_on_meta)
    assert "minilib" in capsys.readouterr().out
    assert not check_decoder_parameters(built_small_for_real)
    assert "count from the sizes" in capsys.readouterr().out

# ------------------------------------------------------------------------------------------ compression: build it
def gptq_in_place(weight, hessian, grid, damp=0.01):
    """The model answer: GPTQ's sweep one column at a time, the Cholesky rows of H⁻¹ pushing each error forward."""
    W = weight.clone()
    H = hessian + damp * hessian.diagonal().mean() * torch.eye(len(hessian))
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for j in range(W.shape[1]):
        q = grid.round(W[:, j], j)
        error = (W[:, j] - q) / U[j, j]
        W[:, j:] -= error[:, None] * U[j, j:]
        W[:, j] = q
    return W


def gptq_by_obs(weight, hessian, grid, damp=0.01):
    """Another correct answer: the paper's equations 2 and 3 with an explicit inverse, updated after each column."""
    W = weight.double().clone()
    H_inv = torch.linalg.inv(hessian.double() + damp * hessian.diagonal().mean() * torch.eye(len(hessian)))
    for j in range(W.shape[1]):
        q = grid.round(W[:, j].float(), j).double()
        W[:, j + 1:] -= ((W[:, j] - q) / H_inv[j, j])[:, None] * H_inv[j, j + 1:]
        W[:, j] = q
        H_inv -= torch.outer(H_inv[:, j], H_inv[j]) / H_inv[j, j]
    return W.float()


def gptq_in_blocks(weight, hessian, grid, damp=0.01, block=64):
    """A third: lazy batches, as the paper's section 3 and the library do it."""
    W = weight.clone()
    H = hessian.double() + damp * hessian.diagonal().mean() * torch.eye(len(hessian))
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).float()            # inverted in float64
    for start in range(0, W.shape[1], block):
        end = start + block
        errors = torch.zeros(W.shape[0], block)
        for i, j in enumerate(range(start, end)):
            q = grid.round(W[:, j], j)
            errors[:, i] = (W[:, j] - q) / U[j, j]
            W[:, j:end] -= errors[:, i:i + 1] * U[j, j:end]
            W[:, j] = q
        W[:, end:] -= errors @ U[start:end, end:]
    return W


def no_damping(weight, hessian, grid):
    return gptq_in_place(weight, hessian, grid, damp=0.0)


def inverted_in_float32(weight, hessian, grid):
    """GPTQ with H⁻¹ from torch.linalg.inv in float32: its smallest eigenvalues are lost, and the Cholesky factor of
    it fails on the singular case (H from 64 tokens) on an AVX2 CPU; an AVX-512 CPU's float32 kernels happen to
    keep them. So the failure is raised as PyTorch words it, on every CPU: the check must name its cure."""
    raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be completed because the input is "
                                   "not positive-definite (the leading minor of order 97 is not positive-definite).")


def keep_largest(scores, sparsity):
    kept = scores.topk(scores.shape[1] - round(sparsity * scores.shape[1]), dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, kept, True)


def wanda_by_topk(weight, inputs, sparsity):
    """The model answer: keep the largest scores of each row."""
    return keep_largest(weight.abs() * inputs.norm(dim=0), sparsity)


def wanda_by_threshold(weight, inputs, sparsity):
    """Another: each row's threshold, the k-th smallest score."""
    scores = weight.abs() * torch.sqrt((inputs ** 2).sum(0))
    k = round(sparsity * weight.shape[1])
    return scores > scores.kthvalue(k, dim=1, keepdim=True).values


def test_gptq_answers_pass(stub):
    for answer in (gptq_in_place, gptq_by_obs, gptq_in_blocks):
        assert check_gptq_layer(answer), answer.__name__
    assert not check_gptq_layer(stub)


@pytest.mark.parametrize("mistake, named", [
    (lambda w, h, grid: grid.round(w), "round-to-nearest's weights"),
    (no_damping, "damping"),
    (inverted_in_float32, "float64"),
    (lambda w, h, grid: gptq_in_place(w, h, grid) + 1e-3, "between levels"),
    (lambda w, h, grid: gptq_in_place(w, h, grid)[:, :-1], "a weight of shape"),
])
def test_gptq_mistakes_fail_and_are_named(mistake, named, capsys):
    assert not check_gptq_layer(mistake)
    assert named in capsys.readouterr().out


def test_gptq_libraries_are_refused(refused):
    from minilib.quant.gptq import gptq_weight

    def with_ours(weight, hessian, grid):
        codes, grid = gptq_weight(weight, hessian, grid.bits, grid.group_size)
        return grid.dequantize(codes)

    def with_llmcompressor(weight, hessian, grid):
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

        args = QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=128)
        return quantize_weight(weight[None], hessian[None], grid.scale[None], grid.zero[None] - 8, None, args)[0][0]

    def through_the_course(weight, hessian, grid):
        from minilib.experiments.llm_compression import llmcompressor_gptq_weight
        return llmcompressor_gptq_weight(weight, hessian, grid)

    refused(check_gptq_layer, with_ours, "minilib.quant.gptq")
    refused(check_gptq_layer, with_llmcompressor, "llmcompressor")
    refused(check_gptq_layer, through_the_course, "minilib.experiments.llm_compression")


def test_wanda_answers_pass(stub):
    assert check_wanda_mask(wanda_by_topk) and check_wanda_mask(wanda_by_threshold)
    assert not check_wanda_mask(stub)


@pytest.mark.parametrize("mistake, named", [
    (lambda w, x, s: keep_largest(w.abs(), s), "|W| alone"),
    (lambda w, x, s: keep_largest(w.abs() * x.square().sum(0), s), "not its square"),
    (lambda w, x, s: keep_largest(w.abs() * x.abs().mean(0), s), "not the mean of |x|"),
    (lambda w, x, s: ~wanda_by_topk(w, x, s), "True means kept"),
    (lambda w, x, s: (w.abs() * x.norm(dim=0)) > (w.abs() * x.norm(dim=0)).quantile(s), "within each output row"),
    (lambda w, x, s: wanda_by_topk(w, x, s).float(), "a bool tensor"),
])
def test_wanda_mistakes_fail_and_are_named(mistake, named, capsys):
    assert not check_wanda_mask(mistake)
    assert named in capsys.readouterr().out


def test_wanda_libraries_are_refused(refused):
    from minilib.prune.wanda import wanda_mask

    def with_llmcompressor(weight, inputs, sparsity):
        from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data.copy_(weight)
        return sparsify_weight(layer, {layer: inputs.square().sum(0)}, sparsity, 0, 0) != 0

    refused(check_wanda_mask, lambda w, x, s: wanda_mask(w, x.norm(dim=0), s), "minilib.prune.wanda")
    refused(check_wanda_mask, with_llmcompressor, "llmcompressor")
