"""Chapter 03's "build it" check: an encoder layer that, loaded with MiniLM's layer 0, reproduces Hugging Face."""
import torch
import torch.nn.functional as F

from minilib.course.checks.core import exercise, expect_close, expect_equal
from minilib.course.checks.guards import forbidden_calls


def _load_bert_layer(layer, theirs):
    """Copy a Hugging Face BertLayer's weights into a layer with the exercise's attribute names."""
    attention = theirs.attention
    pairs = [(layer.query, attention.self.query), (layer.key, attention.self.key), (layer.value, attention.self.value),
             (layer.attn_out, attention.output.dense), (layer.attn_norm, attention.output.LayerNorm),
             (layer.ffn_up, theirs.intermediate.dense), (layer.ffn_down, theirs.output.dense),
             (layer.ffn_norm, theirs.output.LayerNorm)]
    for ours, source in pairs:
        ours.load_state_dict(source.state_dict())


@exercise(points=4)
def check_encoder_layer(cls, bert=None):
    """Your layer, loaded with MiniLM's layer 0, gives Hugging Face's layer-0 output on a padded batch.

    ``bert``: the Hugging Face MiniLM already loaded (``minilib.hf.load_minilm``), or None to load it here.
    """
    import minilib.attention as attention
    import minilib.transformer as transformer
    from minilib.hf import load_minilm, load_tokenizer

    if bert is None:
        bert, tokenizer = load_minilm()
    else:
        tokenizer = load_tokenizer()
    batch = tokenizer(["The movie was not bad at all.",
                       "I expected it to be bad, and it was not: a delightful surprise from start to finish."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch, output_hidden_states=True).hidden_states  # embeddings, then one per layer
    config = bert.config
    layer = cls(config.hidden_size, config.num_attention_heads, config.intermediate_size, config.layer_norm_eps)
    _load_bert_layer(layer, bert.encoder.layer[0])
    targets = [(transformer, "EncoderLayer"), (transformer, "FeedForward"), (transformer, "sublayer_connection"),
               (attention, "MultiHeadAttention"), (torch.nn, "TransformerEncoderLayer"),
               (F, "multi_head_attention_forward")]
    with forbidden_calls(cls, targets, "the residual connections, the LayerNorms and the feed-forward network are "
                                       "the exercise; an attention function of chapter 02 is fine"):
        with torch.no_grad():
            got = layer.eval()(hidden[0], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    expect_equal("output shape", tuple(getattr(got, "shape", ())), tuple(hidden[1].shape),
                 hint="return (batch, seq, d_model), like the input")
    expect_close("MiniLM's layer 0 on two sentences (the first one padded), real tokens", got[real], hidden[1][real],
                 atol=1e-4,
                 hint="post-norm, as BERT: h = attn_norm(x + attn_out(attention(x))), then "
                      "ffn_norm(h + ffn_down(gelu(ffn_up(h)))); divide the scores by √head_dim (32); hide padded "
                      "*keys* (attention_mask 0) with -inf; gelu is the exact (erf) one, not the tanh approximation")
