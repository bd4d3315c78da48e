"""What a run does on a machine that reaches nothing outside it (an offline GPU cluster, the device here)."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("exported, expected", [(None, False), ("1", True)])
def test_models_load_without_hub_kernels_unless_the_user_asks(tiny_model_dir, exported, expected):
    """transformers >= 5.24 swaps layers for kernels downloaded from the hub whenever `kernels` is
    installed (it is a dependency): on an offline GPU machine the first training step crashed
    (bench/gpu_loop.py on an H200, 2026-12-04). kormedqa turns that off unless USE_HUB_KERNELS is exported."""
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    if exported is not None:
        env["USE_HUB_KERNELS"] = exported
    code = ("import kormedqa; from kormedqa.modeling import load_model; from kormedqa.hardware import choose; "
            f"print(load_model({str(tiny_model_dir)!r}, choose('cpu', 'fp32')).use_kernels)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip().splitlines()[-1] == str(expected)
