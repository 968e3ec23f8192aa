"""Chapter 10's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
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


def test_predict_label(stub):
    assert check_predict_label(predict_label)
    assert not check_predict_label(stub)

    def class_id(model, tokenizer, text):
        return model(**tokenizer(text, return_tensors="pt")).logits.argmax().item()

    def always_first_label(model, tokenizer, text):
        return model.config.id2label[0]

    assert not check_predict_label(class_id)
    assert not check_predict_label(always_first_label)


def freeze_all_but_top(model, n_top, include_pooler=True, slice_from_end=False):
    for p in model.parameters():
        p.requires_grad = False
    layers = model.bert.encoder.layer
    top = list(layers[-n_top:]) if slice_from_end else list(layers[len(layers) - n_top:])
    for module in ([model.bert.pooler] if include_pooler else []) + [model.classifier] + top:
        for p in module.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freeze_all_but_top(stub):
    assert check_freeze_all_but_top(freeze_all_but_top)
    assert not check_freeze_all_but_top(stub)
    assert not check_freeze_all_but_top(lambda m, n: freeze_all_but_top(m, n, include_pooler=False))
    assert not check_freeze_all_but_top(lambda m, n: freeze_all_but_top(m, n, slice_from_end=True))  # layer[-0:] = all
    assert not check_freeze_all_but_top(lambda m, n: freeze_all_but_top(m, n) and sum(1 for _ in m.parameters()))


def onnx_logits(session, input_ids, attention_mask):
    feeds = {"input_ids": input_ids.long().numpy(), "attention_mask": attention_mask.long().numpy()}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


def test_onnx_logits(stub):
    assert check_onnx_logits(onnx_logits)
    assert not check_onnx_logits(stub)
    assert not check_onnx_logits(lambda s, i, m: onnx_logits(s, i, m).numpy())  # NumPy, not a tensor

    def without_mask(session, input_ids, attention_mask):
        return onnx_logits(session, input_ids, torch.ones_like(attention_mask))

    assert not check_onnx_logits(without_mask)


def head_export_answer(freeze=True, dynamic=True, library=False):
    """The model answer of Exercise 10.5, with switches for the mistakes and the shortcut the check must catch."""
    def fine_tune_head_and_export(model, batches, path, lr=1e-3):
        parameters = list(model.parameters())
        if freeze:
            model.requires_grad_(False)
            parameters = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
            for parameter in parameters:
                parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters, lr=lr)
        for input_ids, attention_mask, labels in batches:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if library:
            from minilib.deploy.export import LogitsOnly, export_onnx
            return export_onnx(LogitsOnly(model), batches[0][0], batches[0][1], path)

        class Logits(torch.nn.Module):
            def __init__(self, classifier):
                super().__init__()
                self.classifier = classifier

            def forward(self, input_ids, attention_mask):
                return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits

        axes = {0: "batch", 1: "seq"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits(model).eval(), batches[0][:2], str(path), dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              **({"dynamic_axes": {"input_ids": axes, "attention_mask": axes}} if dynamic else {}))
        return path
    return fine_tune_head_and_export


def test_fine_tune_head_and_export(stub):
    assert check_fine_tune_head_and_export(head_export_answer())
    assert not check_fine_tune_head_and_export(stub)
    assert not check_fine_tune_head_and_export(head_export_answer(library=True))
    assert not check_fine_tune_head_and_export(head_export_answer(freeze=False))   # weight decay moves the encoder
    assert not check_fine_tune_head_and_export(head_export_answer(dynamic=False))  # fixed to the traced shape
