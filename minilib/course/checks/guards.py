"""Guards for the exercises: the answer must do the work itself, by whatever route it would not.

One context manager, :func:`guarded`, does three things around the learner's code, and undoes them afterwards:

1. **reads the answer's code** (:mod:`~minilib.course.checks.reading`): the globals, closure variables, imports,
   default arguments, class bases and attributes it reaches, however they are spelled (``import numpy as xp``,
   ``minilib.experiments.ch02_self_attention.attention.scaled_dot_product_attention``,
   ``torch.nn.modules.transformer.TransformerEncoderLayer``, ``def f(q, attend=sdpa)``), and the learner's own
   helpers too; what the exercise forbids fails the check before anything runs, naming the line;
2. **sets tripwires** on the forbidden Python functions and classes themselves (their code is swapped, not a
   module's attribute): a call trips by any route, including an object built before the check started, a
   function bound in ``__init__``, an unbound ``Class.forward(instance, ...)``; a tripwire the answer catches still
   fails the check;
3. **records what PyTorch ran** (:class:`~minilib.course.checks.recording.Recording`): forbidden ATen kernels and
   torch functions fail at once, and the check can then bound the largest tensor, the work, the dtypes of the
   matrix products, and casts of NaN to integers.

    with guarded(answer, forbid=[minilib.attention, *FUSED_ATTENTION, NUMPY], hint="write the softmax yourself") as run:
        layer = run.build(d_model, n_heads)        # answer is a class (or a function returning a module)
        got = layer(x)
    run.expect_tensors_under(n * n // 4, who="your forward at n = 4096", why="an (n, n) score matrix is …")
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch
import torch.nn.functional as F

from minilib.course.checks.core import CheckFailed, describe_value
from minilib.course.checks.reading import AttributeName, ModuleName, Reference, is_learner_code, references
from minilib.course.checks.recording import Recording

NUMPY = "numpy"  # forbids NumPy by any name, and moving tensors to it (``x.numpy()``, ``np.asarray(x)``)
COURSE = "minilib"  # forbids the course's own library, by any name or route (the answer is its own code)
REFERENCE_LAYERS = (  # PyTorch's and Hugging Face's own attention and Transformer layers
    torch.nn.MultiheadAttention, F.multi_head_attention_forward, torch.nn.TransformerEncoderLayer,
    torch.nn.TransformerDecoderLayer, torch.nn.TransformerEncoder, torch.nn.Transformer, "transformers",
    "aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd")
FUSED_ATTENTION = (  # PyTorch's attention kernels (and the softmax of their math path), by any route
    F.scaled_dot_product_attention, "aten::_scaled_dot_product", "aten::_safe_softmax", "aten::_flash_attention",
    "aten::_efficient_attention", *REFERENCE_LAYERS)
_NUMPY_ATTRIBUTES = ("numpy", "__array__", "__array_interface__", "__array_struct__")
_NOT_SWAPPED = ("minilib.course",)  # the checks themselves: never tripwires


@contextlib.contextmanager
def guarded(answer, forbid=(), hint: str = "", *, allow=(), record: bool = True, max_python_lines: int | None = None):
    """Run a block of the learner's code under the exercise's rules (see the module's docstring).

    forbid: what the exercise forbids: functions and classes (a class forbids its subclasses and instances too),
        modules (everything defined in them), module names as strings (``NUMPY``, ``COURSE``,
        ``"transformers.models.bert"``: read in the code only), ATen kernel name prefixes (``"aten::_int_mm"``).
    allow: objects that stay allowed inside a forbidden module (``minilib.support.bench.param_count``).
    hint: what to do instead, shown with every refusal.
    record: record PyTorch's operations (off for code that exports or compiles a model, which runs its own modes).
    max_python_lines: fail when the learner's own Python code runs this many lines (a loop over every pair of
        tokens where the exercise asks for arithmetic on the sizes).
    Yields a :class:`Guard`.
    """
    guard = Guard(answer, forbid, allow, hint)
    guard.inspect(answer)
    try:
        with _Tripwires(guard.rules.python_callables(), guard.trip, guard.rules.allowed_codes()), \
                (guard.recording if record else contextlib.nullcontext()), \
                (_line_budget(max_python_lines, hint) if max_python_lines else contextlib.nullcontext()):
            yield guard
    except Exception as error:
        if guard.tripped and not isinstance(error, CheckFailed):  # the answer caught the tripwire, then crashed
            guard.raise_if_tripped()
        raise
    guard.raise_if_tripped()


def forbidden_calls(answer, targets, hint: str):
    """``guarded(answer, [getattr(module, name) for module, name in targets], hint)``, kept for older checks."""
    return guarded(answer, [getattr(module, name) for module, name in targets], hint, record=False)


class Guard:
    """What :func:`guarded` yields: the rules, the recording, and what a check asks of them."""

    def __init__(self, answer, forbid, allow, hint: str):
        self.answer, self.hint = answer, hint
        self.rules = _Rules(forbid, allow)
        self.tripped: list[str] = []
        self.recording = Recording(self.rules.aten_prefixes, self.rules.torch_function_names(), self.trip)

    # --- running the answer ---------------------------------------------------------------------------------

    def build(self, *args, **kwargs) -> torch.nn.Module:
        """Build the learner's module: ``answer(*args)`` (a class, or a function that returns a module), then read
        what it holds (a reference module built in ``__init__``, a library function kept as an attribute)."""
        answer = self.answer
        if isinstance(answer, torch.nn.Module):
            name = type(answer).__name__
            raise CheckFailed(f"this check builds your module itself, with its own sizes: pass the class {name}",
                              f"the class {name} (no parentheses)", f"an instance, {name}(…)",
                              f"call the check with {name}, not {name}(…)")
        if not callable(answer):
            raise CheckFailed("your answer", "a class (an nn.Module)", describe_value(answer))
        module = answer(*args, **kwargs)
        if not isinstance(module, torch.nn.Module):
            arguments = ", ".join([*map(_short, args), *(f"{k}={_short(v)}" for k, v in kwargs.items())])
            raise CheckFailed(f"{getattr(answer, '__name__', 'your answer')}({arguments}) should build your layer",
                              "an nn.Module", describe_value(module),
                              "pass the class itself; its __init__ sets up the weights and forward computes")
        self.inspect(module)
        return module

    def start_recording(self) -> None:
        """Judge only what runs from here on (a module's forward, not the __init__ that built it)."""
        self.recording.clear()

    def inspect(self, value) -> None:
        """Fail if ``value`` (the answer, or an object it built) reaches anything the exercise forbids."""
        label = self.rules.match(Reference(value, "", ""))
        if label:
            raise CheckFailed(f"your answer is {label} itself, which this exercise asks you to write",
                              "your own code", label, self.hint)
        for reference in references(value):
            label = self.rules.match(reference)
            if label:
                raise CheckFailed(f"your answer uses {label}, which this exercise asks you to do without",
                                  "your own code", f"{reference.written}  (in {reference.where})", self.hint)

    def trip(self, label: str):
        """Called by a tripwire or the recording: remember the call (the answer may catch it) and fail."""
        self.tripped.append(label)
        raise CheckFailed(f"your answer calls {label}, which this exercise asks you to do without",
                          "your own code", f"a call to {label}", self.hint)

    def raise_if_tripped(self) -> None:
        if self.tripped:
            label = self.tripped[0]
            raise CheckFailed(f"your answer calls {label} (and carries on when that fails), which this exercise "
                              "asks you to do without", "your own code", f"a call to {label}", self.hint)

    # --- what the recording says ----------------------------------------------------------------------------

    def expect_tensors_under(self, limit: int, who: str, why: str) -> None:
        """Fail when the block materialised a tensor of ``limit`` numbers or more (views of others do not count).

        who: whose code and on what (``"your function at n = 4096"``); why: the reason for the limit, as a hint.
        """
        numbers, op, shape = self.recording.largest_new_tensor()
        if numbers >= limit:
            raise CheckFailed(f"{who} built a tensor of {numbers:,} numbers (shape {shape}, by {op})",
                              f"every tensor under {limit:,} numbers", f"{numbers:,}", why)

    def expect_work_under(self, limit: int, who: str, why: str, floating: bool | None = None) -> None:
        """Fail when the block did ``limit`` or more operations (multiply-adds of its matrix products plus the
        elements of every other operation): dense work done in pieces is as slow as dense work done at once."""
        work = self.recording.work(floating)
        if work >= limit:
            kind = "floating-point " if floating else ""
            raise CheckFailed(f"{who} did {work:,} {kind}operations", f"under {limit:,}", f"{work:,}", why)

    def expect_integer_matmuls(self, who: str, why: str, float_work_limit: int) -> None:
        """Fail unless the products were integer matrix products: none on floating-point operands, at least one on
        integers, and the floating-point work under ``float_work_limit`` (no products by multiply-and-sum)."""
        floats = self.recording.matmuls(floating=True)
        if floats:
            raise CheckFailed(f"{who} multiplies floating-point matrices", "only integer matrix products",
                              ", ".join(op.describe() for op in floats[:3]), why)
        if not self.recording.matmuls(floating=False):
            raise CheckFailed(f"{who} has no integer matrix product", "an integer matmul (int8 or int32 operands)",
                              "none", why)
        self.expect_work_under(float_work_limit, who, why, floating=True)

    def expect_finite_casts(self, who: str, why: str) -> None:
        """Fail when the block cast a NaN or an infinity to an integer type (0/0 for an all-zero row, say): the
        result is whatever the machine does (0 on x86, by accident), not a value."""
        casts = self.recording.nonfinite_casts()
        if casts:
            raise CheckFailed(f"{who} casts NaN (or infinity) to an integer", "finite values before the cast",
                              ", ".join(op.describe() for op in casts[:3]), why)


class _Rules:
    """The forbidden things of one exercise, sorted by how each is caught."""

    def __init__(self, forbid, allow):
        self.objects, self.modules, self.aten_prefixes = [], [], []
        for item in forbid:
            if isinstance(item, str) and item.startswith("aten::"):
                self.aten_prefixes.append(item)
            elif isinstance(item, str):
                self.modules.append(item)
            elif isinstance(item, types.ModuleType):
                self.modules.append(item.__name__)
                self.objects.append(item)
            else:
                self.objects.append(item)
        self.allowed_objects = list(allow)
        self.allowed = {id(_unwrap(obj)) for obj in allow}
        self.allowed_modules = {getattr(obj, "__module__", "") or "" for obj in allow}
        self.numpy = NUMPY in self.modules

    def match(self, reference: Reference) -> str | None:
        """A label for what ``reference`` reaches when the exercise forbids it, else None."""
        obj = reference.obj
        if isinstance(obj, ModuleName):
            return obj.name if self._module_forbidden(obj.name) else None
        if isinstance(obj, AttributeName):
            return f"NumPy (.{obj.name})" if self.numpy and obj.name in _NUMPY_ATTRIBUTES else None
        return self._match_object(obj)

    def _match_object(self, obj) -> str | None:
        if id(_unwrap(obj)) in self.allowed:
            return None
        if isinstance(obj, types.MethodType):
            return self._match_object(obj.__func__) or self._match_object(obj.__self__)
        for target in self.objects:
            if isinstance(target, types.ModuleType):
                continue
            if _unwrap(obj) is _unwrap(target):
                return _label(target)
            if isinstance(target, type) and isinstance(obj, type) and issubclass(obj, target):
                return f"{_label(target)} (your class {obj.__name__} is built on it)"
            if isinstance(target, type) and isinstance(obj, target):
                return f"{_label(target)} (an instance of it)"
        if isinstance(obj, types.ModuleType):
            return obj.__name__ if self._module_forbidden(obj.__name__) else None
        defined_in = _defining_module(obj)
        if defined_in and self._in_modules(defined_in):
            return _label(obj) if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) \
                else f"{_label(type(obj))} (an instance of it)"
        return None

    def _module_forbidden(self, name: str) -> bool:
        """A module of a forbidden tree, unless an allowed object lives in it (its other objects are checked one by
        one as the code reaches them)."""
        holds_allowed = any(module == name or module.startswith(name + ".") for module in self.allowed_modules)
        return self._in_modules(name) and not holds_allowed

    def _in_modules(self, name: str) -> bool:
        return any(name == module or name.startswith(module + ".") for module in self.modules)

    def allowed_codes(self) -> frozenset:
        """The code of the allowed Python functions: what they call on their own behalf does not trip."""
        return frozenset(fn.__code__ for obj in self.allowed_objects for fn in _python_functions(obj))

    def torch_function_names(self) -> set[str]:
        """Names the function-level recording refuses: torch's C functions, and NumPy's doors when NumPy is out."""
        names = {obj.__name__ for obj in self.objects
                 if isinstance(obj, types.BuiltinFunctionType) and (obj.__module__ or "").startswith("torch")}
        return names | (set(_NUMPY_ATTRIBUTES[:2]) if self.numpy else set())

    def python_callables(self) -> list[tuple[types.FunctionType, str]]:
        """(function, label) for every Python function whose code becomes a tripwire."""
        found: dict[int, tuple[types.FunctionType, str]] = {}

        def add(value, label):
            for fn in _python_functions(value):
                if id(fn) not in self.allowed and not fn.__module__.startswith(_NOT_SWAPPED):
                    found.setdefault(id(fn), (fn, label))

        for obj in self.objects:
            if isinstance(obj, types.ModuleType):
                for value in _defined_in_tree(obj.__name__):
                    add(value, _label(value))
            else:
                add(obj, _label(obj))
        return list(found.values())


@contextlib.contextmanager
def _line_budget(limit: int, hint: str):
    """Count the lines the learner's own code runs (a trace function only in their frames), failing at ``limit``."""
    count = 0

    def in_learner_frame(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count >= limit:
                raise CheckFailed(f"your code ran {limit:,} lines of Python on this case and was stopped",
                                  f"far fewer than {limit:,} (arithmetic on the sizes)", f"{limit:,} or more", hint)
        return in_learner_frame

    def on_call(frame, event, arg):
        return in_learner_frame if is_learner_code(frame.f_code) else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


class _Tripwires:
    """Swap the code of each function for a tripwire's, and put it back: every route to the function trips.

    A call made on behalf of an allowed function (``allowed_codes`` on the stack) runs the original code instead.
    """

    def __init__(self, functions: list[tuple[types.FunctionType, str]], trip, allowed_codes=frozenset()):
        self.functions, self.trip, self.allowed_codes, self.originals = functions, trip, allowed_codes, []

    def __enter__(self):
        try:
            for fn, label in self.functions:
                original = fn.__code__
                fn.__code__ = _tripwire_code(original, self._handler(fn, original, label))
                self.originals.append((fn, original))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for fn, original in reversed(self.originals):
            fn.__code__ = original
        self.originals.clear()
        return False

    def _handler(self, fn: types.FunctionType, original: types.CodeType, label: str):
        def on_call(args, kwargs):
            if self.allowed_codes and _called_from(self.allowed_codes):
                clone = types.FunctionType(original, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
                clone.__kwdefaults__ = fn.__kwdefaults__
                return clone(*args, **kwargs)
            return self.trip(label)
        return on_call


def _called_from(codes) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _tripwire_code(original: types.CodeType, handler) -> types.CodeType:
    """A code object that calls ``handler(args, kwargs)``, with as many free variables as ``original`` (so it fits
    the function's closure), its name and place (so tracebacks still say which function was called)."""
    names = [f"_free{i}" for i in range(len(original.co_freevars))]
    source = (f"def _outer({', '.join(names)}):\n"
              f"    def _tripwire(*args, **kwargs):\n"
              f"        handler = '__handler__'\n"
              f"        return handler(args, kwargs)\n"
              + (f"        {', '.join(names)}\n" if names else "")
              + "    return _tripwire\n")
    namespace: dict = {}
    exec(compile(source, "<tripwire>", "exec"), namespace)  # noqa: S102 - our own fixed template
    code = namespace["_outer"](*names).__code__
    consts = tuple(handler if const == "__handler__" else const for const in code.co_consts)
    return code.replace(co_consts=consts, co_name=original.co_name, co_qualname=original.co_qualname,
                        co_filename=original.co_filename, co_firstlineno=original.co_firstlineno)


def _python_functions(value):
    """The Python functions that running ``value`` goes through: itself (and what it wraps), or a class's methods."""
    if isinstance(value, type):
        for name, attribute in vars(value).items():
            if name.startswith("__") and name not in ("__init__", "__call__"):
                continue
            if isinstance(attribute, (staticmethod, classmethod)):
                attribute = attribute.__func__
            if isinstance(attribute, types.FunctionType):
                yield from _python_functions(attribute)
        return
    while isinstance(value, types.FunctionType):
        yield value
        value = getattr(value, "__wrapped__", None)


def _defined_in_tree(module_name: str):
    """Functions and classes defined in the module ``module_name`` or its submodules (those imported so far)."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == module_name or name.startswith(module_name + ".")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) == name:
                yield value


def _defining_module(obj) -> str | None:
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return getattr(obj, "__module__", None)
    return type(obj).__module__


def _unwrap(obj):
    while hasattr(obj, "__wrapped__") and isinstance(obj, types.FunctionType):
        obj = obj.__wrapped__
    return obj


def _label(obj) -> str:
    """A readable name: ``torch.nn.MultiheadAttention`` rather than ``torch.nn.modules.activation.MultiheadAttention``."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    name = getattr(obj, "__name__", type(obj).__name__)
    for public in (torch.nn, F, torch):
        if getattr(public, name, None) is obj:
            return f"{public.__name__}.{name}"
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", name)
    return f"{module}.{qualname}" if module else qualname


def _short(value) -> str:
    from minilib.course.checks.reading import repr_short

    return repr_short(value, 40)

