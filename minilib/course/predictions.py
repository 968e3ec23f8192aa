"""Predict, then run: a prediction the learner writes down before a chapter's key measurement, and its reveal.

Writing a guess down first is what makes a measurement teach: the surprise is where the learning is. A chapter asks
before its key measurement and compares after it; nothing is graded and nothing blocks a learner who skipped it.

    speedup = Prediction("How many times faster than dense attention is the window at n = 8192?",
                         choices={"a": "slower", "b": "about as fast (0.8–1.25×)", "c": "1.25–3× faster",
                                  "d": "more than 3× faster"}, bins=[0.8, 1.25, 3], unit="×")
    my_prediction = ""          # the learner writes "c" here, then runs the cell
    speedup.ask(my_prediction)  # shows the question; says whether the answer is one it can compare

    ...the measurement...
    speedup.reveal(my_prediction, measured=ratio)   # what was predicted, what was measured, and whether they agree

A multiple-choice prediction maps the measured value to a choice through ``bins`` (the boundaries between
consecutive choices, in order); a numeric one (no ``choices``) is compared as a ratio. Both print plain text (and
show Markdown in a notebook), so they read the same in JupyterLab, in a terminal and in the executed edition.
"""
from __future__ import annotations

import bisect
import math
import numbers

__all__ = ["Prediction"]


class Prediction:
    """A question asked before a measurement: multiple choice (``choices`` with ``bins``) or a number (``unit``)."""

    def __init__(self, question: str, choices: dict[str, str] | None = None, bins=None, unit: str = ""):
        self.question, self.unit = question, unit
        self.choices = dict(choices or {})
        self.bins = list(bins or [])
        if self.choices and len(self.bins) != len(self.choices) - 1:
            raise ValueError(f"{len(self.choices)} choices need {len(self.choices) - 1} boundaries in bins "
                             f"(between consecutive choices), got {len(self.bins)}")
        if self.bins != sorted(self.bins):
            raise ValueError(f"bins must be increasing, got {self.bins}")
        if bins and not self.choices:
            raise ValueError("bins are the boundaries between choices: give choices too")

    # ------------------------------------------------------------------------------------------------ asking
    def text(self) -> str:
        """The question and its choices as plain lines."""
        lines = [f"Predict, then run: {self.question}"]
        lines += [f"  {letter}) {choice}" for letter, choice in self.choices.items()]
        form = f"a letter, {', '.join(self.choices)}" if self.choices else f"a number{f' in {self.unit}' if self.unit else ''}"
        lines.append(f"Write your prediction ({form}) in `my_prediction` above, run this cell again, then the measurement.")
        return "\n".join(lines)

    def ask(self, prediction=None) -> str | None:
        """Print the question and what the prediction written so far reads as; return its problem, or None.

        A missing prediction is no problem (a learner who runs on is not blocked); a malformed one is named.
        """
        print(self.text())
        problem = self.problem(prediction)
        if prediction in (None, ""):
            print("(No prediction yet: the reveal after the measurement will still show the result.)")
        elif problem:
            print(f"⚠ {problem}")
        else:
            print(f"Noted: {self.describe(prediction)}.")
        return problem

    def problem(self, prediction) -> str | None:
        """Why ``prediction`` cannot be compared with a measurement, or None (None too when there is none)."""
        if prediction in (None, ""):
            return None
        if self.choices:
            if not isinstance(prediction, str) or prediction.strip().lower() not in self.choices:
                return f"{prediction!r} is not one of the choices {', '.join(map(repr, self.choices))}"
            return None
        if isinstance(prediction, bool) or not isinstance(prediction, numbers.Real) or not math.isfinite(prediction):
            if isinstance(prediction, str):
                try:
                    float(prediction)
                    return None
                except ValueError:
                    pass
            return f"{prediction!r} is not a number{f' (in {self.unit})' if self.unit else ''}"
        return None

    def describe(self, prediction) -> str:
        if self.choices:
            letter = prediction.strip().lower()
            return f"{letter}) {self.choices[letter]}"
        return self._amount(float(prediction))

    def _amount(self, value: float) -> str:
        number = f"{value:.3g}"
        return f"{number}{self.unit}" if self.unit in ("×", "%") else f"{number} {self.unit}".rstrip()

    # ----------------------------------------------------------------------------------------------- reveal
    def choice_of(self, measured: float) -> str:
        """The choice a measured value falls in: below ``bins[0]`` the first, at or above ``bins[-1]`` the last."""
        return list(self.choices)[bisect.bisect_right(self.bins, measured)]

    def reveal(self, prediction, measured: float) -> str:
        """Print (and return) the prediction next to the measurement, and whether they agree."""
        measured = float(measured)
        lines = [f"Measured: {self._amount(measured)}"
                 + (f", choice {self.describe(self.choice_of(measured))}" if self.choices else "") + "."]
        problem = self.problem(prediction)
        if prediction in (None, ""):
            lines.append("You wrote no prediction this time. Next time, write one first: the surprise is the lesson.")
        elif problem:
            lines.append(f"Your prediction could not be compared: {problem}.")
        elif self.choices:
            letter = prediction.strip().lower()
            if letter == self.choice_of(measured):
                lines.append(f"You predicted {self.describe(letter)}: right.")
            else:
                order = list(self.choices)
                direction = "lower" if order.index(letter) < order.index(self.choice_of(measured)) else "higher"
                lines.append(f"You predicted {self.describe(letter)}: {direction} than measured. "
                             "What did your reasoning leave out?")
        else:
            lines.append(self._compare(float(prediction), measured))
        message = "\n".join(lines)
        print(message)
        return message

    def _compare(self, predicted: float, measured: float) -> str:
        if predicted == measured:
            return f"You predicted {self._amount(predicted)}: exactly."
        if predicted <= 0 or measured <= 0:
            return f"You predicted {self._amount(predicted)}; the difference is {self._amount(measured - predicted)}."
        factor = max(predicted, measured) / min(predicted, measured)
        side = "below" if predicted < measured else "above"
        if factor <= 1.25:
            verdict = "close"
        elif factor <= 3:
            verdict = "the right order of magnitude"
        else:
            verdict = "off: what did your reasoning leave out?"
        return f"You predicted {self._amount(predicted)}: {factor:.2g}× {side} the measurement, {verdict}."
