"""Linear attention (chapter 05): attention whose cost grows as n, not n².

Softmax attention weighs value j for query i by sim(q_i, k_j) = exp(q_i·k_j/√d):

    out_i = Σ_j sim(q_i, k_j) v_j / Σ_j sim(q_i, k_j)

If the similarity is a dot product of feature maps, sim(q, k) = φ(q)·φ(k), the sums factor
(the kernel trick; Katharopoulos et al., "Transformers are RNNs", 2020):

    out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / φ(q_i)ᵀ (Σ_j φ(k_j))
          = φ(q_i)ᵀ S / φ(q_i)ᵀ z,        S = φ(K)ᵀV  (f × d),  z = φ(K)ᵀ1  (f)

S and z are computed once for all queries: O(n·f·d) instead of O(n²·d). With a causal mask the
sums run over j ≤ i, i.e. they are prefix sums, and S, z become the state of an RNN that reads one
token at a time in constant memory (:func:`step`). A query whose weights are all 0 (every key
padded, or ReLU features with no overlap) gets a zero output, as PyTorch gives a fully masked row.

Feature maps φ: ``"elu"`` (elu(x) + 1, Katharopoulos 2020), ``"relu"``, and :class:`FavorFeatures`,
Performer's positive orthogonal random features (FAVOR+, Choromanski et al. 2021), whose dot
product is an unbiased estimate of exp(q·k/√d), i.e. of softmax attention itself.
:class:`LinformerAttention` is the other road to O(n): project the n keys and values down to k
rows (Wang et al., "Linformer", 2020).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minilib.attention import scaled_dot_product_attention


def elu_features(x):
    """φ(x) = elu(x) + 1: positive, smooth, ≈ x + 1 for x > 0 and ≈ e^x for x < 0."""
    return F.elu(x) + 1


def relu_features(x):
    """φ(x) = max(x, 0): positive but can be exactly 0, so a query may see nothing (its output is then 0)."""
    return F.relu(x)


FEATURE_MAPS = {"elu": elu_features, "relu": relu_features}


class FavorFeatures(nn.Module):
    """Performer's positive random features (FAVOR+) for the softmax kernel exp(q·k/√d).

    With x scaled by d^(-1/4) and m random directions ω_1 … ω_m ~ N(0, I_d):

        φ(x) = exp(ω·x - |x|²/2) / √m,      E[φ(q)·φ(k)] = exp(q·k/√d)

    All features are positive (so the normaliser never flips sign, unlike sin/cos features), and the
    directions are drawn orthogonal in blocks of d, which lowers the variance of the estimate.
    More features m → a better estimate; :func:`performer_error` measures how much better.
    Call on (..., seq, d) → (..., seq, m). ``redraw()`` draws new directions.

    exp(ω·x - |x|²/2) overflows or underflows float32 at ordinary input sizes, so each token's
    features come divided by a factor e^s of its own: φ(x) = features · e^s. For a query that
    factor cancels in its output; for keys it does not, and :func:`linear_attention` puts it back
    (``with_log_scale=True`` returns s too).
    """

    def __init__(self, head_dim, n_features=64, seed=0):
        super().__init__()
        if not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
        self.head_dim, self.n_features, self.seed = head_dim, n_features, seed
        self.register_buffer("projection", orthogonal_random_features(n_features, head_dim, seed))

    def redraw(self, seed):
        """Draw new random directions (Performer redraws them during training)."""
        self.seed = seed
        self.projection.copy_(orthogonal_random_features(self.n_features, self.head_dim, seed))

    def forward(self, x, with_log_scale=False):
        """x: (..., seq, d) → features (..., seq, m), each token's largest equal to 1, and with
        ``with_log_scale`` also s (..., seq, 1), so that φ(x) = features · e^s exactly."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"FavorFeatures was built for head_dim {self.head_dim}, got inputs with last dim {x.shape[-1]}")
        x = x * self.head_dim ** -0.25                                   # so that q·k becomes q·k/√d
        projected = x @ self.projection.T.to(x.dtype)                    # ω·x: (..., seq, m)
        largest = projected.amax(dim=-1, keepdim=True).detach()          # (..., seq, 1)
        features = torch.exp(projected - largest)                        # ≤ 1: no overflow
        if not with_log_scale:
            return features
        log_scale = largest - (x * x).sum(dim=-1, keepdim=True) / 2 - math.log(self.n_features) / 2   # ω·x - |x|²/2 - log √m
        return features, log_scale

    def extra_repr(self):
        return f"head_dim={self.head_dim}, n_features={self.n_features}, seed={self.seed}"


def orthogonal_random_features(n_features, dim, seed=0):
    """(n_features, dim) random directions, orthogonal within each block of ``dim`` rows.

    Each block is the Q of a QR decomposition of a Gaussian matrix; each row is then rescaled to the
    length of a Gaussian vector, so that every row is still distributed as N(0, I) (Performer, 2021).
    """
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for start in range(0, n_features, dim):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r))                            # make Q uniformly random (Haar)
        blocks.append(q.T[: n_features - start])
    lengths = torch.randn(n_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return torch.cat(blocks) * lengths


def linear_attention(q, k, v, feature_map="elu", is_causal=False, attn_mask=None, chunk_size=64):
    """φ(Q) (φ(K)ᵀ V) / φ(Q) (φ(K)ᵀ 1): attention in O(n·f·d) time.

    q, k: (batch, heads, n, d); v: (batch, heads, n, d_v). feature_map: "elu", "relu" or a callable
    such as :class:`FavorFeatures`. Equal to :func:`quadratic_linear_attention` (the same weights
    written as an n×n matrix). ``is_causal``: query i sees keys j ≤ i, computed by prefix sums over
    chunks of ``chunk_size`` tokens (:func:`causal_linear_attention`).
    attn_mask: optional bool key-padding mask broadcastable to (batch, heads, 1, n): padded keys get
    φ(k) = 0, so they add nothing to S or z. Returns (batch, heads, n, d_v).
    """
    phi_q, phi_k, key_log_scale = _features(q, k, feature_map, attn_mask)
    if is_causal:
        return causal_linear_attention(phi_q, phi_k, v, chunk_size, key_log_scale)
    if key_log_scale is not None:                                        # one factor shared by all keys cancels
        phi_k = phi_k * torch.exp(key_log_scale - key_log_scale.amax(dim=-2, keepdim=True))
    kv = phi_k.transpose(-2, -1) @ v                                     # S = φ(K)ᵀV: (batch, heads, f, d_v)
    normaliser = phi_k.sum(dim=-2)                                       # z = φ(K)ᵀ1: (batch, heads, f)
    numerator = phi_q @ kv                                               # φ(q_i)ᵀ S: (batch, heads, n, d_v)
    denominator = phi_q @ normaliser[..., None]                          # φ(q_i)ᵀ z: (batch, heads, n, 1)
    return _normalise(numerator, denominator)


def causal_linear_attention(phi_q, phi_k, v, chunk_size=64, key_log_scale=None):
    """Causal linear attention from features: out_i = φ(q_i)ᵀ S_i / φ(q_i)ᵀ z_i with prefix sums
    S_i = Σ_{j≤i} φ(k_j) v_jᵀ and z_i = Σ_{j≤i} φ(k_j).

    Keeping S_i for every i would take n·f·d memory, so the sequence is cut into chunks of c tokens,
    read in order like :func:`step` reads tokens: the state (S, z) sums the earlier chunks, and inside
    a chunk the c×c masked matrix φ(Q_c)φ(K_c)ᵀ adds the earlier tokens of the same chunk.
    Time O(n·f·d + n·c·d). phi_q, phi_k: (batch, heads, n, f), v: (batch, heads, n, d_v).

    key_log_scale: None, or s (batch, heads, n, 1) when the true key features are φ(k_j) = phi_k_j · e^{s_j}
    (:class:`FavorFeatures`). Query i then weighs its keys by e^{s_j - r_i}, with r_i = max_{j≤i} s_j the
    running maximum, so that nothing overflows (the online-softmax trick of chapter 02) and no later
    key changes an earlier output. Returns (batch, heads, n, d_v).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    n, f, d_v = phi_q.shape[-2], phi_q.shape[-1], v.shape[-1]
    if key_log_scale is None:
        key_log_scale = phi_k.new_zeros(*phi_k.shape[:-1], 1)
    running_max = key_log_scale.cummax(dim=-2).values                    # r_i: (batch, heads, n, 1)
    kv = phi_k.new_zeros(*phi_k.shape[:-2], f, d_v)                      # S of the chunks read so far
    normaliser = phi_k.new_zeros(*phi_k.shape[:-2], f, 1)                # z of the chunks read so far
    level = running_max.new_full((*running_max.shape[:-2], 1, 1), -math.inf)   # S, z are stored × e^{-level}
    outputs = []
    for start in range(0, n, chunk_size):
        chunk = slice(start, min(start + chunk_size, n))
        pq, pk, vc, s, r = (t[..., chunk, :] for t in (phi_q, phi_k, v, key_log_scale, running_max))
        earlier = torch.ones(pq.shape[-2], pq.shape[-2], dtype=torch.bool, device=pq.device).tril()
        scale = torch.exp((s.transpose(-2, -1) - r).masked_fill(~earlier, -math.inf))   # e^{s_j - r_i}, j ≤ i: (…, c, c)
        within = (pq @ pk.transpose(-2, -1)) * scale                     # φ(q_i)·φ(k_j) in the chunk
        carried = torch.exp(level - r)                                   # the state, rescaled to r_i: (…, c, 1)
        numerator = (pq @ kv) * carried + within @ vc
        denominator = (pq @ normaliser) * carried + within.sum(dim=-1, keepdim=True)
        outputs.append(_normalise(numerator, denominator))
        new_level = r[..., -1:, :]                                       # fold the chunk into the state
        weighted_keys = pk * torch.exp(s - new_level)                    # (…, c, f)
        kv = kv * torch.exp(level - new_level) + weighted_keys.transpose(-2, -1) @ vc
        normaliser = normaliser * torch.exp(level - new_level) + weighted_keys.sum(dim=-2)[..., None]
        level = new_level
    return torch.cat(outputs, dim=-2)


def quadratic_linear_attention(q, k, v, feature_map="elu", is_causal=False):
    """The same attention written the slow way: A = φ(Q)φ(K)ᵀ (n × n), out = A V / A 1.

    The reference that :func:`linear_attention` must equal; O(n²) time and memory.
    """
    phi_q, phi_k, key_log_scale = _features(q, k, feature_map, None)
    weights = phi_q @ phi_k.transpose(-2, -1)                            # (batch, heads, n, n)
    if key_log_scale is not None:                                        # e^{s_j - r_i}, r_i the largest s_j query i sees
        s = key_log_scale.transpose(-2, -1)                              # (batch, heads, 1, n)
        seen = key_log_scale.cummax(dim=-2).values if is_causal else s.amax(dim=-1, keepdim=True)
        weights = weights * torch.exp((s - seen).clamp_max(0))          # clamp: future keys are dropped below
    if is_causal:
        weights = weights.tril()
    return _normalise(weights @ v, weights.sum(dim=-1, keepdim=True))


def step(state, q_t, k_t, v_t, feature_map="elu"):
    """One token of causal linear attention as an RNN: constant memory, whatever the length.

        S ← S + φ(k_t) v_tᵀ,   z ← z + φ(k_t),   out_t = φ(q_t)ᵀ S / φ(q_t)ᵀ z

    state: None (start) or (S (batch, heads, f, d_v), z (batch, heads, f)); q_t, k_t: (batch, heads, d),
    v_t: (batch, heads, d_v). Returns (new state, out_t (batch, heads, d_v)). Running it over
    t = 0 … n-1 gives ``linear_attention(q, k, v, feature_map, is_causal=True)``.
    Feature maps: "elu", "relu" or a callable of one tensor (Performer's features carry a scale per
    key that the state would have to track, so they are not offered here).
    """
    phi = _feature_map(feature_map)
    if isinstance(phi, FavorFeatures):
        raise ValueError("step() needs a feature map of one token without a scale (elu, relu); for FavorFeatures "
                         "use linear_attention(..., is_causal=True), which tracks each key's scale")
    phi_q, phi_k = phi(q_t), phi(k_t)
    if state is None:
        state = (phi_k.new_zeros(*phi_k.shape, v_t.shape[-1]), phi_k.new_zeros(phi_k.shape))
    kv, normaliser = state
    kv = kv + phi_k[..., :, None] * v_t[..., None, :]                     # S + φ(k_t) v_tᵀ
    normaliser = normaliser + phi_k                                      # z + φ(k_t)
    numerator = (phi_q[..., None, :] @ kv)[..., 0, :]                    # φ(q_t)ᵀ S
    denominator = (phi_q * normaliser).sum(dim=-1, keepdim=True)         # φ(q_t)ᵀ z
    return (kv, normaliser), _normalise(numerator, denominator)


def delta_rule_step(state, q_t, k_t, v_t, beta=1.0, decay=1.0):
    """One token of (gated) delta-rule linear attention: the state corrects what it stores instead of adding to it.

        S ← α S + β k_t (v_t − (α S)ᵀ k_t)ᵀ,   out_t = Sᵀ q_t          (k_t and q_t scaled to unit length)

    Plain linear attention adds φ(k_t) v_tᵀ to S, so reading S at a stored key returns the blur of every pair.
    The delta rule (DeltaNet: Schlag, Irie & Schmidhuber 2021; Yang et al. 2024) first reads what S holds at k_t and
    writes only the error: with β = 1, reading at k_t right after returns v_t exactly. The decay α < 1 is Gated
    DeltaNet's forgetting gate (Yang, Kautz & Hatamizadeh 2025; Mamba-2 and GLA gate a plain linear state the same
    way): old pairs fade, which frees the fixed-size state for new ones. Models learn β and α per token; here they
    are numbers, or tensors of shape (batch, heads).

    state: None (start) or S (batch, heads, d, d_v); q_t, k_t: (batch, heads, d); v_t: (batch, heads, d_v).
    Returns (S, out_t (batch, heads, d_v)).
    """
    q_t, k_t = F.normalize(q_t, dim=-1), F.normalize(k_t, dim=-1)
    memory = k_t.new_zeros(*k_t.shape, v_t.shape[-1]) if state is None else state
    beta, decay = (torch.as_tensor(x, dtype=v_t.dtype, device=v_t.device)[..., None, None] for x in (beta, decay))
    kept = decay * memory                                                  # α S
    error = v_t - (k_t[..., None, :] @ kept)[..., 0, :]                    # v_t − what α S recalls at k_t
    memory = kept + beta * k_t[..., :, None] * error[..., None, :]         # + β k_t errorᵀ
    return memory, (q_t[..., None, :] @ memory)[..., 0, :]                 # Sᵀ q_t


def delta_rule_attention(q, k, v, beta=1.0, decay=1.0, return_state=False):
    """Causal (gated) delta-rule attention over a whole sequence, one :func:`delta_rule_step` per token.

    q, k: (batch, heads, n, d); v: (batch, heads, n, d_v) -> (batch, heads, n, d_v), and with ``return_state`` the
    state S (batch, heads, d, d_v) after the last token too. A loop over the tokens, written to be read: the models
    that use it (Gated DeltaNet, Kimi Linear) run a chunked parallel form on GPUs.
    """
    state, outputs = None, []
    for t in range(q.shape[-2]):
        state, out = delta_rule_step(state, q[..., t, :], k[..., t, :], v[..., t, :], beta, decay)
        outputs.append(out)
    outputs = torch.stack(outputs, dim=-2)
    return (outputs, state) if return_state else outputs


def performer_error(q, k, v, feature_counts, seeds=(0, 1, 2)):
    """Relative error of Performer attention against exact softmax attention, per feature count.

    For each m in ``feature_counts`` and each seed: ‖out_performer - out_softmax‖ / ‖out_softmax‖.
    Returns {m: tensor of errors, one per seed}. The error falls roughly as 1/√m.
    """
    exact = scaled_dot_product_attention(q, k, v)
    errors = {}
    for m in feature_counts:
        runs = [linear_attention(q, k, v, FavorFeatures(q.shape[-1], m, seed)) for seed in seeds]
        errors[m] = torch.stack([(run - exact).norm() / exact.norm() for run in runs])
    return errors


class LinformerAttention(nn.Module):
    """Linformer (2020): softmax attention over k projected keys and values instead of n.

        K' = E K,  V' = F V  (E, F: k × n learned),   out = softmax(Q K'ᵀ/√d) V'

    The score matrix is n × k: O(n·k) time and memory for a fixed k. The price: the sequence
    length n is fixed when the layer is built, and there is no causal form (a projection mixes
    future tokens into every row). Plugs into :class:`minilib.attention.MultiHeadAttention` as
    ``attention=LinformerAttention(seq_len, k)``.
    """

    def __init__(self, seq_len, k, share_projection=True):
        super().__init__()
        if not (isinstance(k, int) and 1 <= k <= seq_len):
            raise ValueError(f"the projected length k must be an integer between 1 and seq_len={seq_len}, got {k!r}")
        self.seq_len, self.k = seq_len, k
        self.key_projection = nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))
        self.value_projection = self.key_projection if share_projection else nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))

    def forward(self, q, k, v, attn_mask=None, is_causal=False):
        """q, k, v: (batch, heads, seq_len, d) → (batch, heads, seq_len, d_v)."""
        if is_causal:
            raise ValueError("Linformer has no causal form: its projection mixes future tokens into every key")
        if attn_mask is not None:
            raise ValueError("LinformerAttention takes no attn_mask: pad every sequence to the full seq_len instead")
        if k.shape[-2] != self.seq_len:
            raise ValueError(f"LinformerAttention was built for sequences of {self.seq_len} tokens, got {k.shape[-2]}")
        k_proj = self.key_projection @ k                                 # E K: (batch, heads, k, d)
        v_proj = self.value_projection @ v                               # F V: (batch, heads, k, d_v)
        return scaled_dot_product_attention(q, k_proj, v_proj)

    def extra_repr(self):
        return f"seq_len={self.seq_len}, k={self.k}"


def _feature_map(feature_map):
    if callable(feature_map):
        return feature_map
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {feature_map!r}: expected one of {sorted(FEATURE_MAPS)} "
                         f"or a callable such as FavorFeatures(head_dim, n_features)")
    return FEATURE_MAPS[feature_map]


def _features(q, k, feature_map, attn_mask):
    """φ(Q), φ(K) (batch, heads, n, f) with padded keys zeroed, and the keys' log scale s
    (batch, heads, n, 1) when the true features are φ(K) · e^s (:class:`FavorFeatures`), else None."""
    phi = _feature_map(feature_map)
    key_log_scale = None
    if isinstance(phi, FavorFeatures):                                   # a query's own scale cancels; a key's does not
        phi_q, (phi_k, key_log_scale) = phi(q), phi(k, with_log_scale=True)
    else:
        phi_q, phi_k = phi(q), phi(k)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[-2] != 1:
            raise ValueError(f"linear attention takes only a bool key-padding attn_mask of shape "
                             f"(batch, 1, 1, n), got {tuple(attn_mask.shape)} {attn_mask.dtype}")
        keep = attn_mask[:, :, 0, :, None]                               # (batch, 1, n, 1)
        phi_k = phi_k * keep.to(phi_k.dtype)
        if key_log_scale is not None:                                    # a padded key must not set the scale
            key_log_scale = key_log_scale.masked_fill(~keep, torch.finfo(key_log_scale.dtype).min)
    return phi_q, phi_k, key_log_scale


def _normalise(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is 0: a query with no weight on any key
    (its numerator is 0 too) gets zeros, like a fully masked row in PyTorch."""
    return numerator / denominator.masked_fill(denominator == 0, 1.0)
