"""Chapter 02's "build it" check: a multi-head attention module against torch.nn.MultiheadAttention."""
import torch
import torch.nn.functional as F

from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import forbidden_calls


@exercise(points=4)
def check_multihead_attention(cls):
    """Your module, given torch.nn.MultiheadAttention's weights, returns its output, without and with padding."""
    import minilib.attention as attention
    generator = torch.Generator().manual_seed(2)
    d_model, n_heads = 128, 2  # head size 64, as in BERT-base
    reference = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_bias.copy_(0.1 * torch.randn(3 * d_model, generator=generator))
        reference.out_proj.bias.copy_(0.1 * torch.randn(d_model, generator=generator))
    module = cls(d_model, n_heads)
    with torch.no_grad():
        module.in_proj.weight.copy_(reference.in_proj_weight)
        module.in_proj.bias.copy_(reference.in_proj_bias)
        module.out_proj.load_state_dict(reference.out_proj.state_dict())
    x = torch.randn(2, 7, d_model, generator=generator)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # the second sentence: 4 tokens, 3 pads
    with torch.no_grad():
        expected = [reference(x, x, x, need_weights=False)[0],
                    reference(x, x, x, key_padding_mask=padding, need_weights=False)[0]]
    targets = [(attention, "scaled_dot_product_attention"), (attention, "memory_efficient_attention"),
               (attention, "MultiHeadAttention"), (F, "scaled_dot_product_attention"),
               (F, "multi_head_attention_forward")]
    with forbidden_calls(cls, targets, "write the scores, the softmax and the weighted sum of the values yourself "
                                       "(your softmax_attention of exercise 2.1 is your own code: reuse it if you like)"):
        with torch.no_grad():
            got = module(x), module(x, key_padding_mask=padding)
    expect_close("x (2, 7, 128), 2 heads of 64, no padding, against torch.nn.MultiheadAttention", got[0], expected[0],
                 atol=1e-5, hint="in_proj(x) holds q, k and v side by side (.chunk(3, dim=-1)); split each into "
                                 "(batch, heads, seq, head_dim) by view then transpose; divide the scores by "
                                 "√head_dim (not √d_model); merge the heads back and apply out_proj")
    expect_close("the same x with the second sentence's last 3 tokens padded (key_padding_mask True there)",
                 got[1], expected[1], atol=1e-5,
                 hint="padding hides *keys*: set the scores of the padded columns to -inf before the softmax, "
                      "key_padding_mask[:, None, None, :] broadcasting over heads and queries")
