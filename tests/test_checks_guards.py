"""The guard behind every check: what it reads in an answer's code, the tripwires it sets and always removes, what
it records at PyTorch's dispatcher, and the messages for answers of the wrong kind."""
import functools
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import minilib.attention as attention
from minilib.course.checks.core import CheckFailed, expect_close, expect_number
from minilib.course.checks.guards import COURSE, NUMPY, guarded
from minilib.course.checks.recording import Recording


def refusal(answer, forbid, run=None):
    """The CheckFailed message of guarding ``answer`` (and running ``run`` inside), or None when it passes."""
    try:
        with guarded(answer, forbid, "do it yourself"):
            if run is not None:
                run()
    except CheckFailed as failure:
        return f"{failure.what} | {failure.got}"
    return None


def mine(q, k, v):
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), -1) @ v


# --- reading the answer's code -------------------------------------------------------------------------------

def test_reading_finds_the_forbidden_function_however_it_is_reached():
    import minilib.attention as lib
    from minilib.attention import scaled_dot_product_attention as attend

    def aliased(q, k, v):
        return attend(q, k, v)

    def through_module(q, k, v):
        return lib.scaled_dot_product_attention(q, k, v)

    def imported_inside(q, k, v):
        from minilib.attention import scaled_dot_product_attention as inner
        return inner(q, k, v)

    def by_string(q, k, v):
        return __import__("minilib.attention", fromlist=["x"]).scaled_dot_product_attention(q, k, v)

    def with_default(q, k, v, fn=attention.scaled_dot_product_attention):
        return fn(q, k, v)

    def helper_chain(q, k, v):  # the learner's helper calls the library
        return aliased(q, k, v)

    class Holder:
        method = staticmethod(attention.scaled_dot_product_attention)
        plain = attention.memory_efficient_attention

    forbid = [attention.scaled_dot_product_attention, attention.memory_efficient_attention, "minilib.attention"]
    for answer in (aliased, through_module, imported_inside, by_string, with_default, helper_chain, Holder,
                   functools.partial(mine, torch.ones(1)), functools.partial(attention.scaled_dot_product_attention)):
        message = refusal(answer, forbid)
        if answer.__class__ is functools.partial and answer.func is mine:
            assert message is None
        else:
            assert message and "minilib.attention" in message, (answer, message)


def test_reading_follows_python_scopes_not_names():
    np = "not numpy"  # noqa: F841 - a local named like a forbidden module

    def local_names(q, k, v):
        np = torch  # a local, not NumPy
        F = np.nn.functional
        return F.softmax(q @ k.T, -1) @ v

    def parameter_named_like_numpy(q, k, v, numpy=None):
        return mine(q, k, v)

    assert refusal(local_names, [NUMPY, COURSE]) is None
    assert refusal(parameter_named_like_numpy, [NUMPY]) is None


def test_reading_finds_numpy_by_any_name():
    import numpy as xp

    def aliased(q, k, v):
        return torch.from_numpy(xp.asarray(q) @ xp.asarray(k).T)

    def method(q, k, v):
        return q.numpy()

    def imported_inside(q, k, v):
        from numpy import linalg
        return linalg.norm(q)

    for answer in (aliased, method, imported_inside):
        message = refusal(answer, [NUMPY])
        assert message and ("numpy" in message or "NumPy" in message), message


def test_reading_finds_objects_built_in_init_and_subclasses():
    class Built(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.MultiheadAttention(8, 2)

    class Subclass(torch.nn.MultiheadAttention):
        pass

    assert "MultiheadAttention" in refusal(Built, [torch.nn.MultiheadAttention])
    assert "built on it" in refusal(Subclass, [torch.nn.MultiheadAttention])
    built_before = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.MultiheadAttention(8, 2))
    with pytest.raises(CheckFailed, match="an instance of it"):
        with guarded(lambda: 0, [torch.nn.MultiheadAttention]) as run:
            run.inspect(built_before)  # what an answer's __init__ built, read after it ran


# --- tripwires ------------------------------------------------------------------------------------------------

def test_a_tripwire_fires_by_any_route_and_is_always_removed(tmp_path, monkeypatch):
    original_code = attention.scaled_dot_product_attention.__code__
    (tmp_path / "learner_helpers_for_the_test.py").write_text(
        "from minilib.attention import scaled_dot_product_attention as bound_at_import\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "learner_helpers_for_" + "the_test"

    def hidden(q, k, v):  # the reader cannot see the module: it is imported, first time, while the tripwire is set
        helpers = __import__(name)
        return helpers.bound_at_import(q, k, v)

    q = torch.randn(3, 4)
    assert "calls minilib.attention.scaled_dot_product_attention" in refusal(
        hidden, [attention.scaled_dot_product_attention], lambda: hidden(q, q, q))
    assert attention.scaled_dot_product_attention.__code__ is original_code
    helpers = sys.modules[name]
    torch.testing.assert_close(helpers.bound_at_import(q, q, q), mine(q, q, q))  # a later lesson cell works


def test_an_unbound_method_trips_and_the_class_still_works_afterwards():
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)

    def unbound(x):
        return type(mha).forward(mha, x, x, x)[0]

    assert "calls torch.nn.MultiheadAttention" in refusal(lambda x: 0, [torch.nn.MultiheadAttention],
                                                          lambda: unbound(x))
    assert mha(x, x, x)[0].shape == (1, 3, 8)


def test_a_caught_tripwire_still_fails_and_nested_guards_unwind():
    def caught():
        try:
            attention.scaled_dot_product_attention(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2))
        except Exception:  # noqa: BLE001
            pass

    assert "carries on" in refusal(lambda: 0, [attention.scaled_dot_product_attention], caught)
    code = attention.memory_efficient_attention.__code__
    with pytest.raises(CheckFailed):
        with guarded(lambda: 0, [attention.memory_efficient_attention]):
            with guarded(lambda: 0, [attention]):
                raise CheckFailed("inner", "", "")
    assert attention.memory_efficient_attention.__code__ is code


def test_allowed_functions_run_what_they_call():
    from minilib.quant import int8 as int8_module
    x = torch.randint(-127, 128, (20, 16), dtype=torch.int8)
    with guarded(lambda: 0, [int8_module], allow=[int8_module.int8_matmul]):
        got = int8_module.int8_matmul(x, x.t())  # it calls the module's own helpers
    torch.testing.assert_close(got, x.int() @ x.int().t())


# --- the recording --------------------------------------------------------------------------------------------

def test_the_recording_sees_every_route_to_a_product():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    routes = [lambda: a @ b, lambda: torch.ops.aten.mm(a, b), lambda: torch._C._nn.linear(a, b.T),
              lambda: torch.einsum("ik,kj->ij", a, b), lambda: F.linear(a, b.T)]
    for route in routes:
        with Recording() as rec:
            route()
        assert len(rec.matmuls(floating=True)) == 1 and rec.work(floating=True) >= 4 * 8 * 3
    with Recording() as rec:
        torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    assert len(rec.matmuls(floating=False)) == 1 and not rec.matmuls(floating=True)


def test_the_recording_counts_materialised_tensors_not_views():
    row = torch.randn(1, 1000)
    with Recording() as rec:
        row.expand(1000, 1000)  # a view: no storage
        row.T @ row             # 1000 × 1000 materialised
    numbers, op, shape = rec.largest_new_tensor()
    assert numbers == 1_000_000 and shape == (1000, 1000) and op == "aten::mm"
    with Recording() as rec:
        row.expand(1000, 1000)[::2]
    assert rec.largest_new_tensor()[0] == 0


def test_the_recording_sees_nan_cast_to_integers():
    zeros = torch.zeros(4)
    with Recording() as rec:
        (zeros / zeros.abs().max()).round().to(torch.int8)
    assert [op.name for op in rec.nonfinite_casts()] == ["aten::_to_copy"]
    with Recording() as rec:
        (zeros / zeros.abs().max().clamp_min(1e-12)).round().to(torch.int8)
        torch.tensor([-math.inf, 0.0]).argmax()  # an index of a masked row is not a cast
    assert not rec.nonfinite_casts()


# --- messages -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("got, words", [
    (None, ["None", "`return`"]), ((torch.ones(2, 3), None), ["a tuple of 2", "not a tuple"]),
    ({"out": torch.ones(2, 3)}, ["a dict with keys 'out'"]), (torch.ones(3, 2), ["shape (3, 2)", "order"]),
    (torch.ones(2, 3, dtype=torch.int64), ["dtype float32", "int64"]), (mine, ["the function mine", "call it"]),
])
def test_wrong_kinds_are_named(got, words):
    with pytest.raises(CheckFailed) as failure:
        expect_close("the output", got, torch.zeros(2, 3), dtype=torch.float32)
    message = f"{failure.value.what} {failure.value.expected} {failure.value.got} {failure.value.hint}"
    assert all(word in message for word in words), message


def test_previews_show_where_values_differ():
    expected = torch.zeros(3, 50)
    got = expected.clone()
    got[2, 40] = 1.0
    with pytest.raises(CheckFailed) as failure:
        expect_close("x", got, expected)
    assert "at [2, 38:44]" in failure.value.got and "1 of 150 values differ" in failure.value.got
    assert "at [2, 38:44]: [0, 0, 0, 0, 0, 0, …]" == failure.value.expected


def test_numbers_in_any_form():
    for value in (3, 3.0, torch.tensor(3), torch.tensor([3.0])):
        expect_number("n", value, 3)
    with pytest.raises(CheckFailed, match="return a number"):
        expect_number("n", "3", 3)


def test_a_crash_names_the_learners_line_not_torchs():
    from minilib.course.checks.core import describe_crash

    def answer(x):
        return torch.nn.functional.softmax(x @ torch.ones(3, 4), dim=-1)  # a shape mistake, raised inside torch

    try:
        answer(torch.ones(2, 5))
    except RuntimeError as error:
        message = describe_crash("check_x", error)
    assert "your code raised RuntimeError" in message and "in answer, line" in message and "x @ torch.ones(3, 4)" in message
    try:
        torch.ones(2)[None].reshape(3)  # raised with no learner frame on the stack
    except RuntimeError as error:
        error.__traceback__ = None
        assert "could not use what your answer returned" in describe_crash("check_x", error)
