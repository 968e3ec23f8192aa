"""Chapter 10's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import torch

from minilib.course.checks import check_freeze_all_but_top, check_onnx_logits, check_predict_label


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
