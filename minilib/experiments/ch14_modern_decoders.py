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

from minilib.deploy.hf_llama import to_hf
from minilib.experiments import llm_compression
from minilib.experiments.artefacts import Artefact, cached_result, load_model
from minilib.llama import DecoderConfig, LlamaDecoder
from minilib.metrics import mean_nll
from minilib.quant.awq import output_error
from minilib.quant.gptq import gptq_weight
from minilib.quant.groupwise import group_grid
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


# ------------------------------------------------------------------------------------------------ compression
CALIBRATION_SEQUENCES = 32
HELD_OUT_SEQUENCES = 32


def calibration_ids() -> torch.Tensor:
    """The calibration text of every compression method: 32 training blocks of 256 tokens, drawn with seed 0."""
    blocks = token_blocks("train").tensors[0]
    return blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))[:CALIBRATION_SEQUENCES]]


def held_out() -> TensorDataset:
    """The compression table's held-out text: the first 32 validation blocks (8,192 tokens), the same for every row
    (so that rows compare on the same tokens; the decoder's recorded perplexity is on all 126)."""
    return TensorDataset(*(t[:HELD_OUT_SEQUENCES] for t in token_blocks("validation").tensors))


def compression_results(runs=llm_compression.CHAPTER_RUNS) -> llm_compression.CompressionTable:
    """Each compression of the decoder, by minilib and by llmcompressor on its Hugging Face export (shipped)."""
    model = decoder()
    return llm_compression.compression_table(model, to_hf(model), calibration_ids(), held_out(), hf_tokenizer(),
                                             runs, artefact=COMPRESSION)


@functools.cache
def layer_inputs(block: int, layer: str, sequences: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer of the trained decoder and what it sees on held-out text: its weight ``(out, in)`` and its
    inputs ``X`` ``(tokens, in)`` on the first ``sequences`` validation blocks (``layer``: e.g. ``"attn.q_proj"``)."""
    model = decoder()
    linear = model.layers[block].get_submodule(layer)
    seen = []
    handle = linear.register_forward_pre_hook(lambda module, args: seen.append(args[0].flatten(0, -2)))
    try:
        with torch.no_grad():
            model(token_blocks("validation").tensors[0][:sequences])
    finally:
        handle.remove()
    return linear.weight.detach().clone(), torch.cat(seen)


@functools.cache
def gptq_exercise(tokens: int | None = None) -> dict:
    """Exercise 14.2's layer, block 2's q projection: its weight, inputs (the first ``tokens``), ``H = 2XᵀX/N``,
    round-to-nearest's 4-bit grids in groups of 128, and the output errors ‖(Ŵ − W)Xᵀ‖² of GPTQ by minilib (computed
    here) and by llmcompressor (shipped with the chapter's results: importing llmcompressor takes tens of seconds)."""
    weight, x = layer_inputs(2, "attn.q_proj")
    x = x[:tokens]
    hessian, grid = 2 * x.T @ x / len(x), group_grid(weight, bits=4, group_size=128)
    xtx = x.double().T @ x.double()
    error = lambda approximation: output_error(weight.double(), approximation.double(), xtx)
    codes, _ = gptq_weight(weight, hessian, grid.bits, grid.group_size)
    references = {"minilib's GPTQ": error(grid.dequantize(codes)),
                  "llmcompressor's GPTQ": cached_result(COMPRESSION, ["exercise 14.2", tokens], lambda: error(
                      llm_compression.llmcompressor_gptq_weight(weight, hessian, grid)))}
    return dict(weight=weight, x=x, hessian=hessian, grid=grid, references=references)


def _compression_runs() -> None:
    """What the shipped results hold: the chapter's table and exercise 14.2's llmcompressor references."""
    compression_results()
    for tokens in EXERCISE_TOKENS:
        gptq_exercise(tokens)


EXERCISE_TOKENS = (None, 64)    # all 4,096 held-out inputs, and only 64 (a singular Hessian)
COMPRESSION = Artefact("ch14_compression", "chapter 14's compression table: perplexity, bytes and seconds of each "
                       "method by minilib and by llmcompressor, and exercise 14.2's llmcompressor references",
                       "results", run=_compression_runs, metrics=llm_compression.table_metrics,
                       depends=(_compression_runs, compression_results, calibration_ids, held_out, gptq_exercise,
                                layer_inputs, llm_compression.compression_table, llm_compression.ours_row,
                                llm_compression.llmcompressor_row, llm_compression.score, llm_compression.compress_ours,
                                llm_compression.compress_llmcompressor, llm_compression.llmcompressor_recipe,
                                llm_compression.llmcompressor_gptq_weight),
                       params={"seed": 0, "calibration_sequences": CALIBRATION_SEQUENCES,
                               "held_out_sequences": HELD_OUT_SEQUENCES, "runs": [run.key for run in llm_compression.CHAPTER_RUNS]},
                       upstream=(DECODER,))
ARTEFACTS["ch14_compression"] = COMPRESSION
