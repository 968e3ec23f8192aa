"""The long-range task: deterministic, well formed, and out of a one-layer window's reach."""
import pytest
import torch

from minilib.experiments.ch04_sparse_attention import (
    CLS,
    FIRST_FILLER,
    LongRangeResult,
    attentions,
    long_range_dataset,
    long_range_examples,
    long_range_model,
    message_distance,
    results_table,
)


def test_generator_is_deterministic_by_seed():
    a, b, c = (long_range_examples(20, 64, seed=s).tensors for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("seq_len, n_classes, signal_len, n_fillers", [(512, 4, 8, 1), (2048, 3, 4, 5), (16, 2, 15, 2)])
def test_every_sequence_has_cls_fillers_and_one_message_of_its_label(seq_len, n_classes, signal_len, n_fillers):
    input_ids, attention_mask, labels = long_range_examples(50, seq_len, n_classes, signal_len, n_fillers).tensors
    assert input_ids.shape == (50, seq_len) and attention_mask.all()
    assert (input_ids[:, 0] == CLS).all()
    signal = input_ids >= FIRST_FILLER + n_fillers
    assert (signal.sum(dim=1) == signal_len).all()
    starts = message_distance(input_ids, n_fillers)
    assert (starts >= 1).all()
    for row, start, label in zip(input_ids, starts, labels):
        assert (row[start:start + signal_len] == FIRST_FILLER + n_fillers + label).all()     # one contiguous message
    assert set(labels.tolist()) == set(range(n_classes))


@pytest.mark.parametrize("call, message", [
    (lambda: long_range_examples(0), "n_examples must be an integer ≥ 1"),
    (lambda: long_range_examples(5, seq_len=8, signal_len=8), "must fit after"),
    (lambda: long_range_examples(5, n_classes=1), "n_classes"),
    (lambda: long_range_dataset(sizes=(1, 2)), "sizes must be"),
    (lambda: message_distance(torch.full((2, 5), FIRST_FILLER)), "must contain a message"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_one_layer_window_cannot_see_a_far_message_but_global_tokens_can():
    """Move the message from far away to another far place: [CLS]'s output changes only if it can see it."""
    far_a = torch.full((1, 128), FIRST_FILLER)
    far_a[0, 0] = CLS
    far_b = far_a.clone()
    far_a[0, 60:64] = far_b[0, 100:104] = FIRST_FILLER + 1                     # the same message, in two places
    for name, attention in attentions(window=16).items():
        torch.manual_seed(0)
        model = long_range_model(attention, seq_len=128).eval()
        with torch.no_grad():
            cls_a, cls_b = (model.encoder(ids).last_hidden_state[0, 0] for ids in (far_a, far_b))
        sees_far = not torch.allclose(cls_a, cls_b, atol=1e-6)
        assert sees_far == (name != "window 16"), name


def test_results_table_lists_every_attention():
    rows = [LongRangeResult("dense", 1.0, 1.0, 1.0, 3.0), LongRangeResult("window 32", 0.3, 1.0, 0.25, 2.0)]
    table = results_table(rows)
    assert "dense" in table and "window 32" in table and "0.250" in table
