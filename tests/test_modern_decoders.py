"""Chapter 14's shipped tokenizer and the token blocks it makes of Python's prose."""
import pytest
import torch

from minilib.experiments import artefacts
from minilib.experiments.ch14_modern_decoders import (
    CONTEXT,
    END_OF_TEXT,
    TOKENIZER,
    VOCAB_SIZE,
    hf_tokenizer,
    token_blocks,
    tokenizer,
    train_tokenizer,
)
from minilib.support.data import python_prose


@pytest.fixture(scope="module")
def bpe():
    return tokenizer()


def test_the_tokenizer_is_byte_level_bpe_of_8192_tokens(bpe):
    assert bpe.get_vocab_size() == VOCAB_SIZE and bpe.token_to_id(END_OF_TEXT) == 0
    text = "Return a new list.\n\n    >>> sorted([3, 1])\n    [1, 3]\nnaïve café 🐍 ∑ 漢字\t"
    ids = bpe.encode(text).ids
    assert bpe.decode(ids) == text                                  # bytes: nothing is ever unknown
    common = bpe.encode(" Return the default value").tokens         # frequent words are single tokens
    assert common == ["ĠReturn", "Ġthe", "Ġdefault", "Ġvalue"]
    assert len(bpe.encode("🐍").ids) > 1                             # a rare character: several byte tokens


def test_hugging_faces_wrapper_encodes_the_same(bpe):
    text = "The default is None; see also the 'key' argument."
    wrapped = hf_tokenizer()
    assert wrapped(text)["input_ids"] == bpe.encode(text).ids
    assert wrapped.eos_token_id == wrapped.pad_token_id == 0 and wrapped.decode(bpe.encode(text).ids) == text


def test_recorded_token_counts_match_todays_held_out_text(bpe):
    recorded = artefacts.read_manifest()[TOKENIZER.name]["metrics"]
    texts = list(python_prose("validation").values())
    assert sum(len(bpe.encode(t).ids) + 1 for t in texts) == recorded["validation_tokens"]
    assert 3.5 < recorded["train_characters_per_token"] < 4.5


def test_token_blocks_are_the_documents_end_to_end(bpe):
    blocks = token_blocks("validation")
    inputs, targets = blocks.tensors
    assert inputs.shape == targets.shape == (len(blocks), CONTEXT) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1]) and torch.equal(inputs[1:, 0], targets[:-1, -1])
    first = next(iter(python_prose("validation").values()))
    assert bpe.decode(inputs[0].tolist()).startswith(first[:200])
    assert (inputs == 0).sum() > 10                                   # <|endoftext|> between the documents


def test_training_the_tokenizer_again_gives_the_shipped_one(bpe):
    """The recipe on a small corpus twice: the same merges (BPE draws nothing at random)."""
    corpus = dict(list(python_prose("validation").items())[:10])
    assert train_tokenizer(corpus, 600).to_str() == train_tokenizer(corpus, 600).to_str()
    assert train_tokenizer(corpus, 600).get_vocab_size() == 600


def test_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        token_blocks("dev")
