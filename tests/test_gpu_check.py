"""benchmarks/gpu_check.py stops at once, with one clear line, where no GPU is visible."""
import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}   # hides a GPU if there is one
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--root", str(tmp_path / "none"),
                           "--scratch", str(tmp_path / "scratch")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stderr.startswith("gpu_check: no CUDA GPU visible to torch") and done.stderr.count("\n") == 1
    assert not (tmp_path / "scratch").exists()   # before anything was run or written
