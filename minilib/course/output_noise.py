"""What a learner must never meet in a notebook's outputs: a library's failure to load one of its own parts, and raw
log lines written for a library's developers.

A learner reads "Failed to load …/torchao/_C_mxfp8….so" as an error of the course, and a line such as
``W1207 11:42:34.532000 16204 torch/utils/_pytree.py:630] …`` as something broken. The test command looks at every
output of every notebook cell it runs (this module is a pytest plugin, loaded by the root ``conftest.py``) and fails a cell that prints
either. Python's warnings (``UserWarning: …``) are not noise: they are meant for the user, and the course shows them.
"""
from __future__ import annotations

import re

import pytest

# glog-style lines (PyTorch's C++ and torch._logging): a level letter, the date, the time, a thread id, file:line]
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+\S+:\d+\]", re.M)
# Kineto's (PyTorch's profiler) lines: a kind, the date and time, process:thread, file:line]
KINETO_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \S+:\d+\]", re.M)
# the logging module's default format, LEVEL:logger.name:message (logging.basicConfig())
LOGGING_LINE = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:", re.M)
LOAD_FAILURE = re.compile(r"Failed to load\b", re.M)
PATTERNS = {"a raw log line": (GLOG_LINE, KINETO_LINE, LOGGING_LINE), "a library's failure to load a part of itself": (LOAD_FAILURE,)}


def output_text(output) -> str:
    """The text a learner reads in one output (an nbformat output dict): a stream's text or a result's plain text."""
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def noise(outputs) -> list[str]:
    """``["a raw log line: W1207 11:42:34…"]``: each noisy line of a cell's outputs, with what kind of noise it is."""
    found = []
    for output in outputs:
        text = output_text(output)
        for kind, patterns in PATTERNS.items():
            for pattern in patterns:
                for match in pattern.finditer(text):
                    line = text[text.rfind("\n", 0, match.start()) + 1:].split("\n", 1)[0]
                    found.append(f"{kind}: {line[:160]}")
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A pytest hook (the root ``conftest.py`` loads this module as a plugin): after a notebook cell ran under nbval,
    whose outputs are then in ``item.test_outputs``, fail the cell if they hold noise."""
    result = yield
    found = noise(getattr(item, "test_outputs", None) or [])
    if found:
        pytest.fail("this cell's output holds what a learner reads as a failure (silence it where it is made, "
                    "without hiding real warnings):\n  " + "\n  ".join(found), pytrace=False)
    return result
