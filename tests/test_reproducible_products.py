"""fp32 scores are the same bitwise whatever the thread count (the class of CI's 2026-12-03 failure).

On MKL's AVX2 kernels (an AMD EPYC or any CPU without AVX-512, or MKL_ENABLE_INSTRUCTIONS=AVX2
here) an fp32 product changes its summation order with the threads it gets: the same question's
letter log-likelihood moved by 1e-6 to 5e-6 nats between two calls in one process, and a resumed
loop's metrics left the uninterrupted run's. kormedqa puts MKL in its strict reproducible mode
(kormedqa/__init__.py); each case runs in a fresh process, since MKL reads the mode at its first call.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="the torch build has no MKL")

SCRIPT = r"""
import json, sys
import kormedqa  # before any product: it sets MKL's mode
import torch
from kormedqa.hardware import choose
from kormedqa.modeling import load_model, load_tokenizer
from kormedqa.records import MCQ
from kormedqa.scorers import eval_prompt, letter_logprobs

model_dir, tokenizer_dir = sys.argv[1:3]
model = load_model(model_dir, choose("cpu", "fp32"))
tokenizer = load_tokenizer(tokenizer_dir)
prompts = [eval_prompt(MCQ(id=f"q{i}", question=f"{i}번: " + "환자의 상태를 고려할 때 " * i + "옳은 것은?",
                           options=("고혈압", "저혈당", "빈혈", "폐렴", "부정맥"), answer="A", exam_type="doctor"))
           for i in range(4)]
scores = {}
for threads in (2, 1, 2):
    torch.set_num_threads(threads)
    scores.setdefault(threads, []).append(letter_logprobs(model, tokenizer, prompts, batch_size=4))
print(json.dumps({"mode": __import__("os").environ.get("MKL_CBWR"), "two": scores[2], "one": scores[1]}))
"""


def _scores(tiny_model_dir, tokenizer_dir, **env):
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_CBWR"}, "MKL_ENABLE_INSTRUCTIONS": "AVX2", **env}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(tokenizer_dir)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_fp32_scores_do_not_depend_on_the_thread_count(tiny_model_dir, tokenizer_dir):
    unpinned = _scores(tiny_model_dir, tokenizer_dir, MKL_CBWR="AUTO")  # what a user gets who exports it
    if unpinned["one"][0] == unpinned["two"][0]:
        pytest.skip("MKL's AVX2 kernels sum the same way at 1 and 2 threads on this CPU: nothing to show")
    pinned = _scores(tiny_model_dir, tokenizer_dir)
    assert pinned["mode"] == "AUTO,STRICT"
    assert pinned["one"][0] == pinned["two"][0] == pinned["two"][1]
