"""bench/gpu_check.py on a machine without a GPU: its card table and its one-line refusal."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import peak_flops  # noqa: E402


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40", 181e12),  # not the L4's
    ("NVIDIA L40S", 362e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),  # not the SXM H100's
    ("NVIDIA A10G", 70e12),
    ("Tesla T4", None),
])
def test_a_card_gets_the_peak_of_its_own_name_not_of_a_shorter_one_inside_it(name, peak):
    assert peak_flops(name) == peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_refuses_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode != 0
    assert (done.stdout + done.stderr).strip().splitlines() == [
        "gpu_check: refused: no CUDA device visible to torch on this machine"]
