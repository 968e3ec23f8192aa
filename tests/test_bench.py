"""The measurement kit: statistics, interleaving, FLOP counts against PyTorch's own counter,
sizes, peak memory, the headline runner and the notebook budget command. No timing is asserted."""
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from minilib.chapters import find
from minilib.cli import main
from minilib.course import notebook_budget as notebook_budgets
from minilib.experiments import headlines as headline_runner
from minilib.prune import prune_heads, prune_neurons
from minilib.support import bench
from minilib.support.bench import (
    Comparison,
    Headline,
    Timing,
    attention_flops,
    compare,
    count_flops,
    linear_flops,
    memory_bandwidth,
    model_size_bytes,
    param_count,
    peak_matmul_gflops,
    peak_memory,
    time_fn,
)
from minilib.transformer import Classifier, Encoder, TransformerConfig


# ------------------------------------------------------------------------------------------ timing
def test_timing_median_and_interquartile_range():
    timing = Timing([5.0, 1.0, 3.0, 2.0, 4.0])
    assert timing.median == 3.0
    assert timing.spread == 2.0  # inclusive quartiles of 1..5 are 2 and 4
    assert timing.best == 1.0
    assert "median ± IQR of 5" in str(timing)


def test_time_fn_warms_up_then_repeats():
    calls = []
    timing = time_fn(lambda: calls.append(1), warmup=3, repeats=4)
    assert len(calls) == 7 and len(timing.times) == 4
    assert all(t >= 0 for t in timing.times)


@pytest.mark.parametrize("kwargs, message", [({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats")])
def test_time_fn_rejects_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_fn(lambda: None, **kwargs)


def test_time_fn_rejects_a_non_function():
    with pytest.raises(TypeError, match="function of no arguments"):
        time_fn(42)


def test_compare_interleaves_round_robin_with_rotation():
    order = []
    variants = {name: (lambda name=name: order.append(name)) for name in "abc"}
    result = compare(variants, baseline="b", warmup=1, repeats=2)
    assert order == list("abc" "bca" "cab")  # one warm-up round, then two timed rounds
    assert result.baseline == "b"
    assert all(len(t.times) == 2 for t in result.timings.values())


def test_ratio_is_baseline_median_over_variant_median():
    result = Comparison({"slow": Timing([2.0, 2.0, 4.0]), "fast": Timing([0.5, 1.0, 1.0])}, "slow", machine="test box")
    assert result.ratio("fast") == 2.0 and result.ratio("slow") == 1.0
    text = result.table()
    assert "fast" in text and "2.00×" in text and "vs slow" in text and "test box" in text
    html = result._repr_html_()
    assert html.startswith("<table>") and "<td>fast</td>" in html and "test box" in html
    with pytest.raises(ValueError, match="no variant named 'medium'"):
        result.ratio("medium")


def test_compare_rejects_unknown_baseline_and_empty_variants():
    with pytest.raises(ValueError, match="baseline 'x' is not one of the variants"):
        compare({"a": lambda: None}, baseline="x")
    with pytest.raises(ValueError, match="non-empty dict"):
        compare({})
    with pytest.raises(TypeError, match="variant 'a'"):
        compare({"a": 3})


def test_machine_label_names_threads_and_torch_version():
    label = bench.machine_label()
    assert f"{torch.get_num_threads()} torch threads" in label and torch.__version__ in label


@pytest.mark.parametrize("flags, expected", [
    ({"sse2", "avx2", "fma"}, "AVX2"),                                        # AMD EPYC Rome, Intel Haswell
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),                     # AMD EPYC Genoa, Intel Cascade Lake
    ({"avx2", "avx512_vnni", "amx_tile", "amx_int8"}, "AVX-512 VNNI, AMX"),   # Intel Sapphire Rapids
    ({"avx2", "avx_vnni"}, "AVX-VNNI"),                                       # Intel Alder Lake
    (set(), ""),                                                              # an Arm CPU: none of these
])
def test_int8_instructions_name_what_decides_an_int8_gemm(flags, expected):
    assert bench.int8_instructions(flags) == expected


def test_machine_kind_separates_one_model_name_by_its_int8_instructions(monkeypatch):
    monkeypatch.setattr(bench, "_cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "_cpu_flags", lambda: {"avx2"})
    rome = bench.machine_kind()
    monkeypatch.setattr(bench, "_cpu_flags", lambda: {"avx2", "avx512_vnni"})
    assert (rome, bench.machine_kind()) == ("AMD EPYC (AVX2)", "AMD EPYC (AVX-512 VNNI)")


def test_peak_matmul_gflops_is_a_positive_rate():
    assert peak_matmul_gflops(size=64, device="cpu", repeats=3) > 0
    with pytest.raises(ValueError, match="size must be a positive integer"):
        peak_matmul_gflops(size=0)


@pytest.mark.parametrize("kind, bytes_per_run", [("read", 8e6), ("copy", 16e6)])
def test_memory_bandwidth_divides_the_bytes_moved_by_the_median_run(monkeypatch, kind, bytes_per_run):
    calls = []

    def fake_time_fn(fn, warmup, repeats):   # runs the step once (so it must work) and says it took 0.5, 1 or 4 ms
        calls.append(fn())
        return Timing([0.5e-3, 1e-3, 4e-3])

    monkeypatch.setattr(bench, "time_fn", fake_time_fn)
    assert memory_bandwidth(8, kind=kind, device="cpu") == pytest.approx(bytes_per_run / 1e-3 / 1e9)
    result = calls[0]
    assert result.item() == 2e6 if kind == "read" else (result.shape == (2_000_000,) and bool((result == 1).all()))


def test_memory_bandwidth_is_a_positive_rate_and_rejects_bad_arguments():
    assert memory_bandwidth(4, device="cpu", repeats=2) > 0
    with pytest.raises(ValueError, match="megabytes must be a positive integer"):
        memory_bandwidth(0)
    with pytest.raises(ValueError, match="kind must be one of"):
        memory_bandwidth(4, kind="triad")


# ------------------------------------------------------------------------------------------- FLOPs
def test_linear_flops_hand_computed():
    assert linear_flops(tokens=3, d_in=4, d_out=5) == 2 * 3 * 4 * 5 == 120


def test_attention_flops_hand_computed():
    # QKᵀ: 4×4 scores, each a dot product of length 2 -> 16·2 multiply-adds; P·V the same: 64 MACs = 128 FLOPs
    assert attention_flops(batch=1, heads=1, seq=4, head_dim=2) == 128
    assert attention_flops(batch=2, heads=3, seq=4, head_dim=2) == 6 * 128
    # causal: only the 4·5/2 = 10 lower-triangle pairs of 16
    assert attention_flops(batch=1, heads=1, seq=4, head_dim=2, causal=True) == 4 * 10 * 2


def test_attention_flops_match_pytorch_flop_counter():
    q = k = v = torch.randn(2, 3, 16, 8)
    with FlopCounterMode(display=False) as counter:  # the formula written out: two batched matmuls
        torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v
    assert attention_flops(2, 3, 16, 8) == counter.get_total_flops()


@pytest.mark.parametrize("bad", [{"seq": 0}, {"heads": -1}, {"head_dim": 2.5}])
def test_flop_counts_reject_non_positive_sizes(bad):
    args = {"batch": 1, "heads": 1, "seq": 4, "head_dim": 2} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        attention_flops(**args)


def _layer_formula(batch, seq, d, heads, d_ff):
    """One encoder layer by the formulas: Q, K, V, output projections; QKᵀ and P·V; the two FFN layers."""
    tokens = batch * seq
    return (4 * linear_flops(tokens, d, d) + attention_flops(batch, heads, seq, d // heads)
            + linear_flops(tokens, d, d_ff) + linear_flops(tokens, d_ff, d))


def test_count_flops_matches_pytorch_flop_counter_and_the_formulas_on_hf_bert(tiny_bert):
    bert = tiny_bert(max_position_embeddings=32, attn_implementation="eager", model_kwargs={"add_pooling_layer": False})
    batch, seq = 2, 10
    with FlopCounterMode(display=False) as counter, torch.no_grad():  # the reference, run by hand
        bert(torch.randint(0, 50, (batch, seq)))
    assert count_flops(bert, seq=seq, batch=batch) == counter.get_total_flops()
    assert count_flops(bert, seq=seq, batch=batch) == 2 * _layer_formula(batch, seq, d=32, heads=4, d_ff=64)


def test_count_flops_matches_pytorch_flop_counter_on_minilib_encoder_and_classifier():
    config = TransformerConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=3, d_ff=96, max_len=32)
    encoder = Encoder(config).eval()
    batch, seq = 3, 12
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.randint(0, 50, (batch, seq)))
    assert count_flops(encoder, seq=seq, batch=batch) == counter.get_total_flops()
    assert count_flops(encoder, seq=seq, batch=batch) == 3 * _layer_formula(batch, seq, d=64, heads=4, d_ff=96)
    classifier = Classifier(encoder, n_classes=2).eval()  # the head: one (batch, d) @ (d, 2) product more
    assert count_flops(classifier, seq=seq, batch=batch) == (count_flops(encoder, seq=seq, batch=batch)
                                                             + linear_flops(batch, 64, 2))


def test_count_flops_counts_pruned_layers_as_they_run():
    config = TransformerConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=2, d_ff=96, max_len=32)
    encoder = Encoder(config).eval()
    prune_heads(encoder, {0: [1, 3]})          # layer 0 keeps 2 heads of 16 dims: its attention is 32 wide
    prune_neurons(encoder, {1: list(range(48))})  # layer 1 keeps 48 of its 96 FFN neurons
    batch, seq, tokens = 2, 8, 16
    layer0 = (3 * linear_flops(tokens, 64, 32) + linear_flops(tokens, 32, 64) + attention_flops(batch, 2, seq, 16)
              + linear_flops(tokens, 64, 96) + linear_flops(tokens, 96, 64))
    layer1 = _layer_formula(batch, seq, d=64, heads=4, d_ff=48)
    assert count_flops(encoder, seq=seq, batch=batch) == layer0 + layer1


def test_count_flops_rejects_bad_sizes():
    with pytest.raises(ValueError, match="seq must be a positive integer"):
        count_flops(nn.Linear(2, 2), seq=0)


# ------------------------------------------------------------------------------------ size, memory
def test_param_count_counts_tied_weights_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    assert param_count(model) == 10 * 4 + (4 * 10 + 10)
    model[1].weight = model[0].weight  # tie the output layer to the embedding, as language models do
    assert param_count(model) == 10 * 4 + 10
    model[1].bias.requires_grad_(False)
    assert param_count(model, trainable_only=True) == 10 * 4


def test_model_size_counts_parameters_buffers_and_dtypes():
    linear = nn.Linear(100, 100)
    assert model_size_bytes(linear) == 10_100 * 4
    assert model_size_bytes(linear.half()) == 10_100 * 2
    norm = nn.BatchNorm1d(8)  # weight, bias (params) + running mean, var (float) + num_batches_tracked (int64)
    assert model_size_bytes(norm) == 4 * 8 * 4 + 8


def test_model_size_counts_packed_integers_at_their_real_size():
    module = nn.Module()
    packed = torch.quantize_per_tensor(torch.randn(10), 0.1, 0, torch.quint4x2)  # two 4-bit values per byte
    module.register_buffer("weight", packed)
    assert model_size_bytes(module) == 5
    module.register_buffer("codes", torch.zeros(6, dtype=torch.uint8))
    assert model_size_bytes(module) == 5 + 6


def test_model_size_sees_pytorch_dynamic_quantization():
    model = nn.Sequential(nn.Linear(64, 32))
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    # int8 weight 64·32 bytes + float32 bias + float32 scale + int64 zero point
    assert model_size_bytes(quantized) == 64 * 32 + 32 * 4 + 4 + 8


def test_peak_memory_of_a_matmul_grows_quadratically():
    def matmul_peak(n):
        a, b = torch.randn(n, n), torch.randn(n, n)
        return peak_memory(lambda: a @ b)

    assert matmul_peak(128) == 128 * 128 * 4  # only the output is new; the inputs existed before
    assert matmul_peak(256) == 4 * matmul_peak(128)


def test_peak_memory_of_a_vector_op_grows_linearly():
    def scale_peak(n):
        x = torch.randn(n)
        return peak_memory(lambda: x * 2)

    assert scale_peak(1000) == 4000
    assert scale_peak(2000) == 2 * scale_peak(1000)


def test_peak_memory_sees_frees_views_and_in_place_ops():
    x = torch.randn(1000)

    def loop():  # each x * i is freed after its sum: the peak is one temporary, not ten
        total = torch.zeros(())
        for i in range(10):
            total = total + (x * i).sum()
        return total

    assert 4000 <= peak_memory(loop) < 2 * 4000
    assert peak_memory(lambda: (x * 2) * 3) == 2 * 4000  # both alive while the second product is made
    assert peak_memory(lambda: x.view(10, 100)) == 0
    assert peak_memory(lambda: x.mul_(1.0)) == 0


def test_peak_memory_counts_every_output_of_multi_output_ops():
    x = torch.randn(1000)
    # unbind returns views (nothing new); _foreach_mul returns a list of three new tensors
    assert peak_memory(lambda: x.unbind()) == 0
    parts = [torch.randn(100) for _ in range(3)]
    assert peak_memory(lambda: torch._foreach_mul(parts, 2.0)) == 3 * 400
    values = torch.randn(10, 50)
    assert peak_memory(lambda: values.max(dim=1)) == 10 * 4 + 10 * 8  # float maxima and int64 indices


def test_peak_memory_rejects_a_non_function():
    with pytest.raises(TypeError, match="function of no arguments"):
        peak_memory(torch.randn(3))


# ----------------------------------------------------------------------------------- headlines CLI
def test_headline_runner_reports_failures_without_crashing():
    def good():
        return [Headline.at_least("fast thing", 2.0, 1.5, "×", "n=2048"), Headline.at_least("small thing", 3.0, 4.0, "×")]

    def broken():
        raise RuntimeError("kernel exploded")

    def not_headlines():
        return [("fast thing", 2.0)]

    results = [headline_runner.run_chapter(find(number), fn) for number, fn in (("02", good), ("04", broken),
                                                                                ("05", not_headlines))]
    assert not results[0].passed and len(results[0].headlines) == 2
    assert "RuntimeError: kernel exploded" in results[1].error
    assert "must return Headline objects" in results[2].error
    text = headline_runner.table(results)
    assert "PASS" in text and "MISS" in text and "ERROR" in text and "kernel exploded" in text


def test_headline_passes_by_the_comparison_its_target_names():
    assert Headline.at_least("x", 1.6, 1.6, "×").passed and not Headline.at_least("x", 1.59, 1.6, "×").passed
    assert Headline.at_most("x", 2.2, 2.2, "×").passed and not Headline.at_most("x", 2.3, 2.2, "×").passed
    assert [Headline.about("x", r, 1.0, "×").passed for r in (0.79, 0.8, 1.25, 1.26)] == [False, True, True, False]
    assert not Headline.at_least("x", 2.0, 1.6, "×", also=False).passed       # e.g. the tokens differed
    assert not Headline.at_most("x", float("nan"), 0.999, "sparsity").passed  # nothing measured: no pass
    assert Headline.at_most("x", 1.0, 2.0, "×").goal == "≤"


def test_every_headline_module_belongs_to_a_chapter():
    folder = Path(headline_runner.__file__).parent
    declared = sorted(chapter.module for chapter in headline_runner.with_headlines())
    assert declared == sorted(p.stem for p in folder.glob("[!_]*.py"))


def test_bench_names_what_it_expected_in_one_line(capsys):
    assert main(["bench", "no_such_chapter"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no chapter 'no_such_chapter'" in err and "07_quantization" in err
    assert main(["bench", "03"]) == 2
    assert "no headline rows for 03_transformer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- notebook budget
def _write_notebook(path, *sources):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_notebook_budget_measures_time_and_kernel_memory(tmp_path, capsys):
    # the kernel holds 300 MB for half a second, then computes for 1 s of CPU time: the samples must see both
    heavy = _write_notebook(tmp_path / "heavy.ipynb",
                            "import time\nimport numpy as np\nblock = np.ones(300_000_000 // 8)\ntime.sleep(0.5)",
                            "start = time.process_time()\nwhile time.process_time() - start < 1.0:\n    pass\n"
                            "time.sleep(0.3)")
    failing = _write_notebook(tmp_path / "failing.ipynb", "raise ValueError('broken cell')")

    assert main(["notebooks", str(heavy), str(failing)]) == 1  # the failing one misses
    table = capsys.readouterr().out
    assert "heavy.ipynb " in table and "failing.ipynb " in table and "broken cell" in table

    run = notebook_budgets.run_notebook(heavy)
    assert run.error is None and run.seconds > 0.5
    assert run.peak_bytes > 300e6
    assert run.cpu_seconds >= 1.0
    assert run.within_budget == (run.seconds <= 90 and run.peak_bytes <= 1.5e9)


def test_competitor_runs_beside_the_notebooks_and_is_not_counted_as_theirs(tmp_path, capsys):
    import psutil

    sleepy = _write_notebook(tmp_path / "sleepy.ipynb", "import time\ntime.sleep(3)")
    with notebook_budgets.busy_competitor() as competitor:
        assert psutil.Process(competitor.pid).is_running()
        run = notebook_budgets.run_notebook(sleepy)
    assert competitor.poll() is not None                       # stopped with the block
    assert run.cpu_seconds < 1.5                               # the competitor's 3 s of CPU are not the notebook's
    assert main(["notebooks", str(sleepy), "--competitor"]) in (0, 1)
    assert "beside one busy program (--competitor)" in capsys.readouterr().out


def test_notebook_budget_saves_the_tagged_figure(tmp_path, capsys):
    path = _write_notebook(tmp_path / "plot.ipynb",
                           "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
                           "import matplotlib.pyplot as plt\nplt.bar([0, 1], [2, 3])\nplt.show()")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].metadata["tags"] = ["readme-figure"]
    nbformat.write(notebook, path)
    assert main(["notebooks", str(path), "--figures", str(tmp_path / "figures")]) in (0, 1)
    saved = (tmp_path / "figures" / "plot.png").read_bytes()
    assert saved.startswith(b"\x89PNG")
    untagged = _write_notebook(tmp_path / "untagged.ipynb", "1 + 1")
    assert notebook_budgets.run_notebook(untagged).figure is None


def test_notebook_budget_rejects_a_path_that_is_not_a_notebook(tmp_path):
    with pytest.raises(ValueError, match="existing .ipynb"):
        notebook_budgets.run_notebook(tmp_path / "missing.ipynb")


def test_the_course_has_one_entrance_that_lists_its_commands():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "minilib", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert all(f"  {command}" in done.stdout for command in ("bench", "notebooks", "zoo", "assignments", "envcheck",
                                                             "edition", "chapters", "readme", "diagrams", "profile"))
    wrong = subprocess.run([sys.executable, "-m", "minilib", "edition", "--out", "build/x", "00_welcom"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "Traceback" not in wrong.stderr
    assert "no chapter '00_welcom'" in wrong.stderr


@pytest.mark.parametrize("argv, expected", [
    (["nonsense"], "no command 'nonsense'; expected one of chapters, envcheck, bench"),
    (["zoo"], "required: list|verify|rebuild"),
    (["zoo", "rebuild", "no_such_model"], "no artefact named no_such_model"),
    (["notebooks", "missing.ipynb"], "the path of an existing .ipynb file, got 'missing.ipynb'"),
    (["edition", "--timeout", "-3"], "expected a positive number of seconds, got '-3'"),
    (["diagrams", "nope.svg"], "no diagram 'nope.svg'"),
    (["bench", "--bad"], "unrecognized arguments: --bad"),
    (["assignments"], "required: build|grade|gradebook"),
    (["profile", "02"], "chapter 02_self_attention has no profile; the chapters with one are 07_quantization"),
    (["profile"], "the following arguments are required: CHAPTER"),
])
def test_a_wrong_command_line_gets_one_line_that_says_what_was_expected(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err


def test_help_of_a_command_exits_cleanly(capsys):
    assert main(["zoo", "--help"]) == 0
    assert "list|verify|rebuild" in capsys.readouterr().out
