"""Chapter 10's Triton model repository: its config.pbtxt agrees with the exported ONNX model (no server started)."""
from pathlib import Path

import onnx
import pytest
import torch

from minilib.deploy.export import LogitsOnly, export_onnx
from minilib.deploy.hf import minilm_path
from minilib.deploy.serving import MINILM_CONFIG as CONFIG
from minilib.deploy.serving import parse_pbtxt, triton_repository, verify_triton_config

# the ONNX element types as the onnx package names them, and Triton's names for them: written out independently
ONNX_TO_TRITON = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """Chapter 10's exported classifier: a BERT sequence classifier with MiniLM's configuration (1 layer, to be quick)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(minilm_path(), num_labels=2, num_hidden_layers=1)
    model = LogitsOnly(BertForSequenceClassification(config)).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    return export_onnx(model, ids, torch.ones_like(ids), tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_parse_pbtxt_reads_nested_messages_lists_comments_and_repeated_fields():
    text = '''
    name: "a \\"quoted\\" name"   # a comment
    max_batch_size: 8
    input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
    output { name: "y" dims: [ 2 ] }
    output { name: "z" dims: [ 1 ] }
    dynamic_batching { max_queue_delay_microseconds: 100 }
    parameters { key: "ratio" value: 0.5 }
    '''
    assert parse_pbtxt(text) == {
        "name": 'a "quoted" name', "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
        "output": [{"name": "y", "dims": [2]}, {"name": "z", "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "parameters": {"key": "ratio", "value": 0.5}}


@pytest.mark.parametrize("text, message", [("input [ { name: \"x\" }", "never closed"),
                                           ("input { name: \"x\"", "never closed"),
                                           ("name:", "has no value"), ("1: 2", "expected a field name")])
def test_parse_pbtxt_rejects_malformed_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pbtxt(text)


def test_committed_config_matches_the_onnx_graph(onnx_model):
    config = parse_pbtxt(CONFIG.read_text(encoding="utf-8"))
    assert config["name"] == "minilm" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] >= 1 and config["dynamic_batching"]["preferred_batch_size"]
    assert max(config["dynamic_batching"]["preferred_batch_size"]) <= config["max_batch_size"]
    graph = onnx.load(str(onnx_model)).graph
    for kind, tensors in (("input", graph.input), ("output", graph.output)):
        declared = {entry["name"]: entry for entry in config[kind]}
        assert set(declared) == {tensor.name for tensor in tensors}
        for tensor in tensors:
            entry, tensor_type = declared[tensor.name], tensor.type.tensor_type
            assert entry["data_type"] == ONNX_TO_TRITON[tensor_type.elem_type], tensor.name
            graph_dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
            assert graph_dims[0] == -1, f"{tensor.name}: the batch dimension must be dynamic for dynamic batching"
            assert entry["dims"] == graph_dims[1:], tensor.name    # Triton's dims leave out the batch dimension
    assert verify_triton_config(CONFIG.read_text(encoding="utf-8"), onnx_model)["name"] == "minilm"


@pytest.mark.parametrize("change, message", [
    (("data_type: TYPE_INT64\n    dims: [ -1 ]              # sequence", "data_type: TYPE_INT32\n    dims: [ -1 ]"),
     "input 'input_ids': data_type should be TYPE_INT64 (ONNX tensor(int64)), got TYPE_INT32"),
    (("dims: [ 2 ]", "dims: [ 3 ]"), "output 'logits': dims[0] should be 2, got 3"),
    (("dims: [ 2 ]", "dims: [ -1, 2 ]"), "output 'logits': dims should have 1 entries"),
    (("dims: [ -1 ]              # sequence length: variable", "dims: [ 128 ]"),
     "input 'input_ids': dims[0] is variable in the ONNX model ('seq'); it must be -1, got 128"),
    (('name: "attention_mask"', 'name: "mask"'), "input 'attention_mask' of the ONNX model is missing"),
    (('name: "logits"', 'name: "scores"'), "output 'scores' is configured but the ONNX model has no such output"),
    (("max_batch_size: 32", "max_batch_size: 0"), "dims should have 2 entries for ONNX shape ['batch', 'seq']"),
])
def test_a_config_that_disagrees_with_the_model_is_refused_with_the_reason(onnx_model, change, message, tmp_path):
    old, new = change
    text = CONFIG.read_text(encoding="utf-8")
    assert old in text
    with pytest.raises(ValueError, match="config.pbtxt does not match model.onnx") as error:
        verify_triton_config(text.replace(old, new, 1), onnx_model)
    assert message in str(error.value)
    broken = tmp_path / "config.pbtxt"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ValueError):
        triton_repository(onnx_model, tmp_path / "repo", broken)
    assert not (tmp_path / "repo").exists()


def test_triton_repository_lays_out_name_version_and_model(onnx_model, tmp_path):
    repo = triton_repository(onnx_model, tmp_path / "model_repository", CONFIG)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "minilm", "minilm/1", "minilm/1/model.onnx", "minilm/config.pbtxt"]
    assert (repo / "minilm" / "1" / "model.onnx").read_bytes() == Path(onnx_model).read_bytes()
    assert (repo / "minilm" / "config.pbtxt").read_text(encoding="utf-8") == CONFIG.read_text(encoding="utf-8")
