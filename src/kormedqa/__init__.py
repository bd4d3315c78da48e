"""kormedqa: fine-tune Gemma-family chat models on Korean medical licensing-exam questions."""
from .data import load_dictionary, load_mcq
from .extract import extract_answer, harness_extract, reasoning_score
from .metrics import wilson_interval
from .records import LETTERS, DataError, DictEntry, MCQ

__version__ = "0.1.0"


__all__ = [
    "DataError", "DictEntry", "LETTERS", "MCQ", "extract_answer", "harness_extract",
    "load_dictionary", "load_mcq", "reasoning_score", "wilson_interval",
]
