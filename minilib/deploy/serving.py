"""Serving an exported model with NVIDIA Triton Inference Server: the model repository and its ``config.pbtxt``.

Triton serves every model found in a *model repository*, a folder laid out as::

    model_repository/
      minilm/                  # the model's name, as clients call it
        config.pbtxt           # inputs, outputs, batching, instances (protobuf text format)
        1/                     # version 1
          model.onnx           # the file minilib.deploy.export.export_onnx wrote

and is started with ``tritonserver --model-repository=model_repository`` (in NVIDIA's container; nothing
here starts a server). The configuration must agree with the ONNX graph: the same input and output names,
the same data types, and the same dimensions **without the batch dimension** when ``max_batch_size > 0``
(Triton adds it, and its dynamic batcher stacks the requests it receives into one batch).

    repo = triton_repository("model.onnx", "model_repository", MINILM_CONFIG)
    verify_triton_config((repo / "minilm" / "config.pbtxt").read_text(), "model.onnx")   # raises on a mismatch

:data:`MINILM_CONFIG` is the configuration chapter 10 serves its exported MiniLM student with; it ships inside the
package (``minilib/deploy/model_repository/``), so a notebook finds it wherever it runs.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

MINILM_CONFIG = Path(__file__).resolve().parent / "model_repository" / "minilm" / "config.pbtxt"
# ONNX Runtime's type names → Triton's data_type enum
TRITON_TYPES = {"tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(float)": "TYPE_FP32",
                "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL",
                "tensor(int8)": "TYPE_INT8", "tensor(uint8)": "TYPE_UINT8"}
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,#"]+))')


def parse_pbtxt(text: str) -> dict:
    """A protobuf text-format message (a Triton ``config.pbtxt``) as nested dicts.

    ``name: "minilm"`` → ``{"name": "minilm"}``; ``dims: [ -1 ]`` and ``input [ {…}, {…} ]`` → lists; a field
    written twice also becomes a list. Numbers become int or float, enum values (``TYPE_INT64``) stay strings.
    Enough for model configurations, not a general protobuf parser. Raises ValueError on malformed text.
    """
    tokens = _tokenize(text)
    message, _ = _message(tokens, 0, closing=None)
    return message


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip():
                raise ValueError(f"config.pbtxt: cannot read {text[position:position + 20]!r} at character {position}")
            break
        comment, string, punctuation, word = match.groups()
        if not comment and (string or punctuation or word):
            tokens.append(string or punctuation or word)
        position = match.end()
    return tokens


def _message(tokens: list[str], i: int, closing: str | None) -> tuple[dict, int]:
    """Fields from tokens[i] up to ``closing`` ("}" or the end); returns the dict and the index after it."""
    fields: dict = {}
    while i < len(tokens) and tokens[i] != closing:
        name = tokens[i]
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"config.pbtxt: expected a field name, got {name!r}")
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        value, i = _value(tokens, i)
        if name in fields:                       # a repeated field written twice
            previous = fields[name] if isinstance(fields[name], list) else [fields[name]]
            value = previous + (value if isinstance(value, list) else [value])
        fields[name] = value
    if closing is not None and i >= len(tokens):
        raise ValueError(f"config.pbtxt: a '{{' is never closed with '{closing}'")
    return fields, i + 1


def _value(tokens: list[str], i: int):
    if i >= len(tokens):
        raise ValueError("config.pbtxt: a field has no value")
    token = tokens[i]
    if token == "{":
        return _message(tokens, i + 1, closing="}")
    if token == "[":
        values, i = [], i + 1
        while i < len(tokens) and tokens[i] != "]":
            value, i = _value(tokens, i)
            values.append(value)
            if i < len(tokens) and tokens[i] == ",":
                i += 1
        if i >= len(tokens):
            raise ValueError("config.pbtxt: a '[' is never closed with ']'")
        return values, i + 1
    return _scalar(token), i + 1


def _scalar(token: str):
    if token.startswith('"'):
        return token[1:-1].encode().decode("unicode_escape")
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token  # an enum value or true/false


def verify_triton_config(config_text: str, onnx_path) -> dict:
    """Check a ``config.pbtxt`` against the ONNX model it serves; return the parsed configuration.

    Compares every input and output of the graph (as ONNX Runtime reads it) with the configuration:
    names, data types, and dimensions (without the batch dimension when ``max_batch_size > 0``; a
    configuration dimension of -1 stands for a variable one). Raises ValueError listing every mismatch.
    """
    import onnxruntime as ort

    config = parse_pbtxt(config_text)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batched = int(config.get("max_batch_size", 0)) > 0
    problems = []
    for kind, graph_tensors in (("input", session.get_inputs()), ("output", session.get_outputs())):
        declared = {entry.get("name"): entry for entry in _as_list(config.get(kind, []))}
        for tensor in graph_tensors:
            entry = declared.pop(tensor.name, None)
            if entry is None:
                problems.append(f"{kind} {tensor.name!r} of the ONNX model is missing from the configuration")
                continue
            problems += _tensor_problems(kind, tensor, entry, batched)
        problems += [f"{kind} {name!r} is configured but the ONNX model has no such {kind}" for name in declared]
    if problems:
        raise ValueError(f"config.pbtxt does not match {Path(onnx_path).name}:\n- " + "\n- ".join(problems))
    return config


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _tensor_problems(kind: str, tensor, entry: dict, batched: bool) -> list[str]:
    """What differs between one ONNX Runtime tensor description and its configuration entry."""
    problems, where = [], f"{kind} {tensor.name!r}"
    expected_type = TRITON_TYPES.get(tensor.type, f"(no Triton type for {tensor.type})")
    if entry.get("data_type") != expected_type:
        problems.append(f"{where}: data_type should be {expected_type} (ONNX {tensor.type}), got {entry.get('data_type')}")
    shape = list(tensor.shape[1:] if batched else tensor.shape)   # Triton adds the batch dimension itself
    dims = _as_list(entry.get("dims", []))
    if len(dims) != len(shape):
        problems.append(f"{where}: dims should have {len(shape)} entries for ONNX shape {list(tensor.shape)}"
                        f"{' minus the batch dimension' if batched else ''}, got {dims}")
    else:
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(size, int) and dim not in (size, -1):
                problems.append(f"{where}: dims[{axis}] should be {size}, got {dim}")
            if not isinstance(size, int) and dim != -1:
                problems.append(f"{where}: dims[{axis}] is variable in the ONNX model ({size!r}); it must be -1, got {dim}")
    return problems


def triton_repository(onnx_path, folder, config_path, version: int = 1) -> Path:
    """Lay out a Triton model repository in ``folder``: ``<name>/config.pbtxt`` and ``<name>/<version>/model.onnx``.

    The model's name is the ``name`` field of the configuration at ``config_path``; the configuration is
    checked against the ONNX file first (:func:`verify_triton_config`), so a mismatch fails here, not in the
    server's log. Returns ``folder``.
    """
    config_text = Path(config_path).read_text(encoding="utf-8")
    config = verify_triton_config(config_text, onnx_path)
    if not config.get("name"):
        raise ValueError(f"{config_path}: the configuration has no name: add a line such as name: \"minilm\"")
    model = Path(folder) / config["name"]
    (model / str(version)).mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(config_text, encoding="utf-8")
    shutil.copyfile(onnx_path, model / str(version) / "model.onnx")
    return Path(folder)
