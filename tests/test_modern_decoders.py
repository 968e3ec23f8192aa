"""Chapter 14's shipped tokenizer, the token blocks it makes of Python's prose, and the shipped decoder."""
import pytest
import torch

from minilib.deploy.hf_llama import to_hf
from minilib.experiments import artefacts
from minilib.experiments.ch14_modern_decoders import (
    CONTEXT,
    END_OF_TEXT,
    TOKENIZER,
    VOCAB_SIZE,
    decoder,
    hf_tokenizer,
    token_blocks,
    tokenizer,
    train_tokenizer,
)
from minilib.generation import generate
from minilib.metrics import perplexity
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


def test_the_shipped_decoder_is_hugging_faces_llama_on_held_out_text():
    """The trained weights (not only random ones) give Hugging Face's logits, greedy tokens and perplexity, and the
    perplexity of the first held-out blocks is near the recorded one (a damaged file would be far from it)."""
    model = decoder()
    hf_model = to_hf(model)
    validation = token_blocks("validation")
    blocks = validation.tensors[0][:2, :128]
    with torch.no_grad():
        torch.testing.assert_close(model(blocks), hf_model(blocks).logits, atol=1e-4, rtol=1e-5)
        prompt = blocks[:1, :24]
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                   max_new_tokens=16, min_new_tokens=16)
    assert torch.equal(generate(model, prompt, 16), theirs)
    first = torch.utils.data.Subset(validation, range(4))
    ours, recorded = perplexity(model, first, batch_size=4), artefacts.read_manifest()["ch14_decoder"]["metrics"]
    assert ours == pytest.approx(perplexity(hf_model, first, batch_size=4), rel=1e-4)
    assert 0.7 * recorded["validation_perplexity"] < ours < 1.3 * recorded["validation_perplexity"]
