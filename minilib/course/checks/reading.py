"""What an answer's code refers to, read without running it.

:func:`references` reads the compiled code of a learner's function, class or module (the same code Python runs,
so a local variable is never mistaken for a global of the same name) and lists every object it can reach by name:
the globals and closure variables it reads, with their attribute chains (``np.linalg.norm``,
``torch.nn.modules.transformer.TransformerEncoderLayer``), the modules it imports inside its body, module names
written as strings (``__import__("numpy")``), default arguments, class bases and attributes, and, for a module
already built, its attributes and submodules. Helpers the learner wrote are read too, however they are reached.
"""
from __future__ import annotations

import dataclasses
import dis
import functools
import inspect
import linecache
import os
import re
import sys
import sysconfig
import types

import torch

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclasses.dataclass(frozen=True)
class ModuleName:
    """A module named in the code (an import, or a string passed to ``__import__``), whether imported or not."""

    name: str


@dataclasses.dataclass(frozen=True)
class AttributeName:
    """An attribute read from a value the reader cannot know (``x.numpy()`` on an argument ``x``)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Reference:
    """An object the answer reaches (or a :class:`ModuleName`, :class:`AttributeName`), as written, and where."""

    obj: object
    written: str
    where: str


def references(answer):
    """Yield a :class:`Reference` for everything ``answer`` (a function, class, module instance, partial or bound
    method) reaches by name, following the learner's own helpers."""
    yield from _Reader().read(answer, f"your {_kind(answer)} {_name(answer)}")


def is_learner_code(code: types.CodeType) -> bool:
    """True for code written by the learner (a notebook cell, a script, a test), not by Python, PyTorch or the course."""
    return not _in_library(code.co_filename)


def learner_frame(traceback):
    """The innermost frame of ``traceback`` in the learner's code (or None): where their code went wrong."""
    frames = [frame for frame in _walk_traceback(traceback) if is_learner_code(frame.f_code)]
    return frames[-1] if frames else None


def source_line(code: types.CodeType, lineno: int | None) -> str:
    """The stripped source line ``lineno`` of ``code``'s file, or "" when the source is not available."""
    return linecache.getline(code.co_filename, lineno).strip() if lineno else ""


class _Reader:
    def __init__(self):
        self.seen: set[int] = set()

    def read(self, value, where: str):
        if id(value) in self.seen:
            return
        self.seen.add(id(value))
        if isinstance(value, functools.partial):
            yield Reference(value.func, _name(value.func), where)
            yield from self.read(value.func, where)
            for item in (*value.args, *value.keywords.values()):
                yield from self._value(item, repr_short(item), f"{where} (an argument bound in functools.partial)")
        elif isinstance(value, types.MethodType):
            yield from self._value(value.__func__, _name(value.__func__), where)
            yield from self._value(value.__self__, _name(value.__self__), where)
        elif isinstance(value, (staticmethod, classmethod)):
            yield from self._value(value.__func__, _name(value.__func__), where)
        elif isinstance(value, property):
            for accessor in (value.fget, value.fset):
                if accessor is not None:
                    yield from self.read(accessor, where)
        elif isinstance(value, types.FunctionType):
            yield from self._function(value)
        elif isinstance(value, type):
            yield from self._class(value)
        elif isinstance(value, torch.nn.Module) or _is_learner_object(value):
            yield from self._instance(value, where)

    def _value(self, value, written: str, where: str):
        """An object the code reaches: report it, and read it too when the learner wrote it."""
        yield Reference(value, written, where)
        if _is_learner_object(value) or isinstance(value, (functools.partial, types.MethodType, torch.nn.Module)):
            yield from self.read(value, where)

    def _function(self, fn: types.FunctionType):
        code, defaults = fn.__code__, fn.__defaults__ or ()
        first = code.co_argcount - len(defaults)
        named = {code.co_varnames[first + i]: default for i, default in enumerate(defaults)}
        for name, default in {**named, **(fn.__kwdefaults__ or {})}.items():
            yield from self._value(default, f"{name}={_name(default)}", f"the default arguments of {fn.__qualname__}")
        if not is_learner_code(fn.__code__):
            return
        closure = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        yield from self._code(fn.__code__, fn.__globals__, closure)

    def _code(self, code: types.CodeType, namespace: dict, closure: dict):
        bound: dict[str, object] = {}  # locals bound to an import in this body: ``import numpy as xp``
        value, written, imported, fromlist = _UNKNOWN, "", _UNKNOWN, None
        previous = None
        for instruction in dis.get_instructions(code):
            op, arg = instruction.opname, instruction.argval
            where = _where(code, instruction)
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                value, written = _lookup(arg, namespace), arg
            elif op in ("LOAD_DEREF", "LOAD_CLASSDEREF") and arg in closure:
                value, written = _cell(closure[arg]), arg
            elif op in ("LOAD_FAST", "LOAD_FAST_CHECK") and arg in bound:
                value, written = bound[arg], arg
            elif op in ("LOAD_ATTR", "LOAD_METHOD"):
                if value is _UNKNOWN:
                    yield Reference(AttributeName(arg), f".{arg}", where)
                else:
                    value, written = _attribute(value, arg), f"{written}.{arg}"
            elif op == "IMPORT_NAME":  # after LOAD_CONST level, LOAD_CONST fromlist
                fromlist = previous.argval if previous is not None and previous.opname == "LOAD_CONST" else None
                yield Reference(ModuleName(arg), f"import {arg}", where)
                imported = sys.modules.get(arg if fromlist else arg.split(".")[0], _UNKNOWN)
                value, written = imported, f"import {arg}"
            elif op == "IMPORT_FROM":  # ``from a import b``, or a step of ``import a.b.c as d``
                value, written = _attribute(imported, arg), f"{written}.{arg}"
                if not fromlist:
                    imported = value
            elif op in ("STORE_FAST", "STORE_DEREF", "STORE_NAME") and value is not _UNKNOWN:
                bound[arg] = value
                value = _UNKNOWN
            elif op == "LOAD_CONST" and isinstance(arg, str) and _MODULE_NAME.fullmatch(arg):
                yield Reference(ModuleName(arg), repr(arg), where)  # __import__("numpy"), sys.modules["..."]
                value = _UNKNOWN
            elif op == "LOAD_CONST" and isinstance(arg, types.CodeType):  # a nested function, lambda, class body
                yield from self._code(arg, namespace, closure)
                value = _UNKNOWN
            else:
                value = _UNKNOWN
            if op in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST", "LOAD_FAST_CHECK",
                      "LOAD_ATTR", "LOAD_METHOD", "IMPORT_NAME", "IMPORT_FROM") and value is not _UNKNOWN:
                yield from self._value(value, written, where)
            previous = instruction

    def _class(self, cls: type):
        if not _is_learner_class(cls):
            return
        for base in cls.__mro__[1:]:
            if base is not object:
                yield Reference(base, _name(base), f"the base classes of your class {cls.__name__}")
        for klass in cls.__mro__:
            if klass is object or not _is_learner_class(klass):
                continue
            for name, attribute in vars(klass).items():
                if name.startswith("__") and name not in ("__init__", "__call__"):
                    continue
                where = f"{klass.__name__}.{name}"
                if isinstance(attribute, (staticmethod, classmethod, property)):
                    yield from self.read(attribute, where)
                else:  # a method, or a class attribute: a library function kept there is reported too
                    yield from self._value(attribute, where, f"the class attribute {where}")

    def _instance(self, obj, where: str):
        yield from self.read(type(obj), where)
        for name, attribute in getattr(obj, "__dict__", {}).items():
            if name in ("_modules", "_parameters", "_buffers") or name.startswith("_forward") or "hooks" in name:
                continue
            yield from self._value(attribute, f"self.{name}", f"the attribute self.{name} of {_name(obj)}")
        if isinstance(obj, torch.nn.Module):
            for name, module in obj.named_modules():
                if name:
                    yield from self._value(module, f"self.{name}", f"the submodule self.{name} of {_name(obj)}")


class _Unknown:
    def __repr__(self):
        return "<unknown>"


_UNKNOWN = _Unknown()


def _lookup(name: str, namespace: dict):
    if name in namespace:
        return namespace[name]
    builtins = namespace.get("__builtins__", {})
    builtins = vars(builtins) if isinstance(builtins, types.ModuleType) else builtins
    return builtins.get(name, _UNKNOWN)


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a variable not assigned yet
        return _UNKNOWN


def _attribute(value, name: str):
    """``value.name`` without running the learner's or a library's properties (a module's lazy imports excepted)."""
    if value is _UNKNOWN:
        return _UNKNOWN
    try:
        if isinstance(value, types.ModuleType):
            return getattr(value, name)
        found = inspect.getattr_static(value, name)
    except Exception:  # noqa: BLE001 - anything unknown is simply not followed
        return _UNKNOWN
    if isinstance(found, (staticmethod, classmethod)):
        return found.__func__
    if isinstance(found, property) or type(found).__name__ in ("getset_descriptor", "member_descriptor"):
        return _UNKNOWN
    return found


def _where(code: types.CodeType, instruction) -> str:
    lineno = instruction.positions.lineno if instruction.positions else None
    line = source_line(code, lineno)
    name = code.co_qualname if code.co_name != "<module>" else "your code"
    if lineno is None:
        return name
    return f"{name}, line {lineno}" + (f": {line}" if line else "")


def _functions_of(cls: type):
    for klass in cls.__mro__:
        for attribute in vars(klass).values():
            if isinstance(attribute, (staticmethod, classmethod)):
                attribute = attribute.__func__
            if isinstance(attribute, types.FunctionType):
                yield attribute


def _is_learner_class(cls: type) -> bool:
    if cls.__module__ == "__main__":
        return True
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if filename and cls.__module__ != "builtins":
        return not _in_library(filename)
    own = [attribute.__func__ if isinstance(attribute, (staticmethod, classmethod)) else attribute
           for attribute in vars(cls).values()]  # a class made by exec() has no module file
    return any(isinstance(f, types.FunctionType) and is_learner_code(f.__code__) for f in own)


def _is_learner_object(value) -> bool:
    if isinstance(value, types.FunctionType):
        return is_learner_code(value.__code__)
    if isinstance(value, type):
        return _is_learner_class(value)
    if isinstance(value, (types.ModuleType, _Unknown, ModuleName)):
        return False
    return _is_learner_class(type(value)) and type(value).__module__ != "builtins"


@functools.lru_cache(maxsize=4096)
def _in_library(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    path = os.path.realpath(filename)
    return any(path.startswith(root + os.sep) for root in _library_roots())


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    import minilib

    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.add(os.path.dirname(minilib.__file__))
    roots.add(os.path.dirname(torch.__file__))
    return tuple(sorted(os.path.realpath(root) for root in roots))


def _walk_traceback(traceback):
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def _kind(value) -> str:
    if isinstance(value, type):
        return "class"
    if isinstance(value, torch.nn.Module):
        return "module"
    return "function"


def _name(value) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", getattr(value, "__name__", "?"))
        return qualname if module in (None, "__main__", "builtins") else f"{module}.{qualname}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr_short(value)
    return type(value).__name__ + "(…)"


def repr_short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, never raising."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a learner's object whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 1] + "…"
