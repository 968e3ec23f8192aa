"""Our blocked sparse kernels against PyTorch's FlexAttention with the matching mask_mods (eager, float32)."""
import pytest
import torch

from minilib import flex
from minilib.flex import (
    block_mask,
    block_mask_picture,
    flex_attention,
    layout_mask_mod,
    window_mask_mod,
    with_key_padding,
)
from minilib.sparse import (
    bigbird_layout,
    block_layout,
    block_sparse_attention,
    sliding_window_attention,
    sliding_window_mask,
)
from minilib.support.optional import NotAvailable, Unavailable, optional_row


def _qkv(n, batch=2, heads=4, dim=64, seed=0):
    """Unit-variance q, k, v (batch, heads, n, dim), head size 64 as in MiniLM."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3))


@pytest.mark.parametrize("window, global_tokens, causal", [(64, 0, False), (100, 0, True), (64, 3, False), (37, 5, True)])
def test_sliding_window_and_global_tokens_equal_flex_attention(window, global_tokens, causal):
    n = 1000                                       # not a multiple of FlexAttention's 128 nor of our block size
    q, k, v = _qkv(n)
    mask = block_mask(window_mask_mod(window, global_tokens, causal), n)
    ours = sliding_window_attention(q, k, v, window, global_tokens=global_tokens, is_causal=causal)
    torch.testing.assert_close(ours, flex_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_block_sparse_equals_flex_attention(causal):
    block, n_blocks = 64, 15                       # n = 960: not a multiple of FlexAttention's 128-token tiles
    n = block * n_blocks
    layout = bigbird_layout(n_blocks, window_blocks=1, global_blocks=1, random_blocks=2, seed=3)
    q, k, v = _qkv(n)
    mask = block_mask(layout_mask_mod(layout, block, causal), n)
    ours = block_sparse_attention(q, k, v, layout, block, is_causal=causal)
    torch.testing.assert_close(ours, flex_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)


def test_key_padding_equals_flex_attention_on_every_query_that_sees_a_key():
    n, window, lengths = 700, 48, torch.tensor([700, 260])  # the second sequence is mostly padding
    q, k, v = _qkv(n)
    key_ok = torch.arange(n) < lengths[:, None]                                   # (batch, n)
    mask_mod = with_key_padding(window_mask_mod(window, global_tokens=2), key_ok)
    theirs = flex_attention(q, k, v, block_mask(mask_mod, n, batch=2))
    ours = sliding_window_attention(q, k, v, window, global_tokens=2, attn_mask=key_ok[:, None, None, :])
    # Every query sees the 2 global keys, which are real in both sequences: no fully masked row here.
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_fully_masked_rows_are_zero_in_both():
    """A query whose window holds only padding sees no key: FlexAttention, PyTorch's SDPA and our kernel give zeros."""
    n, window = 300, 16
    q, k, v = _qkv(n, batch=1)
    key_ok = (torch.arange(n) < 100)[None]                                        # keys 100… are padding
    theirs = flex_attention(q, k, v, block_mask(with_key_padding(window_mask_mod(window), key_ok), n, batch=1))
    ours = sliding_window_attention(q, k, v, window, attn_mask=key_ok[:, None, None, :])
    no_key = torch.arange(n) >= 100 + window - 1
    assert torch.equal(theirs[..., no_key, :], torch.zeros_like(theirs[..., no_key, :]))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_block_mask_is_our_tile_layout():
    n, window, tile = 1024, 200, 128
    mask = block_mask(window_mask_mod(window, global_tokens=4), n, block_size=tile)
    picture = block_mask_picture(mask)
    assert torch.equal(picture > 0, block_layout(sliding_window_mask(n, window, global_tokens=4), tile))
    # Full tiles (2) need no mask inside: the diagonal tiles of a window wider than the tile are full.
    assert (picture.diagonal() == 2).all() and (picture == 1).any() and (picture == 0).any()


def test_mask_mods_reject_bad_arguments():
    with pytest.raises(ValueError, match="window must be an integer ≥ 1, got 0"):
        window_mask_mod(0)
    with pytest.raises(ValueError, match="layout must be a 2-D bool tensor"):
        layout_mask_mod(torch.ones(4, 4), 16)
    with pytest.raises(ValueError, match=r"key_ok must be a \(batch, n\) bool tensor"):
        with_key_padding(window_mask_mod(4), torch.ones(10, dtype=torch.bool))


def test_no_compiler_gives_a_not_available_row(monkeypatch):
    monkeypatch.setattr(flex.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    flex._try_compile.cache_clear()
    try:
        status = flex.compiler_status()
        assert not status.available and str(status) == "torch.compile on a CPU needs a C++ compiler, and none was found"
        q, k, v = _qkv(128, batch=1, heads=1, dim=16)
        mask = block_mask(window_mask_mod(8), 128)
        with pytest.raises(NotAvailable, match="needs a C\\+\\+ compiler"):
            flex_attention(q, k, v, mask, compiled=True)
        row = optional_row("FlexAttention compiled", lambda: flex_attention(q, k, v, mask, compiled=True))
        assert isinstance(row, Unavailable)
        assert str(row).startswith("FlexAttention compiled: not available here (torch.compile on a CPU needs")
        assert "apt install g++" in str(row)
    finally:
        flex._try_compile.cache_clear()


def test_a_key_padding_mask_builds_one_block_mask_per_batch_element_by_itself():
    """Without batch=, a batch-dependent mask used to get batch element 0's block mask for every element."""
    n, window, lengths = 300, 32, torch.tensor([300, 90])
    q, k, v = _qkv(n)
    key_ok = torch.arange(n) < lengths[:, None]
    mask_mod = with_key_padding(window_mask_mod(window, global_tokens=2), key_ok)
    ours = sliding_window_attention(q, k, v, window, global_tokens=2, attn_mask=key_ok[:, None, None, :])
    torch.testing.assert_close(flex_attention(q, k, v, block_mask(mask_mod, n)), ours, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="built for batch 2, got batch=3"):
        block_mask(mask_mod, n, batch=3)


def test_a_failed_compile_is_not_retried_at_every_call(monkeypatch):
    attempts = []

    def failing_compile(fn, **kwargs):
        attempts.append(fn)

        def broken(*args, **kwargs):
            raise RuntimeError("the compiler crashed")
        return broken

    monkeypatch.setattr(flex, "compiler_status", lambda: flex.CompilerStatus(True, "a compiler, pretended"))
    monkeypatch.setattr(flex.torch, "compile", failing_compile)
    flex._try_compile.cache_clear()
    try:
        q, k, v = _qkv(128, batch=1, heads=1, dim=16)
        mask = block_mask(window_mask_mod(8), 128)
        for _ in range(3):
            with pytest.raises(NotAvailable, match="failed: RuntimeError: the compiler crashed"):
                flex_attention(q, k, v, mask, compiled=True)
        assert len(attempts) == 1
    finally:
        flex._try_compile.cache_clear()
