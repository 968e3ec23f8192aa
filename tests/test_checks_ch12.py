"""Chapter 12's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
from minilib.course.checks import check_changed_fraction, check_shortfall, check_throughput_per_core


def test_throughput_per_core(stub):
    assert check_throughput_per_core(lambda b, ms, t: b / (ms / 1000) / t)
    assert not check_throughput_per_core(stub)
    assert not check_throughput_per_core(lambda b, ms, t: b / (ms / 1000))          # per machine, not per core
    assert not check_throughput_per_core(lambda b, ms, t: b / ms / t)                # per millisecond


def reference_shortfall(size, ms, acc, max_size, max_ms, floor):
    over = [size / max_size - 1, ms / max_ms - 1, 1 - acc / floor if floor else 0.0]
    return sum(max(0.0, x) for x in over)


def test_shortfall(stub):
    assert check_shortfall(reference_shortfall)
    assert not check_shortfall(stub)
    assert not check_shortfall(lambda s, ms, a, S, MS, f: (s / S - 1) + (ms / MS - 1) + (1 - a / f if f else 0))  # no clip
    assert not check_shortfall(lambda s, ms, a, S, MS, f: max(0, s - S) + max(0, ms - MS) + max(0, f - a))  # absolute


def test_changed_fraction(stub):
    assert check_changed_fraction(lambda b, a, t, k: (b[t == k] != a[t == k]).float().mean().item())
    assert not check_changed_fraction(stub)
    assert not check_changed_fraction(lambda b, a, t, k: (b != a).float().mean().item())          # all templates
    assert not check_changed_fraction(lambda b, a, t, k: (b[t == k] != a[t == k]).sum().item())   # a count
