"""The course's generated datasets: deterministic, disjoint splits, balanced, and meaning what they say."""
import collections
import datetime
import re

import pytest
import torch

from minilib.support import data
from minilib.support.data import (
    POSITIVE,
    CharVocab,
    Example,
    char_lm_dataset,
    date_formats,
    encode_examples,
    lm_text,
    sentiment_dataset,
    sentiment_examples,
    translation_dataset,
    translation_pairs,
)


@pytest.fixture(scope="module")
def sentiment():
    return sentiment_examples(seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    from minilib.deploy.hf import load_minilm
    return load_minilm()[1]


# ---------------------------------------------------------------------------------------------- sentiment

def test_sentiment_is_deterministic_by_seed(sentiment):
    assert sentiment_examples(seed=0) == sentiment
    assert sentiment_examples(seed=1).train != sentiment.train


def test_sentiment_sizes_balance_and_disjoint_splits(sentiment):
    assert [len(part) for part in sentiment] == [4000, 500, 1000]
    for part in sentiment:
        counts = collections.Counter(e.label for e in part)
        assert counts[0] == counts[1] == len(part) // 2
        assert len({e.text for e in part}) == len(part)  # no duplicates inside a split either
    train, val, test = ({e.text for e in part} for part in sentiment)
    assert not train & val and not train & test and not val & test


def test_sentiment_odd_sizes_stay_balanced():
    parts = sentiment_examples(seed=3, sizes=(7, 3, 5))
    for part in parts:
        zeros = sum(e.label == 0 for e in part)
        assert abs(zeros - (len(part) - zeros)) <= 1


def test_every_template_is_used_with_every_label_it_allows(sentiment):
    seen = {(e.template, e.label) for e in sentiment.train}
    expected = {(t, label) for t, (_, labels) in enumerate(data.SENTIMENT_TEMPLATES) for label in labels}
    assert seen == expected


def _words(text):
    return re.findall(r"[a-z]+", text)


def test_negation_flips_the_label(sentiment):
    # "the X was not ADJ" (template 2): the adjective is the last word, and its polarity is the opposite of the label
    negated = [e for e in sentiment.train if e.template == 2]
    plain = [e for e in sentiment.train if e.template == 0]
    assert negated and plain
    for e in negated:
        assert " not " in e.text
        assert (_words(e.text)[-1] in POSITIVE) == (e.label == 0), e
    for e in plain:
        assert (_words(e.text)[-1] in POSITIVE) == (e.label == 1), e


def test_the_same_adjective_appears_with_both_labels(sentiment):
    """Composition is needed: no single adjective decides the label."""
    labels_by_word = collections.defaultdict(set)
    for e in sentiment.train:
        for word in _words(e.text):
            labels_by_word[word].add(e.label)
    assert all(labels_by_word[w] == {0, 1} for w in ("good", "bad", "not", "but", "boring", "excellent"))


def test_good_but_too_long_is_negative(sentiment):
    too = [e for e in sentiment.train if " but too " in e.text]
    assert too and all(e.label == 0 for e in too)
    assert all(any(w in POSITIVE for w in _words(e.text)) for e in too)


def test_articles_agree_with_the_next_word(sentiment):
    assert not any(re.search(r"\ba [aeiou]", e.text) for part in sentiment for e in part)


def test_sentiment_bad_sizes():
    with pytest.raises(ValueError, match="three positive ints"):
        sentiment_examples(sizes=(10, 0, 5))
    with pytest.raises(ValueError, match="three positive ints"):
        sentiment_examples(sizes=(10, 5))


def test_encode_examples_with_minilm_tokenizer(tokenizer, sentiment):
    splits = sentiment_dataset(tokenizer)
    for part, encoded in zip(sentiment, splits):
        ids, mask, labels = encoded.tensors
        assert ids.shape == mask.shape and ids.shape[0] == len(part) and ids.shape[1] <= 32
        assert labels.tolist() == [e.label for e in part]
        assert (ids[:, 0] == tokenizer.cls_token_id).all()
        assert (ids[mask == 0] == tokenizer.pad_token_id).all()
        assert not (ids == tokenizer.unk_token_id).any()  # every word is in MiniLM's vocabulary
    first = splits.test.tensors[0][0]
    assert tokenizer.decode(first, skip_special_tokens=True) == sentiment.test[0].text


def test_encode_examples_refuses_to_truncate(tokenizer):
    example = Example("i expected it to be bad, and it was not", 1, 20)
    with pytest.raises(ValueError, match="too short"):
        encode_examples([example], tokenizer, max_len=6)
    with pytest.raises(TypeError, match="list of Example"):
        encode_examples(["not an Example"], tokenizer)
    with pytest.raises(ValueError, match="max_len"):
        encode_examples([example], tokenizer, max_len=0)


# ---------------------------------------------------------------------------------------------- translation

def test_date_formats_of_a_known_date():
    formats = date_formats(datetime.date(1998, 3, 3))
    for written in ("march 3rd, 1998", "3 march 98", "3 mar 1998", "03.03.1998", "tuesday, march 3, 1998",
                    "the 3rd of march, 1998", "mar. 3 '98"):
        assert written in formats
    ordinals = {d: date_formats(datetime.date(2001, 1, d))[0] for d in (1, 2, 11, 12, 13, 21, 22, 23, 31)}
    assert [ordinals[d].split()[1] for d in ordinals] == [
        "1st,", "2nd,", "11th,", "12th,", "13th,", "21st,", "22nd,", "23rd,", "31st,"]


def test_translation_pairs_are_consistent_and_disjoint():
    pairs = translation_pairs(seed=0)
    assert translation_pairs(seed=0) == pairs and translation_pairs(seed=1) != pairs
    dates = [{target for _, target in part} for part in pairs]
    assert [len(d) for d in dates] == [4000, 500, 1000]  # every date once
    assert not dates[0] & dates[1] and not dates[0] & dates[2] and not dates[1] & dates[2]
    for source, target in pairs.train:
        date = datetime.date.fromisoformat(target)
        assert source in date_formats(date)
        assert data.FIRST_YEAR <= date.year <= data.LAST_YEAR
        two_digit = re.fullmatch(r"\d{1,2} [a-z]+ (\d\d)", source) or re.search(r"'(\d\d)$", source)
        if two_digit:
            assert target[2:4] == two_digit.group(1)


def test_translation_tensors_decode_back():
    task = translation_dataset(seed=0)
    pairs = translation_pairs(seed=0)
    src, tgt = task.train.tensors
    assert tgt.shape == (4000, 12) and (tgt[:, 0] == CharVocab.bos_id).all() and (tgt[:, -1] == CharVocab.eos_id).all()
    for i in (0, 17, 3999):
        assert task.source_vocab.decode(src[i]) == pairs.train[i][0]
        assert task.target_vocab.decode(tgt[i]) == pairs.train[i][1]
    assert translation_dataset(seed=0).test.tensors[0].equal(task.test.tensors[0])


def test_char_vocab():
    vocab = CharVocab("abc")
    assert len(vocab) == 6 and vocab.encode("cab", bos=True) == [1, 5, 3, 4, 2]
    assert vocab.decode([1, 5, 3, 2, 4, 4]) == "ca"  # stops at <eos>
    assert vocab.decode(torch.tensor([3, 0, 0])) == "a"
    assert vocab.encode_batch(["a", "abc"]).tolist() == [[3, 2, 0, 0], [3, 4, 5, 2]]
    with pytest.raises(ValueError, match=r"\['z'\]"):
        vocab.encode("az")


# ---------------------------------------------------------------------------------------------- language modelling

def test_lm_text_is_pythons_documentation():
    text = lm_text()
    assert len(text) > 300_000 and 'The "assert" statement' in text


def test_char_lm_dataset():
    lm = char_lm_dataset(block_size=32, seed=0)
    x, y = lm.train.tensors
    assert x.shape[1] == 32 and x.shape == y.shape
    assert x[:, 1:].equal(y[:, :-1])  # targets are inputs shifted by one
    sizes = [len(part) for part in lm[:3]]
    assert sizes[0] > 10 * sizes[1] and sizes[1] > 0 and sizes[2] > 0
    assert lm.vocab.decode(x[0]) in lm_text()
    again = char_lm_dataset(block_size=32, seed=0)
    assert again.validation.tensors[0].equal(lm.validation.tensors[0])
    other = char_lm_dataset(block_size=32, seed=1).validation.tensors[0]
    assert other.shape != again.validation.tensors[0].shape or not other.equal(again.validation.tensors[0])


def test_char_lm_splits_hold_different_documents():
    lm = char_lm_dataset(block_size=64, seed=0)
    train_text = "".join(lm.vocab.decode(row) for row in lm.train.tensors[0])
    held_out = [lm.vocab.decode(row) for part in (lm.validation, lm.test) for row in part.tensors[0]]
    assert sum(block in train_text for block in held_out) < 0.02 * len(held_out)  # a shared sentence may remain


def test_char_lm_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        char_lm_dataset(block_size=0)
    with pytest.raises(ValueError, match="fractions"):
        char_lm_dataset(fractions=(0.5, 0.5, 0.5))


def test_character_vocabulary_does_not_change_with_pythons_documentation(monkeypatch):
    """Python 3.12's help topics add '$': a model trained on 3.11's text must still read the new text."""
    import minilib.support.data as data
    topics = {name: text + " costs $5" for name, text in data.lm_topics().items()}
    monkeypatch.setattr(data, "lm_topics", lambda: topics)
    newer = data.char_lm_dataset(block_size=64)
    assert newer.vocab.itos[3:] == sorted(data.LM_ALPHABET)
    assert "$" not in newer.vocab.decode(newer.train.tensors[0].flatten())


# ------------------------------------------------------------------------------------------------ Python's prose
def test_prose_splits_are_fixed_by_name_and_hold_about_5_percent_each():
    names = [f"module:pkg/m{i}.py" for i in range(4000)]
    counts = collections.Counter(map(data.prose_split, names))
    assert [data.prose_split(n) for n in names[:50]] == [data.prose_split(n) for n in names[:50]]
    assert 0.04 < counts["validation"] / 4000 < 0.06 and 0.04 < counts["test"] / 4000 < 0.06


@pytest.fixture(scope="module")
def held_out_prose():
    return {split: data.python_prose(split) for split in ("validation", "test")}


def test_python_prose_is_topics_and_docstrings_without_test_suites(held_out_prose):
    validation, test = held_out_prose["validation"], held_out_prose["test"]
    assert not validation.keys() & test.keys() and all(data.prose_split(n) == "validation" for n in validation)
    assert {name.split(":")[0] for name in validation} == {"topic", "module"}
    assert not any(part in ("test", "tests", "site-packages") for name in {**validation, **test}
                   for part in name.split(":")[1].split("/")[:-1])
    assert 50_000 < sum(map(len, validation.values())) < 300_000       # 120 KB on Python 3.11
    assert list(validation) == sorted(validation) and all(validation.values())


def test_module_docstrings_reads_the_source_without_running_it(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text('"""The module."""\nraise SystemExit("imported!")\n\n'
                      'class A:\n    """A class.\n\n    Indented lines.\n    """\n\n'
                      '    def f(self):\n        """A method."""\n\n'
                      'async def g():\n    pass\n')
    assert data.module_docstrings(source) == "The module.\n\nA class.\n\nIndented lines.\n\nA method."
    (tmp_path / "old.py").write_text("print 'python 2'\n")
    assert data.module_docstrings(tmp_path / "old.py") == ""


def test_python_prose_bad_split():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'validation', 'test'\), got 'dev'"):
        data.python_prose("dev")
