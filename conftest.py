"""Test-wide settings: never reach a model hub (an accidental download must fail loudly), and no notebook cell may
print what a learner would read as a failure (raw log lines, a library failing to load a part of itself)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest_plugins = ["minilib.course.output_noise"]
