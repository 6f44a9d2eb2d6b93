"""scripts/gpu_check.sh on the CPU, as a GPU node runs it but with its CUDA parts skipped: the
modern profile's interpreter, no Spark, torchrun with the pyarrow reader, a killed and resumed
run, scoring with the artifact. Sized down; its samples/s mean nothing without a GPU."""
import os
import subprocess

import pytest

from conftest import ROOT

MODERN_PYTHON = ROOT / ".venv-modern" / "bin" / "python"


def test_the_gpu_check_passes_its_cpu_part(tmp_path):
    if not MODERN_PYTHON.exists():
        pytest.skip(f"the modern profile is not set up here ({MODERN_PYTHON}): run PROFILE=modern bash scripts/setup.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    env.update(PYTHON=str(MODERN_PYTHON), PATH=os.pathsep.join([str(MODERN_PYTHON.parent), env.get("PATH", "")]))
    p = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-only", "--rows", "2000", "--epochs", "3",
                        "--work", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "gpu_check: OK (CPU only: the CUDA parts were skipped)" in out, out[-4000:]
