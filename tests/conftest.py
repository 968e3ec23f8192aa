"""Fixtures shared by the tests."""
import pytest
import torch

from minilib.transformer import Classifier, Encoder, TransformerConfig

TINY_CONFIG = dict(vocab_size=100, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)
TINY_BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture
def stub():
    """A learner's exercise not done yet: calling it raises NotImplementedError, as the student edition's stubs do."""
    def not_done(*args, **kwargs):
        raise NotImplementedError

    return not_done


@pytest.fixture
def refused(capsys):
    """``refused(check, answer, *words)``: the check fails ``answer`` and its message names every one of ``words``
    (the mistake or the shortcut, in the learner's terms). Returns the message."""
    def run(check, answer, *words, **kwargs):
        capsys.readouterr()
        passed = check(answer, **kwargs)
        message = capsys.readouterr().out
        assert not passed, message
        for word in words:
            assert word in message, f"{word!r} not in:\n{message}"
        return message

    return run


@pytest.fixture(scope="session")
def tiny_config():
    """Makes a small TransformerConfig (no dropout): ``tiny_config(d_model=128, n_layers=1)`` changes what a test needs."""
    def make(**changes) -> TransformerConfig:
        return TransformerConfig(**{**TINY_CONFIG, **changes})

    return make


@pytest.fixture(scope="session")
def tiny_classifier(tiny_config):
    """Makes a two-class Classifier on a :func:`tiny_config`, initialised from ``seed``, in eval mode.

    head_dropout: the head's dropout; other keywords change the config: ``tiny_classifier(n_layers=3)``.
    """
    def make(seed: int = 0, head_dropout: float = 0.1, **changes) -> Classifier:
        torch.manual_seed(seed)
        return Classifier(Encoder(tiny_config(**changes)), n_classes=2, dropout=head_dropout).eval()

    return make


@pytest.fixture(scope="session")
def tiny_bert():
    """Makes a small, randomly initialised Hugging Face BERT in eval mode, initialised from ``seed``.

    model_class: ``BertModel`` (the default) or e.g. ``BertForSequenceClassification``; model_kwargs go to it
    (``{"add_pooling_layer": False}``); other keywords change the BertConfig: ``tiny_bert(num_hidden_layers=1)``.
    """
    from transformers import BertConfig, BertModel

    def make(model_class=BertModel, seed: int = 0, model_kwargs: dict | None = None, **changes):
        torch.manual_seed(seed)
        return model_class(BertConfig(**{**TINY_BERT, **changes}), **(model_kwargs or {})).eval()

    return make


@pytest.fixture(scope="session")
def padded_tokens():
    """Makes random token ids padded on the right: ``padded_tokens(n, seq_len, vocab_size, min_len, seed)``.

    → ids (n, seq_len) in [1, vocab_size) with 0 after each row's length, and mask (n, seq_len), 1 = real token;
    each row's length is drawn in [min_len, seq_len].
    """
    def make(n: int, seq_len: int, vocab_size: int, min_len: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, vocab_size, (n, seq_len), generator=generator)
        lengths = torch.randint(min_len, seq_len + 1, (n,), generator=generator)
        mask = (torch.arange(seq_len) < lengths[:, None]).long()
        return ids * mask, mask

    return make


@pytest.fixture(scope="session")
def compressible_llama():
    """Makes a small Hugging Face ``LlamaForCausalLM`` (2 blocks, width 128, 4 query and 2 key/value heads, vocabulary
    96, tied head) whose weights look trained enough for compression to matter: unit-variance outputs at
    initialisation and one outlier channel (7) of the attention norms' gain, 20× the others."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0, **changes):
        torch.manual_seed(seed)
        config = dict(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
        model = LlamaForCausalLM(LlamaConfig(**config | changes)).eval()
        with torch.no_grad():
            for block in model.model.layers:
                block.input_layernorm.weight.uniform_(0.5, 1.5)[7] = 20.0
                block.post_attention_layernorm.weight.uniform_(0.5, 1.5)
            for layer in model.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0, layer.in_features ** -0.5)
        return model

    return make


@pytest.fixture(scope="session")
def calibration_ids():
    """Makes random token ids in [0, 96) for :func:`compressible_llama`: ``calibration_ids(n, length=32, seed=1)``."""
    def make(n: int = 4, length: int = 32, seed: int = 1) -> torch.Tensor:
        return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture(scope="session")
def chapter13_layers():
    """Two real layers with what they see on real text: chapter 13's shipped decoder, block 1's q projection
    (256 → 256) and FFN down projection (1024 → 256), on 16 held-out sequences of 512 characters.

    ``{name: (weight (out, in), inputs X (tokens, in), InputStatistics of X)}``.
    """
    from minilib.experiments.ch13_fast_generation import decoder, lm_data
    from minilib.quant.layerwise import recording

    model = decoder()
    layers = {"q": model.layers[1].attn.q_proj, "down": model.layers[1].ffn.down}
    inputs = {name: [] for name in layers}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].flatten(0, -2)))
             for name, layer in layers.items()]
    with torch.no_grad(), recording(layers) as stats:
        model(lm_data().validation.tensors[0][:16])
    for hook in hooks:
        hook.remove()
    return {name: (layer.weight.detach().clone(), torch.cat(inputs[name]), stats[name]) for name, layer in layers.items()}


@pytest.fixture(scope="session")
def stand_in_tokenizer():
    """A one-word Hugging Face tokenizer: llmcompressor's ``oneshot`` asks for one even when its calibration batches
    are token ids already."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
