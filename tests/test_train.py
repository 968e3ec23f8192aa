"""The fit loop and its parts: schedule, clipping, weight decay, losses and metrics, on tiny tasks."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from minilib.support.train import (
    TrainConfig,
    accuracy,
    classification_loss,
    evaluate,
    fit,
    init_weights,
    lm_loss,
    lr_multiplier,
    make_optimizer,
    mean_loss,
    predict_logits,
    seq2seq_loss,
    set_seed,
    trim_padding,
)


class BagOfWords(nn.Module):
    """Mean of token embeddings over the real tokens, then a linear layer: (batch, seq) -> (batch, 2)."""

    def __init__(self, vocab=20, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        weights = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * weights).sum(1) / weights.sum(1))


@pytest.fixture(scope="module")
def task(padded_tokens):
    """(train, val): label 1 when token 5 occurs among a row's real tokens; rows padded on the right with 0."""
    def contains_five(n, seed):
        ids, mask = padded_tokens(n, seq_len=8, vocab_size=20, min_len=3, seed=seed)
        return TensorDataset(ids, mask, ((ids == 5) & mask.bool()).any(1).long())

    return contains_five(512, seed=0), contains_five(256, seed=1)


def test_set_seed_repeats_random_draws():
    set_seed(3)
    a = torch.randn(4), torch.rand(1).item()
    set_seed(3)
    assert torch.equal(a[0], torch.randn(4)) and a[1] == torch.rand(1).item()


def test_fit_lowers_the_loss_and_learns_the_task(task):
    train, val = task
    model = BagOfWords()
    before = accuracy(model, val)
    history = fit(model, train, TrainConfig(epochs=8, batch_size=32, lr=3e-2, progress=False), val)
    steps_per_epoch = math.ceil(len(train) / 32)
    assert len(history.losses) == len(history.lrs) == len(history.grad_norms) == 8 * steps_per_epoch
    first, last = history.losses[:steps_per_epoch], history.losses[-steps_per_epoch:]
    assert sum(last) / len(last) < 0.5 * sum(first) / len(first)
    assert [v["epoch"] for v in history.val] == list(range(1, 9))
    assert history.val[-1]["accuracy"] > 0.9 > before
    assert history.val[-1]["loss"] < history.val[0]["loss"]
    assert not model.training


def test_progress_bar_redraws_a_bounded_number_of_times(task, monkeypatch):
    """In a notebook every redraw is a kernel message; thousands of them get dropped and stall nbval."""
    from tqdm.std import tqdm as plain_tqdm

    class CountingBar(plain_tqdm):
        redraws = 0

        def display(self, *args, **kwargs):
            CountingBar.redraws += 1
            return super().display(*args, **kwargs)

    monkeypatch.setattr("minilib.support.train.tqdm", CountingBar)
    train, val = task
    history = fit(BagOfWords(), train, TrainConfig(epochs=4, batch_size=1, lr=1e-3), val)   # 2048 steps
    assert len(history.losses) == 2048
    assert 1 <= CountingBar.redraws <= 110


def test_fit_is_repeatable_with_the_same_seed(task):
    train, _ = task
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(7)  # the same initial weights each time
        runs.append(fit(BagOfWords(), train, TrainConfig(seed=seed, progress=False)).losses)
    assert runs[0] == runs[1] and runs[0] != runs[2]  # the seed decides the batch order


def test_learning_rates_follow_warmup_then_cosine(task):
    train, _ = task
    history = fit(BagOfWords(), train, TrainConfig(epochs=4, batch_size=32, lr=0.01, warmup=0.25, progress=False))
    total, warm = len(history.lrs), round(0.25 * len(history.lrs))
    expected = [0.01 * lr_multiplier(s, total, warm) for s in range(total)]
    assert history.lrs == pytest.approx(expected)
    assert history.lrs[warm - 1] == pytest.approx(0.01)  # the peak, reached at the end of warm-up
    assert all(a < b for a, b in zip(history.lrs[:warm - 1], history.lrs[1:warm]))  # rising before it
    assert all(a >= b for a, b in zip(history.lrs[warm - 1:], history.lrs[warm:]))  # only falling after it


def test_lr_multiplier_shapes():
    total, warm = 100, 10
    assert lr_multiplier(0, total, warm) == pytest.approx(0.1)
    assert lr_multiplier(9, total, warm) == pytest.approx(1.0)
    assert lr_multiplier(10, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(55, total, warm, "cosine") == pytest.approx(0.5)  # halfway through the decay
    assert lr_multiplier(55, total, warm, "linear") == pytest.approx(0.5)
    assert lr_multiplier(32, total, warm, "cosine") > lr_multiplier(32, total, warm, "linear")  # cosine stays high longer
    assert lr_multiplier(100, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(80, total, warm, "constant") == 1.0
    assert lr_multiplier(0, total, 0) == 1.0  # no warm-up: start at the peak
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_multiplier(0, total, warm, "step")


def test_gradients_are_clipped_before_each_step(task):
    train, _ = task
    norms_at_step = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms_at_step.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        clipped = fit(BagOfWords(), train, TrainConfig(lr=1e-3, clip_grad=0.05, progress=False))
        at_clipped = list(norms_at_step)
        norms_at_step.clear()
        free = fit(BagOfWords(), train, TrainConfig(lr=1e-3, clip_grad=None, progress=False))
    finally:
        handle.remove()
    assert max(clipped.grad_norms) > 0.05  # the raw gradients were larger than the limit ...
    assert max(at_clipped) <= 0.05 * 1.001  # ... but the optimiser only saw clipped ones
    assert norms_at_step == pytest.approx(free.grad_norms, rel=1e-4)  # clip_grad=None leaves them alone


def test_weight_decay_skips_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    decayed, plain = make_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert len(plain["params"]) == 3  # linear bias, LayerNorm weight and bias


def test_frozen_parameters_are_not_trained(task):
    train, _ = task
    model = BagOfWords()
    model.embed.weight.requires_grad_(False)
    frozen = model.embed.weight.clone()
    fit(model, train, TrainConfig(progress=False))
    assert torch.equal(model.embed.weight.cpu(), frozen)   # fit trains on CUDA when present


def test_bad_fit_arguments_are_named(task):
    train, _ = task
    model = BagOfWords()
    for kwargs, message in [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": 0}, "lr"),
                            ({"warmup": 1.5}, "warmup"), ({"clip_grad": -1.0}, "clip_grad"),
                            ({"schedule": "step"}, "schedule"), ({"epochs": 2.5}, "epochs")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        TrainConfig(loss_fn="cross-entropy")
    with pytest.raises(ValueError, match="non-empty dataset"):
        fit(model, TensorDataset(torch.zeros(0, 3)), TrainConfig(progress=False))
    with pytest.raises(TypeError, match=r"config must be a TrainConfig \(e.g. TrainConfig\(epochs=3"):
        fit(model, train, {"epochs": 3})       # the old keywords, gathered in a dict
    with pytest.raises(TypeError):
        fit(model, train, epochs=3)            # the old keywords: fit takes a TrainConfig now


def test_trim_padding_keeps_the_longest_row():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    mask = (ids != 0).long()
    trimmed_ids, trimmed_mask = trim_padding(ids, mask)
    assert trimmed_ids.tolist() == [[5, 6], [7, 0]] and trimmed_mask.tolist() == [[1, 1], [1, 0]]


def test_predict_logits_accuracy_and_evaluate_agree_with_a_direct_computation(task):
    _, val = task
    model = BagOfWords().train()
    logits = predict_logits(model, val, batch_size=50)
    assert model.training  # restored
    ids, mask, labels = val.tensors
    model.eval()
    with torch.no_grad():
        direct = model(ids, mask)
    assert torch.allclose(logits, direct, atol=1e-6)
    expected_accuracy = (direct.argmax(1) == labels).float().mean().item()
    assert accuracy(model, val) == pytest.approx(expected_accuracy)
    results = evaluate(model, val, loss_fn=classification_loss, batch_size=100)
    assert results["accuracy"] == pytest.approx(expected_accuracy)
    assert results["loss"] == pytest.approx(F.cross_entropy(direct, labels).item(), rel=1e-5)
    assert evaluate(model, val, metric_fn=None) == {}



def test_accuracy_of_any_logits_callable_as_of_the_module(task):
    """An ONNX Runtime session is a plain function of numpy-like inputs: accuracy takes it on CPU tensors, and a
    Subset (no .tensors) as well as a TensorDataset."""
    _, val = task
    model = BagOfWords().eval()

    def session(input_ids, attention_mask):
        assert input_ids.device.type == "cpu"
        with torch.no_grad():
            return model(input_ids, attention_mask).numpy()

    assert accuracy(session, val) == pytest.approx(accuracy(model, val))
    rows = torch.utils.data.Subset(val, range(10, 60))
    assert accuracy(session, rows) == pytest.approx(accuracy(model, TensorDataset(*(t[10:60] for t in val.tensors))))

class FixedLogits(nn.Module):
    """Returns stored logits whatever the input: lets a test compute a loss by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.seen = None

    def forward(self, *args, **kwargs):
        self.seen = (args, kwargs)
        return self.logits


def test_seq2seq_loss_shifts_targets_and_ignores_padding():
    torch.manual_seed(0)
    src = torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0]])
    tgt = torch.tensor([[1, 7, 8, 2], [1, 9, 2, 0]])  # <bos> y... <eos> <pad>
    logits = torch.randn(2, 3, 10)
    model = FixedLogits(logits)
    loss = seq2seq_loss(model, (src, tgt))
    (seen_src, seen_tgt_in), kwargs = model.seen
    assert seen_tgt_in.tolist() == [[1, 7, 8], [1, 9, 2]]
    assert kwargs["src_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    # the five real target positions: 7 8 <eos> | 9 <eos>
    picked = torch.stack([logits[0, 0], logits[0, 1], logits[0, 2], logits[1, 0], logits[1, 1]])
    assert loss.item() == pytest.approx(F.cross_entropy(picked, torch.tensor([7, 8, 2, 9, 2])).item())


def test_lm_loss_is_next_token_cross_entropy():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    loss = lm_loss(FixedLogits(logits), (torch.zeros(2, 3, dtype=torch.long), targets))
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)



def test_init_weights_gives_a_first_loss_near_uniform():
    from minilib.transformer import LanguageModel, TransformerConfig
    torch.manual_seed(0)
    model = LanguageModel(TransformerConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=1, d_ff=64, max_len=16))
    batch = (torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16)))
    before = lm_loss(model, batch).item()
    init_weights(model)
    after = lm_loss(model, batch).item()
    assert abs(after - math.log(50)) < 0.1 < abs(before - math.log(50))  # uniform guess: loss = log(vocab)
    assert all(m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    assert model.embeddings.token.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_callbacks_see_every_step_and_history_records_them(task):
    train, _ = task
    seen = []
    history = fit(BagOfWords(), TensorDataset(*(t[:96] for t in train.tensors)),
                  TrainConfig(epochs=2, batch_size=32, progress=False), callbacks=[seen.append])
    assert [(s.epoch, s.step) for s in seen] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert [s.loss for s in seen] == history.losses and [s.lr for s in seen] == history.lrs
    assert [s.grad_norm for s in seen] == history.grad_norms and isinstance(seen[0].model, BagOfWords)


def test_a_callback_can_act_on_the_model_after_each_step(task):
    """E.g. keep a pruned weight at zero while fine-tuning: the callback runs after the optimiser's step."""
    train, _ = task
    model = BagOfWords()

    def keep_first_row_zero(step):
        with torch.no_grad():
            step.model.head.weight[0].zero_()

    fit(model, train, TrainConfig(progress=False), callbacks=[keep_first_row_zero])
    assert (model.head.weight[0] == 0).all() and (model.head.weight[1] != 0).all()


class _Interrupted(Exception):
    pass


def _interrupt(module, args):
    raise _Interrupted


def test_an_interrupted_evaluation_leaves_a_training_model_training(task):
    """mean_loss and predict_logits switch to eval mode; an error (or a learner's stop) must not leave it there."""
    val = task[1]
    for evaluate_with in (lambda m: mean_loss(m, val), lambda m: predict_logits(m, val)):
        model = BagOfWords().train()
        model.register_forward_pre_hook(_interrupt)
        with pytest.raises(_Interrupted):
            evaluate_with(model)
        assert model.training
