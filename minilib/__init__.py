"""minilib: the small library behind the course.

Importing it (any ``minilib.…`` module) first quiets what torchao logs on a machine where its CUDA-only extensions
cannot load (every CPU, and any Python other than the one they were built for): "Failed to load …/torchao/_C….so",
and torch's notice about how torchao registers its enums. They are messages for torchao's developers that a learner
reads as errors, and transformers imports torchao whenever it is installed, so every chapter that loads a model
would print them. The course uses none of those extensions. Likewise torch.onnx's current exporter logs one line
per torchvision operator when torchvision is not installed (the course does not need it), and PyTorch's profiler
prints its trace points. Only those messages are dropped: every other message of those loggers, and every warning,
still shows.
"""
import logging as _logging
import os as _os
import re as _re

# PyTorch's profiler (Kineto) writes "USDT:… profiler_start" and "… profiler_stop" to stderr around every profiled
# block (trace points for its developers' tools), and a notebook shows them as output. Its log level is read when
# the profiler first starts; 6 is the lowest that leaves those lines out (it also leaves out Kineto's own error
# lines; the profiler's results and Python's warnings are not affected). A level the learner set wins.
_os.environ.setdefault("KINETO_LOG_LEVEL", "6")

KNOWN_NOISE = {
    "torchao": _re.compile(r"^Failed to load \S*torchao[/\\]_C\w*\.\S+: "),
    "torch.utils._pytree": _re.compile(r"is an Enum subclass and is now natively supported by torch\.compile"),
    "torchao.kernel.intmm": _re.compile(r"Detected no triton, on systems without Triton certain kernels will not work"),
    # torch.onnx's exporter (dynamo=True) registers torchvision's operators, and says so when torchvision is absent
    "torch.onnx._internal.exporter._registration": _re.compile(r"^torchvision is not installed\. Skipping torchvision::"),
}


class _DropKnownNoise(_logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``; lets every other record through."""

    def __init__(self, pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record):
        return not self.pattern.search(record.getMessage())


for _name, _pattern in KNOWN_NOISE.items():
    if not any(isinstance(f, _DropKnownNoise) for f in _logging.getLogger(_name).filters):
        _logging.getLogger(_name).addFilter(_DropKnownNoise(_pattern))
