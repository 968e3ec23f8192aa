"""Chapter 10's exercise checks pass correct answers however they are written, and fail stubs, mistakes (Adam for
AdamW, an encoder left trainable, a fixed export shape) and the course's own export and training helpers."""
import warnings

import torch

from minilib.course.checks import (
    check_fine_tune_head_and_export,
    check_freeze_all_but_top,
    check_onnx_logits,
    check_predict_label,
)


def predict_label(model, tokenizer, text):
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt")).logits
    return model.config.id2label[logits.argmax(dim=-1).item()]


def test_predict_label(stub, refused):
    from transformers import pipeline

    assert check_predict_label(predict_label)
    assert check_predict_label(lambda model, tokenizer, text:            # Hugging Face's pipeline: fine here
                               pipeline("text-classification", model=model, tokenizer=tokenizer)(text)[0]["label"])
    assert not check_predict_label(stub)

    def class_id(model, tokenizer, text):
        return model(**tokenizer(text, return_tensors="pt")).logits.argmax().item()

    def always_first_label(model, tokenizer, text):
        return model.config.id2label[0]

    refused(check_predict_label, class_id, "id2label")
    refused(check_predict_label, always_first_label, "label of")


def freeze_all_but_top(model, n_top, include_pooler=True, slice_from_end=False):
    for p in model.parameters():
        p.requires_grad = False
    layers = model.bert.encoder.layer
    top = list(layers[-n_top:]) if slice_from_end else list(layers[len(layers) - n_top:])
    for module in ([model.bert.pooler] if include_pooler else []) + [model.classifier] + top:
        for p in module.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_by_name(model, n_top):  # by parameter names, the count as a tensor
    n_layers = model.config.num_hidden_layers
    kept = ("bert.pooler.", "classifier.", *(f"bert.encoder.layer.{i}." for i in range(n_layers - n_top, n_layers)))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(kept))
    return torch.tensor(sum(p.numel() for p in model.parameters() if p.requires_grad))


def test_freeze_all_but_top(stub, refused):
    assert check_freeze_all_but_top(freeze_all_but_top)
    assert check_freeze_all_but_top(freeze_by_name)
    assert not check_freeze_all_but_top(stub)
    refused(check_freeze_all_but_top, lambda m, n: freeze_all_but_top(m, n, include_pooler=False), "n_top=0")
    refused(check_freeze_all_but_top, lambda m, n: freeze_all_but_top(m, n, slice_from_end=True), "layer[-0:]")
    refused(check_freeze_all_but_top, lambda m, n: freeze_all_but_top(m, n) and sum(1 for _ in m.parameters()),
            "returned count")


def onnx_logits(session, input_ids, attention_mask):
    feeds = {"input_ids": input_ids.long().numpy(), "attention_mask": attention_mask.long().numpy()}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


def test_onnx_logits(stub, refused):
    assert check_onnx_logits(onnx_logits)
    assert check_onnx_logits(lambda session, ids, mask: torch.tensor(session.run(None, {
        inp.name: t.numpy() for inp, t in zip(session.get_inputs(), (ids, mask))})[0]))
    assert not check_onnx_logits(stub)
    refused(check_onnx_logits, lambda s, i, m: onnx_logits(s, i, m).numpy(), "a NumPy ndarray", "torch.from_numpy")

    def without_mask(session, input_ids, attention_mask):
        return onnx_logits(session, input_ids, torch.ones_like(attention_mask))

    refused(check_onnx_logits, without_mask, "logits of 6 padded texts")


def head_export_answer(freeze=True, dynamic=True, optimizer_class=torch.optim.AdamW, dynamo=True):
    """The model answer of Exercise 10.5, with switches for the mistakes the check must catch.

    ``dynamo``: the current exporter (torch.export, ``dynamic_shapes``) or the older TorchScript one (``dynamic_axes``).
    """
    def fine_tune_head_and_export(model, batches, path, lr=1e-3):
        parameters = list(model.parameters())
        if freeze:
            model.requires_grad_(False)
            parameters = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
            for parameter in parameters:
                parameter.requires_grad_(True)
        optimizer = optimizer_class(parameters, lr=lr)
        for input_ids, attention_mask, labels in batches:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        class Logits(torch.nn.Module):
            def __init__(self, classifier):
                super().__init__()
                self.classifier = classifier

            def forward(self, input_ids, attention_mask):
                return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits

        names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
        if dynamo:
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
            shapes = {"dynamic_shapes": {"input_ids": dims, "attention_mask": dims}} if dynamic else {}
            torch.onnx.export(Logits(model).eval(), batches[0][:2], str(path), dynamo=True, verbose=False, **names,
                              **shapes)   # external data (the default): a .data file beside the graph
        else:
            axes = {0: "batch", 1: "seq"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the exporter's deprecation notice
                torch.onnx.export(Logits(model).eval(), batches[0][:2], str(path), dynamo=False, **names,
                                  **({"dynamic_axes": {"input_ids": axes, "attention_mask": axes}} if dynamic else {}))
        return path
    return fine_tune_head_and_export


def library_export(model, batches, path, lr=1e-3):
    from minilib.deploy.export import LogitsOnly, export_onnx
    model.requires_grad_(False)
    return export_onnx(LogitsOnly(model), batches[0][0], batches[0][1], path)


def test_fine_tune_head_and_export(stub, refused):
    assert check_fine_tune_head_and_export(head_export_answer())               # dynamo=True, dynamic_shapes
    assert check_fine_tune_head_and_export(head_export_answer(dynamo=False))   # the older exporter, dynamic_axes
    assert not check_fine_tune_head_and_export(stub)
    refused(check_fine_tune_head_and_export, library_export, "minilib.deploy.export")
    refused(check_fine_tune_head_and_export, head_export_answer(dynamic=False), "dynamic", "dynamic_shapes")
    # the mistakes in training, exported by the faster TorchScript exporter: the export is not what they get wrong
    refused(check_fine_tune_head_and_export, head_export_answer(freeze=False, dynamo=False), "frozen",
            "must stay as it was")
    refused(check_fine_tune_head_and_export, head_export_answer(dynamic=False, dynamo=False), "dynamic", "dynamic_axes")
    refused(check_fine_tune_head_and_export, head_export_answer(optimizer_class=torch.optim.Adam, dynamo=False),
            "torch.optim.Adam", "use torch.optim.AdamW")
