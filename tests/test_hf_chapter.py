"""Chapter 10's pieces: the Hugging Face quick-start example offline, and the ONNX export round trip (minilib.deploy.export)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from minilib.course.checks.ch10_huggingface import TEXTS, _tokenizer, padded_texts, tiny_bert
from minilib.deploy.export import LogitsOnly, OnnxClassifier, export_onnx

SEED_EXAMPLE = textwrap.dedent("""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from minilib.deploy.hf import minilm_path

    model_name = minilm_path()
    model = AutoModelForSequenceClassification.from_pretrained(model_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)

    text = "This is a great movie!"
    inputs = tokenizer(text, return_tensors="pt")
    outputs = model(**inputs)
    predicted_class_id = outputs.logits.argmax().item()
    print(f"Predicted class: {model.config.id2label[predicted_class_id]}")
""")


def test_seed_example_runs_offline():
    """The seed's code, unchanged but for the model path, in a fresh interpreter with the hub switched off."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", SEED_EXAMPLE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() in ("Predicted class: LABEL_0", "Predicted class: LABEL_1")


def test_logits_only_returns_the_hf_logits():
    model = tiny_bert()
    batch = _tokenizer()(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
        got = LogitsOnly(model)(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(got, expected)


def test_onnx_round_trip_with_other_batch_and_length(tmp_path):
    model = LogitsOnly(tiny_bert()).train()
    ids, mask = padded_texts()
    path = export_onnx(model, ids[:2, :4], mask[:2, :4], tmp_path / "sub" / "tiny.onnx")  # traced at (2, 4)
    assert not model.training  # exported, and left, in eval mode: no dropout in the graph
    onnx_model = OnnxClassifier(path, threads=1)
    with torch.no_grad():
        expected = model(ids, mask)  # (6, longest): other batch size and length than traced, with padding
    torch.testing.assert_close(onnx_model(ids, mask), expected, atol=1e-4, rtol=1e-4)
    assert onnx_model.size_bytes == path.stat().st_size > 0


def test_export_bad_input(tmp_path):
    model = LogitsOnly(tiny_bert())
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, seq\) tensor"):
        export_onnx(model, torch.ones(5, dtype=torch.long), torch.ones(5, dtype=torch.long), tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxClassifier(tmp_path / "missing.onnx")
