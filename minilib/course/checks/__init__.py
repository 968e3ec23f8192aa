"""Exercise feedback: the visible checks that follow every code exercise.

Each chapter has its own module here (``ch02_self_attention.py``, ``ch07_quantization.py``, ...), imported below one by
one (a new chapter module is added to that list). A check is a plain function decorated with
:func:`~minilib.course.checks.core.exercise`; it tests the learner's answer on small hand-made cases against
the reference and, called plainly, *never raises*: it prints what was expected, what was got and a hint, and returns
``True`` or ``False``. The machinery the checks share is in :mod:`minilib.course.checks.core`.

    from minilib.course.checks import check_attention_scores
    check_attention_scores(attention_scores)   # prints ✔ or ✘ with a hint

``check_attention_scores.assert_passes(attention_scores)`` raises when the check fails (for autograders such as
nbgrader). Graders read results with :func:`~minilib.course.checks.core.recording`.
"""
# ruff: noqa: F401  (this module re-exports every chapter's checks)
from minilib.course.checks.ch00_welcome import check_gflops, check_matmul_flops, check_tensor_bytes
from minilib.course.checks.ch01_why_fast_and_small import (
    check_attention_matmul_flops,
    check_crossover_length,
    check_encoder_layer_params,
)
from minilib.course.checks.ch02_self_attention import (
    check_causal_padding_mask,
    check_multihead_attention,
    check_online_softmax_step,
    check_softmax_attention,
    check_split_heads,
)
from minilib.course.checks.ch03_transformer import (
    check_clip_by_global_norm,
    check_encoder_layer,
    check_pre_norm_residual,
    check_sinusoidal_positions,
    check_warmup_linear,
)
from minilib.course.checks.ch04_sparse_attention import (
    check_add_global_tokens,
    check_blocked_window_attention,
    check_window_mask,
    check_window_tile_count,
)
from minilib.course.checks.ch05_linear_attention import (
    check_chunked_causal_linear_attention,
    check_elu_feature_map,
    check_kernel_attention,
    check_rnn_step,
)
from minilib.course.checks.ch06_distillation import (
    check_distillation_step,
    check_kd_loss,
    check_masked_cosine_loss,
    check_temperature_softmax,
)
from minilib.course.checks.ch07_quantization import (
    check_affine_params,
    check_int8_linear,
    check_int8_linear_layer,
    check_pack_nibbles,
    check_symmetric_quantize,
)
from minilib.course.checks.ch08_pruning import (
    check_cubic_sparsity,
    check_head_columns,
    check_magnitude_mask,
    check_remove_heads,
    check_two_four_mask,
)
from minilib.course.checks.ch09_architecture import (
    check_albert_savings,
    check_grouped_ffn,
    check_grouped_ffn_params,
    check_shuffle,
)
from minilib.course.checks.ch10_huggingface import (
    check_fine_tune_head_and_export,
    check_freeze_all_but_top,
    check_onnx_logits,
    check_predict_label,
)
from minilib.course.checks.ch11_evaluation import (
    check_brevity_penalty,
    check_clipped_matches,
    check_corpus_bleu,
    check_lcs_length,
    check_pareto_points,
    check_perplexity_from_logits,
)
from minilib.course.checks.ch12_capstone import (
    check_changed_fraction,
    check_plan_for_budget,
    check_shortfall,
    check_throughput_per_core,
)
from minilib.course.checks.ch13_fast_generation import (
    check_accepted_count,
    check_cached_attention_step,
    check_kv_cache_bytes,
    check_q8_0,
    check_speculative_round,
)
from minilib.course.checks.ch14_modern_decoders import (
    check_decoder_parameters,
    check_gptq_layer,
    check_rotary,
    check_wanda_mask,
)
from minilib.course.checks.core import REGISTRY, CheckFailed, Exercise, exercise, expect_close, expect_equal
