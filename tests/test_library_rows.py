"""The library reference rows (torchao, torch.ao, ONNX Runtime int8) on tiny models, and the 'not available' path."""
import sys

import pytest
import torch
from torch import nn

from minilib.experiments import library_rows
from minilib.experiments.library_rows import (
    TORCH_AO_DEPRECATED,
    TORCHAO_INT4_WEIGHTS,
    TORCHAO_INT8_DYNAMIC,
    TORCHAO_INT8_WEIGHTS,
    onnx_dynamic_int8,
    torch_ao_dynamic,
    torchao_variants,
)
from minilib.support.bench import model_size_bytes
from minilib.support.optional import NotAvailable, Unavailable, optional_row, require, runnable


def _mlp():
    """Two linear layers whose input width (256) is a multiple of int4's group of 128."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).eval()


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_every_library_row_is_close_to_float_and_smaller():
    model = _mlp()
    x = torch.randn(64, 256)
    variants = {TORCH_AO_DEPRECATED: torch_ao_dynamic(model), **torchao_variants(model)}
    assert list(variants) == [TORCH_AO_DEPRECATED, TORCHAO_INT8_DYNAMIC, TORCHAO_INT8_WEIGHTS, TORCHAO_INT4_WEIGHTS]
    with torch.no_grad():
        expected = model(x)
        for name, quantized in variants.items():
            assert not isinstance(quantized, Unavailable), str(quantized)
            assert _cosine(quantized(x), expected) > (0.99 if "int4" in name else 0.999), name
    size = {name: model_size_bytes(m) for name, m in variants.items()}
    float_size = model_size_bytes(model)
    assert float_size / size[TORCHAO_INT8_DYNAMIC] > 3.5       # int8 weights + one scale per row
    assert float_size / size[TORCHAO_INT4_WEIGHTS] > 5         # two weights a byte + a scale and zero per 128
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.dtype == torch.float32  # input untouched


def test_missing_torchao_gives_not_available_rows_and_torch_ao_still_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)            # `import torchao` now raises ImportError
    variants = torchao_variants(_mlp())
    assert isinstance(torch_ao_dynamic(_mlp()), nn.Module)                 # PyTorch's own row needs no torchao
    for name in (TORCHAO_INT8_DYNAMIC, TORCHAO_INT8_WEIGHTS, TORCHAO_INT4_WEIGHTS):
        row = variants[name]
        assert isinstance(row, Unavailable)
        assert str(row).startswith(f"{name}: not available here (ModuleNotFoundError: import of torchao halted")
        assert str(row).endswith("pip install torchao (0.18 matches torch 2.13)")


def test_optional_row_reports_missing_tools_and_lets_bugs_through():
    with pytest.raises(NotAvailable, match="No module named 'no_such_module_here'"):
        require("no_such_module_here", "pip install it")
    row = optional_row("x", lambda: require("no_such_module_here", "pip install it"))
    assert str(row) == "x: not available here (ModuleNotFoundError: No module named 'no_such_module_here'); pip install it"
    assert optional_row("y", lambda: 42) == 42
    assert runnable({"x": row, "y": 42}) == {"y": 42}
    with pytest.raises(ZeroDivisionError):
        optional_row("z", lambda: 1 / 0)
    with pytest.raises(ValueError, match="kind must be one of"):
        library_rows.torchao_config("int3")


def test_onnx_runtime_int8_of_a_tiny_bert(tmp_path, tiny_bert):
    from transformers import BertForSequenceClassification

    from minilib.course.checks.ch10_huggingface import _tokenizer, padded_texts
    from minilib.deploy.export import LogitsOnly, OnnxClassifier, export_onnx

    model = LogitsOnly(tiny_bert(BertForSequenceClassification, vocab_size=_tokenizer().vocab_size, hidden_size=128,
                                 num_attention_heads=2, intermediate_size=256, num_labels=2)).eval()
    ids, mask = padded_texts()
    path = export_onnx(model, ids[:2, :4], mask[:2, :4], tmp_path / "tiny.onnx")
    int8_path = onnx_dynamic_int8(path)
    assert int8_path == tmp_path / "tiny.int8.onnx"
    float_onnx, int8_onnx = OnnxClassifier(path, threads=1), OnnxClassifier(int8_path, threads=1)
    assert int8_onnx.size_bytes < float_onnx.size_bytes / 2          # the embeddings (30522 × 128) are int8 too
    assert _cosine(int8_onnx(ids, mask), float_onnx(ids, mask)) > 0.99
    with pytest.raises(ValueError, match="onnx_path must be an existing .onnx file"):
        onnx_dynamic_int8(tmp_path / "missing.onnx")


def test_missing_onnxruntime_gives_a_not_available_row(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    row = optional_row("ONNX Runtime int8", lambda: onnx_dynamic_int8(tmp_path / "x.onnx"), library_rows.ORT_HINT)
    assert str(row) == "ONNX Runtime int8: not available here (ModuleNotFoundError: import of onnxruntime halted; " \
                       "None in sys.modules); pip install onnxruntime"


@pytest.mark.parametrize("has_torchao", [True, False])
def test_chapter_07_experiment_with_torchao_rows(monkeypatch, has_torchao, tiny_classifier):
    from minilib.experiments import ch07_quantization as quant_runs

    if not has_torchao:
        monkeypatch.setitem(sys.modules, "torchao", None)
    model = tiny_classifier(d_model=128, n_layers=1, d_ff=256)
    variants = quant_runs.quantized_variants(model, torchao=True)
    torchao_rows = [TORCHAO_INT8_DYNAMIC, TORCHAO_INT8_WEIGHTS, TORCHAO_INT4_WEIGHTS]
    assert list(variants)[-3:] == torchao_rows
    assert all(isinstance(variants[row], Unavailable) != has_torchao for row in torchao_rows)
    timing = quant_runs.latency(variants, batch=2, seq=8, warmup=0, repeats=1, vocab_size=100)
    assert set(timing.timings) == set(runnable(variants))        # the Unavailable rows are not timed
    assert set(quant_runs.sizes_mb(variants)) == set(runnable(variants))
    if has_torchao:
        fp32_bytes = quant_runs.linear_weight_bytes(model)
        assert 3.5 < fp32_bytes / quant_runs.linear_weight_bytes(variants[TORCHAO_INT8_DYNAMIC]) < 4
