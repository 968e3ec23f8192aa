"""Predict, then run: the question, the noted prediction and the reveal, for every kind of answer a learner writes."""
import pytest

from minilib.course.predictions import Prediction


@pytest.fixture
def speedup():
    return Prediction("How many times faster is the window?", unit="×", bins=[0.8, 1.25, 3],
                      choices={"a": "slower", "b": "about as fast", "c": "1.25–3× faster", "d": "more than 3× faster"})


def test_measured_values_fall_in_the_choice_their_bins_say(speedup):
    assert [speedup.choice_of(x) for x in (0.5, 0.8, 1.0, 1.25, 2.9, 3.0, 40)] == ["a", "b", "b", "c", "c", "d", "d"]


def test_a_right_prediction_is_confirmed_whatever_its_case_or_spaces(speedup, capsys):
    message = speedup.reveal(" C ", measured=2.4)
    assert "Measured: 2.4×, choice c) 1.25–3× faster." in message and "right" in message
    assert message in capsys.readouterr().out


def test_a_wrong_prediction_says_on_which_side_it_fell(speedup):
    assert "lower than measured" in speedup.reveal("b", measured=6.5)
    assert "higher than measured" in speedup.reveal("d", measured=1.0)


@pytest.mark.parametrize("nothing", [None, ""])
def test_a_learner_who_did_not_predict_is_shown_the_result_and_not_blocked(speedup, nothing, capsys):
    assert speedup.ask(nothing) is None
    assert "No prediction yet" in capsys.readouterr().out
    message = speedup.reveal(nothing, measured=6.5)
    assert "Measured: 6.5×, choice d)" in message and "no prediction" in message


@pytest.mark.parametrize("bad", ["e", "c d", 3, True])
def test_a_malformed_prediction_is_named_without_an_exception(speedup, bad, capsys):
    problem = speedup.ask(bad)
    assert problem and repr(bad) in problem and "'a', 'b', 'c', 'd'" in problem
    assert "⚠" in capsys.readouterr().out
    assert "could not be compared" in speedup.reveal(bad, measured=2.0)


def test_a_numeric_prediction_is_compared_as_a_ratio(capsys):
    memory = Prediction("How many MB does one layer's score matrix take at n = 512?", unit="MB")
    assert memory.ask(10) is None and "Noted: 10 MB." in capsys.readouterr().out
    assert "close" in memory.reveal(12, measured=12.6)
    assert "the right order of magnitude" in memory.reveal("6", measured=12.6)
    assert "1.2× below" in memory.reveal(10.5, measured=12.6)
    assert "off" in memory.reveal(1, measured=12.6) and "13× below" in memory.reveal(1, measured=12.6)
    assert "not a number (in MB)" in memory.ask("twelve")


def test_the_question_text_names_the_choices_or_the_unit(speedup):
    assert "a) slower" in speedup.text() and "a letter, a, b, c, d" in speedup.text()
    assert "a number in MB" in Prediction("How big?", unit="MB").text()


@pytest.mark.parametrize("kwargs, words", [
    (dict(choices={"a": "x", "b": "y"}, bins=[1, 2]), "2 choices need 1 boundaries"),
    (dict(choices={"a": "x", "b": "y", "c": "z"}, bins=[2, 1]), "increasing"),
    (dict(bins=[1]), "give choices too"),
])
def test_a_prediction_written_wrongly_by_an_author_fails_at_once(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Prediction("?", **kwargs)
