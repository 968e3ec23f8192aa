"""Exercise feedback: the visible checks that follow every code exercise.

Each chapter has its own module here (``ch02_attention.py``, ``ch07_quant.py``, ...), imported below one by
one (a new chapter module is added to that list). A check is a plain function decorated with
:func:`~minilib.course.checks.core.exercise`; it tests the learner's answer on small hand-made cases against
the reference and *never raises*: it prints what was expected, what was got and a hint, and returns
``True`` or ``False``. The machinery the checks share is in :mod:`minilib.course.checks.core`.

    from minilib.course.checks import check_attention_scores
    check_attention_scores(attention_scores)   # prints ✔ or ✘ with a hint

For grading, set ``MINILIB_GRADING_LOG`` to a file: every check appends one JSON line
``{"check": name, "passed": bool, "points": p, "message": ...}`` to it.
"""
from minilib.course.checks.core import REGISTRY, CheckFailed, Exercise, exercise, expect_close, expect_equal
from minilib.course.checks.ch00_welcome import check_matmul_flops, check_gflops, check_tensor_bytes
from minilib.course.checks.ch01_cost import (check_encoder_layer_params, check_attention_matmul_flops,
                                             check_crossover_length)
from minilib.course.checks.ch02_attention import (check_softmax_attention, check_split_heads,
                                                  check_causal_padding_mask, check_online_softmax_step)
from minilib.course.checks.ch03_transformer import (check_sinusoidal_positions, check_pre_norm_residual,
                                                    check_warmup_linear, check_clip_by_global_norm)
from minilib.course.checks.ch04_sparse import check_window_mask, check_add_global_tokens, check_window_tile_count
from minilib.course.checks.ch05_linear import check_elu_feature_map, check_kernel_attention, check_rnn_step
from minilib.course.checks.ch06_distill import check_temperature_softmax, check_kd_loss, check_masked_cosine_loss
from minilib.course.checks.ch07_quant import (check_symmetric_quantize, check_affine_params, check_int8_linear,
                                              check_pack_nibbles)
from minilib.course.checks.ch08_prune import (check_magnitude_mask, check_cubic_sparsity, check_two_four_mask,
                                              check_head_columns)
from minilib.course.checks.ch09_arch import check_grouped_ffn_params, check_shuffle, check_albert_savings
from minilib.course.checks.ch10_hf import check_predict_label, check_freeze_all_but_top, check_onnx_logits
from minilib.course.checks.ch11_eval import (check_perplexity_from_logits, check_clipped_matches,
                                             check_brevity_penalty, check_lcs_length, check_pareto_points)
from minilib.course.checks.ch12_capstone import check_throughput_per_core, check_shortfall, check_changed_fraction
from minilib.course.checks.ch13_generation import check_kv_cache_bytes, check_accepted_count, check_q8_0
# the "build it" exercises (a module-scale answer per chapter, 02-13)
from minilib.course.checks.ch02_build_it import check_multihead_attention
from minilib.course.checks.ch03_build_it import check_encoder_layer
from minilib.course.checks.ch04_build_it import check_blocked_window_attention
from minilib.course.checks.ch05_build_it import check_chunked_causal_linear_attention
from minilib.course.checks.ch06_build_it import check_distillation_step
from minilib.course.checks.ch07_build_it import check_int8_linear_layer
from minilib.course.checks.ch08_build_it import check_remove_heads
from minilib.course.checks.ch09_build_it import check_grouped_ffn
from minilib.course.checks.ch10_build_it import check_fine_tune_head_and_export
from minilib.course.checks.ch11_build_it import check_corpus_bleu
from minilib.course.checks.ch12_build_it import check_plan_for_budget
from minilib.course.checks.ch13_build_it import check_cached_attention_step
