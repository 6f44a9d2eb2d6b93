"""scripts/gpu_check.sh on the CPU, as a GPU node runs it but with its CUDA parts skipped: the
modern profile's interpreter, no Spark, torchrun with the pyarrow reader, a killed and resumed
run, scoring with the artifact. Sized down; its samples/s mean nothing without a GPU."""
import subprocess

from conftest import ROOT, profile_env, profile_python


def test_the_gpu_check_passes_its_cpu_part(tmp_path):
    env = {**profile_env("modern"), "PYTHON": str(profile_python("modern"))}
    p = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-only", "--rows", "2000", "--epochs", "3",
                        "--work", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "gpu_check: OK (CPU only: the CUDA parts were skipped)" in out, out[-4000:]
