"""kormedqa: fine-tune Gemma-family chat models on Korean medical licensing-exam questions."""
import os

# fp32 matrix products the same bitwise whatever the thread count and memory alignment: MKL's
# strict conditional-numerical-reproducibility mode, read once at MKL's first call, so set before
# any product runs; a value the user exported wins. Why and what it costs: docs/decisions.md,
# "fp32 products reproducible on every x86 CPU".
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# transformers >= 5.24 swaps layers for "hub kernels" it downloads at model.train()/eval() time
# whenever the `kernels` package is installed (a dependency of transformers): unpinned code from
# the hub, other numerics, and on an offline GPU machine a crash at the first training step. Off
# unless the user exports USE_HUB_KERNELS=1. docs/decisions.md, "No hub kernels unless asked for".
os.environ.setdefault("USE_HUB_KERNELS", "0")

from .data import load_dictionary, load_mcq
from .extract import extract_answer, harness_extract, reasoning_score
from .metrics import wilson_interval
from .records import LETTERS, DataError, DictEntry, MCQ

__version__ = "0.1.0"


__all__ = [
    "DataError", "DictEntry", "LETTERS", "MCQ", "extract_answer", "harness_extract",
    "load_dictionary", "load_mcq", "reasoning_score", "wilson_interval",
]
