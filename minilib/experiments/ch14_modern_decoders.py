"""Chapter 14's tokenizer and decoder, trained on prose every Python installation has, shipped in ``data/``.

* ``tokenizer()``: a byte-level BPE tokenizer (GPT-2's scheme) of 8,192 tokens, trained with Hugging Face
  ``tokenizers`` on the training split of :func:`minilib.support.data.python_prose` (Python's help topics and the
  standard library's docstrings): 490,294 tokens of training text on Python 3.11, 3.95 characters per token.
* ``decoder()``: a Llama-style decoder (:class:`minilib.llama.LlamaDecoder`: 6 layers, width 384, 6 query and 2
  key/value heads of 64, SwiGLU of 1024, context 256, tied embeddings; 12.6 M parameters) trained on it.

Both are artefacts (``minilib.experiments.artefacts``): the tokenizer's JSON and the decoder's float16 weights
come with the course, with their recipes below (``train_tokenizer``, seconds; ``train_decoder``: 480 steps of about
1.7 s on a quiet 2-core AMD EPYC, a quarter of an hour) and the metrics recorded when they were built.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from minilib.experiments.artefacts import Artefact, cached_result, load_model
from minilib.llama import DecoderConfig, LlamaDecoder
from minilib.metrics import mean_nll
from minilib.support.data import PROSE_SPLITS, module_docstrings, prose_split, python_prose
from minilib.support.train import TrainConfig, fit, init_weights, lm_loss, set_seed

VOCAB_SIZE = 8192
CONTEXT = 256
END_OF_TEXT = "<|endoftext|>"           # id 0: ends every document (GPT-2's separator)
SIZES = dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=1024)
EPOCHS, BATCH_SIZE, LR = 2, 8, 2e-3


# ------------------------------------------------------------------------------------------------ the tokenizer
def train_tokenizer(documents: dict[str, str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE (Sennrich et al. 2016; GPT-2's bytes): a ``tokenizers.Tokenizer`` of ``vocab_size`` tokens.

    Text is split into words by GPT-2's pattern (a word keeps its leading space: " list"), each word is read as
    UTF-8 bytes (256 base symbols, so no text is ever unknown), and the most frequent adjacent pair of symbols
    is merged into a new one, again and again, until the vocabulary is full.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents.values(), trainer)
    return tokenizer


def tokenizer(retrain: bool | None = None):
    """Chapter 14's BPE tokenizer (a ``tokenizers.Tokenizer``), as shipped in ``data/``."""
    from tokenizers import Tokenizer

    json_text = cached_result(TOKENIZER, {"vocab_size": VOCAB_SIZE},
                              lambda: train_tokenizer(python_prose("train")).to_str(), retrain)
    return Tokenizer.from_str(json_text)


def hf_tokenizer():
    """The same tokenizer as a ``transformers`` tokenizer (for ``generate`` and llmcompressor); eos = pad = id 0."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer(), eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                   model_max_length=CONTEXT)


@functools.cache
def token_blocks(split: str) -> TensorDataset:
    """One split of :func:`python_prose` as ``TensorDataset(inputs, targets)``, each ``(n_blocks, 256)`` token ids.

    Every document is followed by ``<|endoftext|>``; the documents (in name order) are concatenated and cut into
    non-overlapping blocks of 257 tokens; ``targets`` are ``inputs`` shifted by one. The last partial block is
    dropped. On Python 3.11: 1,915 training, 126 validation and 114 test blocks.
    """
    if split not in PROSE_SPLITS:
        raise ValueError(f"split must be one of {PROSE_SPLITS}, got {split!r}")
    bpe = tokenizer()
    end = bpe.token_to_id(END_OF_TEXT)
    ids = [i for encoding in bpe.encode_batch(list(python_prose(split).values())) for i in encoding.ids + [end]]
    n_blocks = (len(ids) - 1) // CONTEXT
    blocks = torch.tensor(ids[:n_blocks * CONTEXT + 1])
    inputs = blocks[:-1].view(n_blocks, CONTEXT)                            # (n_blocks, 256)
    targets = blocks[1:].view(n_blocks, CONTEXT)
    return TensorDataset(inputs, targets)


def _tokenizer_metrics(results: dict) -> dict:
    from tokenizers import Tokenizer

    bpe = Tokenizer.from_str(next(iter(results.values())))
    metrics = {"vocab_size": float(bpe.get_vocab_size())}
    for split in PROSE_SPLITS:
        texts = list(python_prose(split).values())
        n_tokens = sum(len(e.ids) for e in bpe.encode_batch(texts)) + len(texts)    # + one <|endoftext|> each
        metrics[f"{split}_tokens"] = float(n_tokens)
        metrics[f"{split}_characters_per_token"] = sum(map(len, texts)) / n_tokens
    return metrics


# ------------------------------------------------------------------------------------------------ the decoder
def decoder_config() -> DecoderConfig:
    return DecoderConfig(vocab_size=VOCAB_SIZE, max_len=CONTEXT, **SIZES)


def _fresh() -> LlamaDecoder:
    set_seed(0)
    return init_weights(LlamaDecoder(decoder_config(), attention=F.scaled_dot_product_attention))


_training_curve: dict[str, float] = {}
"""The loss curve's key numbers from the last :func:`train_decoder` in this process (recorded in the manifest)."""


def train_decoder(model: LlamaDecoder, epochs: int = EPOCHS, device=None) -> None:
    """The recipe: next-token prediction on the training blocks, AdamW (lr 2e-3, weight decay 0.1), 5% warm-up then
    cosine decay, gradient clipping at 1, batches of 8 × 256 tokens, 2 epochs (480 steps, 980,480 tokens).
    """
    history = fit(model, token_blocks("train"), TrainConfig(
        loss_fn=lm_loss, metric_fn=None, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, weight_decay=0.1, warmup=0.05,
        seed=0, device=device, desc="training chapter 14's decoder"))
    model.cpu().eval()
    losses, per_epoch = history.losses, len(history.losses) // epochs
    _training_curve.clear()
    _training_curve["train_loss_first_10_steps"] = sum(losses[:10]) / 10
    for epoch in range(1, epochs + 1):     # the mean of each epoch's last 20 steps
        _training_curve[f"train_loss_end_of_epoch_{epoch}"] = sum(losses[epoch * per_epoch - 20:epoch * per_epoch]) / 20


def decoder(retrain: bool | None = None) -> LlamaDecoder:
    """Chapter 14's trained decoder (eval mode, CPU, PyTorch's fused attention), as shipped in ``data/``."""
    return load_model(DECODER, _fresh, train_decoder, retrain)


def _decoder_metrics(model: LlamaDecoder) -> dict:
    """Held-out loss (nats per token) and perplexity, and the training curve's key numbers."""
    metrics = {}
    for split in ("validation", "test"):
        loss = mean_nll(model, token_blocks(split), batch_size=8)
        metrics |= {f"{split}_loss": loss, f"{split}_perplexity": math.exp(loss)}
    return metrics | _training_curve


_PROSE = (python_prose, prose_split, module_docstrings)
TOKENIZER = Artefact("ch14_tokenizer", "chapter 14's byte-level BPE tokenizer (8,192 tokens) of Python's prose",
                     "results", run=tokenizer, metrics=_tokenizer_metrics, depends=(train_tokenizer, *_PROSE),
                     params={"seed": 0, "vocab_size": VOCAB_SIZE, "special_tokens": [END_OF_TEXT]})   # BPE draws nothing at random
DECODER = Artefact("ch14_decoder", "chapter 14's Llama-style decoder (6 layers, width 384, 6 query / 2 key-value "
                   "heads, context 256, BPE vocabulary 8,192)", "model", run=decoder, metrics=_decoder_metrics,
                   depends=(train_decoder, _fresh, decoder_config, token_blocks, *_PROSE),
                   params={"seed": 0, "sizes": SIZES, "context": CONTEXT, "epochs": EPOCHS, "batch_size": BATCH_SIZE,
                           "lr": LR, "weight_decay": 0.1},
                   upstream=(TOKENIZER,))
ARTEFACTS = {"ch14_tokenizer": TOKENIZER, "ch14_decoder": DECODER}
