"""Test-wide settings: never reach a model hub (an accidental download must fail loudly)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
