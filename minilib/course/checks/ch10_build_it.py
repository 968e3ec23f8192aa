"""Chapter 10's "build it" check: fine-tune a classifier's head and export it to ONNX."""
import copy

import torch

from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal, padded_batch, with_gradients
from minilib.course.checks.guards import forbidden_calls


def _tiny_bert_classifier():
    """A small randomly initialised BertForSequenceClassification without dropout, and four labelled batches."""
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(10)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(10)
    batches = []
    for _ in range(4):
        input_ids, attention_mask = padded_batch(generator, 120, batch=8, seq=12, n_full=4, length=9)
        batches.append((input_ids, attention_mask, torch.randint(0, 2, (8,), generator=generator)))
    return model, batches


@exercise(points=4)
@with_gradients
def check_fine_tune_head_and_export(fn):
    """Only the head trains, exactly as AdamW on the model's loss would; the ONNX file gives the model's logits."""
    import tempfile
    from pathlib import Path

    import onnxruntime

    import minilib.export as export
    import minilib.train as train
    model, batches = _tiny_bert_classifier()
    reference = copy.deepcopy(model)
    head = [*reference.bert.pooler.parameters(), *reference.classifier.parameters()]
    optimizer = torch.optim.AdamW(head, lr=1e-3)
    for input_ids, attention_mask, labels in batches:
        optimizer.zero_grad()
        reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
    targets = [(export, "export_onnx"), (export, "LogitsOnly"), (train, "fit")]
    with tempfile.TemporaryDirectory() as folder, forbidden_calls(
            fn, targets, "write the training loop and the export yourself: this is what minilib.export and "
                         "minilib.train do for the chapter"):
        path = Path(fn(model, batches, Path(folder) / "head.onnx", lr=1e-3))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        trains = name.startswith(("bert.pooler.", "classifier."))
        expect_close(f"{name} after the pass ({'trained' if trains else 'frozen'})", ours.detach(), theirs.detach(),
                     atol=1e-5, hint="only model.bert.pooler and model.classifier train: requires_grad_(False) on the "
                                     "rest, AdamW(lr=lr) on the head's parameters, one step per batch, zero_grad "
                                     "before each backward" if trains else
                                     "this parameter must stay as it was: freeze it (requires_grad_(False)) and give "
                                     "the optimizer only the head's parameters (AdamW's weight decay moves every "
                                     "parameter it is given)")
    expect_equal("the ONNX graph's inputs", [i.name for i in session.get_inputs()], ["input_ids", "attention_mask"],
                 hint='torch.onnx.export(..., input_names=["input_ids", "attention_mask"], output_names=["logits"])')
    generator = torch.Generator().manual_seed(11)
    input_ids, attention_mask = torch.randint(1, 120, (3, 17), generator=generator), torch.ones(3, 17, dtype=torch.long)
    attention_mask[0, 10:] = 0
    with torch.no_grad():
        expected = model.eval()(input_ids=input_ids, attention_mask=attention_mask).logits
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    try:
        got = torch.from_numpy(session.run(None, feeds)[0])
    except Exception as error:  # onnxruntime rejects a shape that was fixed at export
        raise CheckFailed("running the ONNX file on a batch of 3 sentences of 17 tokens", "the model's logits",
                          f"{type(error).__name__}: {str(error)[:160]}",
                          hint="mark batch (0) and sequence (1) dynamic: dynamic_axes={name: {0: 'batch', 1: 'seq'}} "
                               "for both inputs") from None
    expect_close("ONNX logits on a batch of 3 sentences of 17 tokens (exported with a different shape)", got, expected,
                 atol=1e-4, hint="export the model in eval mode, returning .logits")
