"""The n-gram draft (chapter 13): its table against counts made the plain way, its back-off, its cache, and
speculative decoding with it giving exactly the target's greedy tokens."""
import collections
import math

import pytest
import torch

from minilib.generation import NGramDraft, TokenHistory, generate, new_cache, speculative_generate
from minilib.transformer import LanguageModel, TransformerConfig

VOCAB = 7


def _text(seed=0, shape=(6, 40)):
    """Token ids with structure (each token mostly followed by the next one), so long contexts repeat."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.where(torch.rand(shape, generator=generator) < 0.7, 1, torch.randint(0, VOCAB, shape, generator=generator))
    return steps.cumsum(dim=1) % VOCAB


def _counted_by_hand(text, n):
    """{context tuple: Counter of the tokens that followed it}, for contexts of 0 … n - 1 tokens, within each row."""
    counts = collections.defaultdict(collections.Counter)
    for row in text.tolist():
        for end in range(len(row)):
            for width in range(min(n - 1, end) + 1):
                counts[tuple(row[end - width:end])][row[end]] += 1
    return counts


@pytest.mark.parametrize("n", [1, 2, 4])
def test_the_table_holds_the_log_counts_of_every_context_in_the_text(n):
    text = _text()
    draft, expected = NGramDraft(text, VOCAB, n), _counted_by_hand(text, n)
    assert set(draft.row) == set(expected)
    for context, followers in expected.items():
        row = draft.log_counts[draft.row[context]]
        assert {token: round(math.exp(row[token])) for token in range(VOCAB) if row[token] > -math.inf} == followers


def test_a_pass_backs_off_to_the_longest_context_it_has_seen():
    text = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 3]])
    draft = NGramDraft(text, VOCAB, n=4)
    after = lambda *history: draft(torch.tensor([history]))[0, -1].argmax().item()      # noqa: E731
    assert after(0, 1, 2) == 3            # "0 1 2" → 3 twice, 4 once
    assert after(6, 1, 2) == 3            # "6 1 2" never seen: "1 2" → 3 twice, 4 once
    assert after(5, 6, 2) == 3            # only "2" is known: 3 twice, 4 once
    assert after(3, 6) == 0               # "6" never seen: the unigram counts (0, 1, 2 three times; 0 first)
    logits = draft(torch.tensor([[0, 1, 2]]))[0, -1]
    assert torch.allclose(logits.softmax(-1)[[3, 4]], torch.tensor([2 / 3, 1 / 3]))   # sampling: the counts' shares


def test_the_cache_is_the_tokens_fed_and_forgets_as_a_kv_cache_does():
    draft = NGramDraft(_text(), VOCAB, n=3)
    cache = new_cache(draft, 1, 50)
    assert isinstance(cache, TokenHistory)
    sequence = torch.tensor([[1, 2, 3, 4, 5]])
    whole = draft(sequence, logits_to_keep=0)                            # (1, 5, vocab): every position
    assert whole.shape == (1, 5, VOCAB)
    assert torch.equal(draft(sequence[:, :3], cache=cache, logits_to_keep=1)[0, -1], whole[0, 2])
    assert torch.equal(draft(sequence[:, 3:], cache=cache, logits_to_keep=2), whole[:, 3:])
    assert cache.tokens == [1, 2, 3, 4, 5] and cache.length == 5
    cache.truncate(2)
    assert torch.equal(draft(torch.tensor([[6]]), cache=cache)[0, -1], draft(torch.tensor([[1, 2, 6]]))[0, -1])
    with pytest.raises(ValueError, match="truncate to 0 … 3"):
        cache.truncate(4)


def _target(seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=80, dropout=0.0,
                               norm_first=True)
    return LanguageModel(config).eval()


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_decoding_with_a_table_gives_the_targets_greedy_tokens(k):
    target, prompt = _target(), torch.tensor([[1, 2, 3, 4]])
    draft = NGramDraft(generate(target, prompt, 60)[:, 4:], VOCAB, n=3)       # counted from the target's own text
    result = speculative_generate(target, draft, prompt, 60, k=k)
    assert torch.equal(result.tokens, generate(target, prompt, 60))
    assert result.accepted > 0 and result.target_calls < 60                  # the table's guesses were used


@pytest.mark.parametrize("bad, message", [
    (lambda: NGramDraft(_text(), VOCAB, n=0), "n .* positive int"),
    (lambda: NGramDraft(_text().float(), VOCAB), "torch.long"),
    (lambda: NGramDraft(_text()[0], VOCAB), r"\(n_sequences, seq\)"),
    (lambda: NGramDraft(_text() + VOCAB, VOCAB), "token ids must lie in 0 … 6"),
    (lambda: NGramDraft(_text(), 50_000, n=5), "use a smaller n"),
    (lambda: NGramDraft(_text(), VOCAB)(torch.tensor([[1, 2], [3, 4]])), "one sequence: expected batch 1, got 2"),
    (lambda: TokenHistory(batch=2), "expected batch 1, got 2"),
    (lambda: NGramDraft(_text(), VOCAB)(torch.tensor([[1, 2]]), logits_to_keep=-1), "logits_to_keep must be an int ≥ 0"),
])
def test_bad_input_says_what_was_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_a_draft_with_another_vocabulary_is_refused():
    draft = NGramDraft(_text(), VOCAB + 1)
    with pytest.raises(ValueError, match="share the target's vocabulary"):
        speculative_generate(_target(), draft, torch.tensor([[1, 2]]), 5)


def test_generate_runs_a_table_on_its_own_as_it_runs_a_network():
    text = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 3]])
    draft = NGramDraft(text, VOCAB, n=3)
    tokens = generate(draft, torch.tensor([[0, 1]]), 6)
    assert tokens.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]                   # the most frequent follower each time
    assert torch.equal(generate(draft, torch.tensor([[0, 1]]), 6, use_cache=False), tokens)
