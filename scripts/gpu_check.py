"""GPU check without Spark: train and score on one GPU with nothing but PyTorch (a CUDA build),
numpy, pyarrow, PyYAML and fsspec installed. No Java, Spark, Horovod or Petastorm, no network.

    bash scripts/gpu_check.sh                  # what CI runs (CPU-only there: CUDA parts skipped)
    python scripts/gpu_check.py --work DIR     # keep the lake it writes

1. Writes a small curated image dataset straight to Parquet in the curated format
   (docs/data-layout.md: ``curated/<name>/v=<version>/{train,val,test}/part-*.parquet`` with the
   schema of ``pipeline.ingest.image_tasks.SCHEMA``, ``_manifest.json`` and ``curated/<name>/_latest``),
   10 classes of noisy 8x8 patterns: the same layout preprocess writes, without Spark.
2. Trains ``jobs/train.py`` under ``torchrun --nproc_per_node=1`` with ``train.backend=torch`` and
   ``train.reader=arrow``: on the GPU in fp32, bf16 autocast and fp16 with a GradScaler, and the
   same runs on the CPU (fp32, bf16; the fp16 GPU run is compared with CPU fp32).
3. Kills one run (SIGKILL to torchrun's process group) once its first checkpoint is written,
   resumes it with ``--resume``, and compares its per-epoch losses with the uninterrupted fp32 run.
4. Loads the artifact with ``pipeline.model.artifact.load_model`` on the GPU and scores the test split.
5. Times ``train.arch=resnet18`` (``pipeline.model.networks``) on 224x224 images in this process:
   samples/s of forward, backward and an SGD step at batch 32 on the GPU in fp32, bf16 autocast
   and fp16 autocast with a GradScaler, on random tensors already on the GPU (no input pipeline).
   Without a GPU it runs one fp32 step at batch 2 on the CPU as a smoke test, and says so.

It prints device placement, samples/s per precision against the CPU, and peak GPU memory, and
fails (exit 1) if the ranks did not train on the GPU, if the scoring or the resumed training ran
a compute op (convolution, matmul, pooling, activation, loss, optimizer update) on the CPU, if
the resume does not reproduce the uninterrupted run, or if the model does not learn.

Placement is watched from inside the processes with a ``TorchDispatchMode`` that records the
device of every aten op's tensor arguments (copies between host and device are allowed).
With no GPU, or ``--cpu-only``, the CUDA runs and checks are skipped and reported as skipped;
everything else runs on the CPU (CI runs it this way). ``--forbid`` makes every import of the
named top-level modules fail, here and in the ranks, to prove that the check needs none of them.
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpu-check"
DATASET = "gpu_check"
CLASSES = 10
SIDE = 8
# What a bare GPU node lacks; scripts/gpu_check.sh forbids them so CI proves the check needs none.
DEFAULT_FORBID = "pyspark,py4j,horovod,petastorm,sklearn,scipy,matplotlib,PIL,cv2,pandas"
# aten ops that do the model's work: on a GPU run, any of these with a CPU tensor is a failure.
HEAVY = re.compile(r"^(convolution|_convolution|conv\dd|cudnn_conv|mkldnn_conv|addmm|mm|bmm|matmul|linear|"
                   r"max_pool|avg_pool|_?adaptive_avg_pool|relu|threshold_backward|_log_softmax|_softmax|nll_loss|cross_entropy|"
                   r"native_batch_norm|native_dropout|_foreach_|_fused_(adam|sgd)|convolution_backward)")
# in-place updates that are the optimizer's work when applied to a weight (2+ dimensions)
UPDATES = {"add_", "mul_", "addcmul_", "addcdiv_", "lerp_", "sub_", "sqrt", "div"}


# --- modules that must be absent ------------------------------------------------------------

def forbid(names: str) -> None:
    """Make the named top-level modules look absent, as on a bare node: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` returns None (torch probes optional
    modules that way), by a PathFinder that does not see them."""
    import importlib.machinery

    hidden = {n for n in names.split(",") if n}
    if not hidden:
        return
    already = sorted(n for n in hidden if n in sys.modules)
    if already:
        sys.exit(f"gpu_check: {already} already imported before --forbid took effect")

    class Hidden(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname.split(".")[0] in hidden:
                return None
            return super().find_spec(fullname, path, target)

    sys.meta_path[:] = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    importlib.invalidate_caches()


# --- placement ------------------------------------------------------------------------------

def placement_tracker():
    """A TorchDispatchMode counting aten ops by device; ``heavy_on_cpu`` lists compute ops that
    ran on CPU tensors (beyond host-device copies and scalar bookkeeping)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.by_device: dict[str, int] = {}
            self.heavy_on_cpu: dict[str, int] = {}
            self.heavy_on_cuda = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
            name = func.__name__.split(".")[0]
            devices = {t.device.type for t in tensors}
            for d in devices:
                self.by_device[d] = self.by_device.get(d, 0) + 1
            heavy = bool(HEAVY.match(name)) or (name in UPDATES and any(t.dim() >= 2 for t in tensors))
            if heavy and "cpu" in devices and not any(t.device.type == "meta" for t in tensors):
                self.heavy_on_cpu[name] = self.heavy_on_cpu.get(name, 0) + 1
            elif heavy and "cuda" in devices:
                self.heavy_on_cuda += 1
            return func(*args, **(kwargs or {}))

        def report(self) -> dict:
            return {"ops_by_device": self.by_device, "heavy_on_cpu": self.heavy_on_cpu,
                    "heavy_on_cuda": self.heavy_on_cuda}

    return Tracker()


# --- the rank side: torchrun starts this file with --rank-entry ------------------------------

def rank_entry(report: str, track: bool, argv: list[str]) -> None:
    """Run jobs/train.py as torchrun would, then write this process's peak GPU memory (and, with
    ``track``, the op placement) to ``report``."""
    import torch

    tracker = placement_tracker() if track else None

    def write_report() -> None:
        out = {"rank": int(os.environ.get("RANK", "0")), "cuda_initialized": torch.cuda.is_initialized()}
        if torch.cuda.is_initialized():
            out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
            out["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        if tracker is not None:
            out["placement"] = tracker.report()
        Path(report).write_text(json.dumps(out))

    atexit.register(write_report)
    sys.argv = [str(ROOT / "jobs" / "train.py"), *argv]
    if tracker is None:
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        with tracker:
            runpy.run_path(sys.argv[0], run_name="__main__")


# --- the dataset ----------------------------------------------------------------------------

def write_dataset(lake_root: str, rows: int, files: int, seed: int = 3) -> str:
    """Noisy 8x8 patterns of CLASSES classes as curated Parquet, manifest and _latest; returns
    the version URI. The same files, schema and manifest keys as ``pipeline.preprocess``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core import lake, manifest, splits
    from pipeline.core.config import load_config

    cfg = load_config(str(ROOT / "conf" / "digits.yaml"), [f"lake.root={lake_root}", f"dataset.name={DATASET}",
                                                           f"preprocess.files_per_split={files}"])
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(CLASSES, SIDE * SIDE), dtype=np.int64)
    labels = rng.integers(0, CLASSES, size=rows)
    noise = rng.normal(0, 60, size=(rows, SIDE * SIDE))
    pixels = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    ids = [f"{label}/img_{i:06d}.png" for i, label in enumerate(labels)]
    which = splits.assign(ids, cfg.preprocess.split)
    version = lake.new_run_id()
    out = cfg.uri("curated", DATASET, f"v={version}")
    schema = pa.schema([("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("label", pa.int32())])
    counts, class_counts = {}, {}
    for s_index, s in enumerate(splits.NAMES):
        idx = np.flatnonzero(which == s_index)
        counts[s] = len(idx)
        class_counts[s] = {str(c): int((labels[idx] == c).sum()) for c in range(CLASSES)}
        lake.makedirs(f"{out}/{s}")
        for f in range(files):
            part = idx[f::files]
            table = pa.table({"id": [ids[i] for i in part],
                              "path": [f"generated:{ids[i]}" for i in part],
                              "image": pa.array([pixels[i].tobytes() for i in part], pa.binary()),
                              "label": pa.array(labels[part], pa.int32())}, schema=schema)
            # two row groups per file, as a file over row_group_mb would have
            pq.write_table(table, lake.local_path(f"{out}/{s}/part-{f:05d}.parquet"),
                           row_group_size=max(1, (len(part) + 1) // 2))
    train_px = pixels[which == 0].astype(np.float64) / 255.0
    m = manifest.build(
        "preprocess", version, cfg.to_dict(), input_count=rows, output_count=rows, quarantined_by_reason={},
        dataset=DATASET, kind="images", version=version, source="generated by scripts/gpu_check.py", uri=out,
        quarantine_uri=None,
        splits={s: {"count": counts[s], "class_counts": class_counts[s], "uri": f"{out}/{s}"} for s in splits.NAMES},
        label_names=[str(c) for c in range(CLASSES)],
        schema={"id": "string", "path": "string", "label": "int",
                "image": f"binary: uint8 HxWxC {SIDE}x{SIDE}x1, row-major"},
        image={"height": SIDE, "width": SIDE, "channels": 1, "resize": "stretch", "max_pixels": 40_000_000},
        normalization={"mean": [float(train_px.mean())], "std": [float(train_px.std())]},
    )
    manifest.write(out, m)
    lake.set_latest(cfg.uri("curated", DATASET), f"v={version}")
    return out


# --- the driver side ------------------------------------------------------------------------

class Check:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.lake = str(self.work / "lake")
        self.config = self.work / "gpu_check.yaml"
        self.failures: list[str] = []
        self.n = 0

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        print(f"  FAIL: {msg}")

    def overrides(self, device: str, precision: str, name: str, epochs: int) -> list[str]:
        return [f"lake.root={self.lake}", f"dataset.name={DATASET}", f"train.model_name={name}",
                "train.backend=torch", "train.reader=arrow", "train.num_proc=1",
                f"train.device={device}", f"train.mixed_precision={precision}", f"train.epochs={epochs}",
                f"train.batch_size={self.args.batch_size}", "train.lr=0.05", "train.warmup_epochs=0",
                "score.model=" + name + "@latest"]

    def torchrun(self, over: list[str], *extra: str, track: bool = False, wait: bool = True):
        self.n += 1
        report = self.work / f"rank-report-{self.n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
               str(Path(__file__).resolve()), "--rank-entry", str(report), "--forbid", self.args.forbid,
               *(["--track"] if track else []), "--",
               "--config", str(ROOT / "conf" / "digits.yaml"), "--launcher", "torchrun", *extra]
        for o in over:
            cmd += ["--set", o]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        log = open(self.work / f"torchrun-{self.n}.log", "wb")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait:
            return p, report, Path(log.name)
        rc = p.wait(timeout=self.args.timeout)
        log.close()
        text = Path(log.name).read_text(errors="replace")
        if rc != 0:
            raise SystemExit(f"gpu_check: torchrun exited {rc} ({' '.join(over[-8:])}); its output ends:\n{text[-4000:]}")
        return json.loads(report.read_text()) if report.exists() else {}, text

    def run_dir(self, name: str) -> str:
        from pipeline.core import lake

        parent = f"{lake_uri(self.lake)}/models/{name}"
        runs = [r for r in lake.listdir(parent) if not r.startswith("_")]
        if len(runs) != 1:
            raise SystemExit(f"gpu_check: expected one run under {parent}, found {runs}")
        return f"{parent}/{runs[0]}"

    def train(self, device: str, precision: str, epochs: int) -> dict:
        name = f"{MODEL}-{device}-{precision}"
        t0 = time.perf_counter()
        rep, _ = self.torchrun(self.overrides(device, precision, name, epochs))
        from pipeline.core import lake

        d = self.run_dir(name)
        metrics, history = lake.read_json(f"{d}/metrics.json"), lake.read_json(f"{d}/history.json")
        sps = [h["samples_per_s"] for h in history[1:]] or [history[0]["samples_per_s"]]  # epoch 1 warms up
        out = {"name": name, "device": metrics.get("device"), "samples_per_s": sorted(sps)[len(sps) // 2],
               "test_accuracy": metrics.get("test_accuracy"), "history": history, "wall_s": time.perf_counter() - t0,
               "peak_gpu_bytes": rep.get("peak_gpu_bytes"), "gpu": rep.get("gpu")}
        print(f"  {device:4} {precision:5} device={out['device']!s:8} {out['samples_per_s']:10,.0f} samples/s  "
              f"test acc {out['test_accuracy']:.3f}  peak GPU memory "
              + (f"{out['peak_gpu_bytes'] / 2**20:.1f} MiB" if out["peak_gpu_bytes"] is not None else "-")
              + f"  ({out['wall_s']:.0f} s)")
        if device == "cuda" and not str(out["device"]).startswith("cuda"):
            self.fail(f"{name}: the rank trained on {out['device']}, not the GPU")
        if device == "cuda" and not out["peak_gpu_bytes"]:
            self.fail(f"{name}: the rank allocated no GPU memory")
        if device == "cpu" and rep.get("cuda_initialized"):
            self.fail(f"{name}: a train.device=cpu run initialised CUDA")
        if out["test_accuracy"] is None or out["test_accuracy"] < 0.9:
            self.fail(f"{name}: test accuracy {out['test_accuracy']} < 0.9: the model did not learn")
        return out

    def kill_and_resume(self, device: str, reference: dict, epochs: int) -> None:
        from pipeline.core import lake

        name = f"{MODEL}-{device}-resume"
        over = self.overrides(device, "none", name, epochs)
        p, _, log = self.torchrun(over, wait=False)
        deadline = time.monotonic() + self.args.timeout
        ck = None
        while time.monotonic() < deadline and p.poll() is None:
            parent = f"{lake_uri(self.lake)}/models/{name}"
            if lake.exists(parent):
                runs = [r for r in lake.listdir(parent) if not r.startswith("_")]
                if runs and lake.exists(f"{parent}/{runs[0]}/checkpoints/_latest"):
                    ck = runs[0]
                    break
            time.sleep(0.01)
        if p.poll() is not None:
            raise SystemExit(f"gpu_check: the run to be killed ended (rc {p.returncode}) before it could be killed; "
                             f"output:\n{log.read_text(errors='replace')[-3000:]}")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        d = f"{lake_uri(self.lake)}/models/{name}/{ck}"
        if lake.exists(f"{d}/model.pt"):
            raise SystemExit("gpu_check: the killed run had already finished; raise --epochs")
        killed_at = lake.get_latest(f"{d}/checkpoints")
        rep, _ = self.torchrun(over, "--resume", ck, track=True)
        history = lake.read_json(f"{d}/history.json")
        got = [h["train_loss"] for h in history]
        want = [h["train_loss"] for h in reference["history"]]
        diff = max(abs(a - b) for a, b in zip(got, want)) if len(got) == len(want) else float("inf")
        # The CPU is deterministic: the resumed run must equal the uninterrupted one exactly. cuDNN
        # picks nondeterministic kernels for some convolutions, so on the GPU allow a little.
        tol = 0.0 if device == "cpu" else 0.02 * max(want)
        print(f"  killed after {killed_at}, resumed run {ck}: {len(got)} epochs, train losses differ from the "
              f"uninterrupted run by at most {diff:.2e} (allowed {tol:.1e})")
        if len(got) != len(want) or diff > tol:
            self.fail(f"resume on {device}: losses {got} != uninterrupted {want}")
        self.check_placement(f"resumed training on {device}", rep.get("placement"), device)

    def check_placement(self, what: str, placement: dict | None, device: str) -> None:
        if placement is None:
            self.fail(f"{what}: no placement report")
            return
        print(f"  placement, {what}: aten ops by device {placement['ops_by_device']}; compute ops on the GPU "
              f"{placement['heavy_on_cuda']}, on the CPU {sum(placement['heavy_on_cpu'].values())} "
              f"{placement['heavy_on_cpu'] or ''}")
        if device == "cuda":
            if placement["heavy_on_cpu"]:
                self.fail(f"{what}: compute ran on the CPU: {placement['heavy_on_cpu']}")
            if not placement["heavy_on_cuda"]:
                self.fail(f"{what}: no compute op seen on the GPU")
        elif not placement["heavy_on_cpu"]:  # on the CPU the tracker must see the work, or it sees nothing
            self.fail(f"{what}: the placement tracker saw no compute op at all")

    def score(self, device: str, name: str) -> None:
        import numpy as np
        import pyarrow.parquet as pq
        import torch

        from pipeline.model import artifact
        from pipeline.core import lake
        from pipeline.ingest.images import ImageLayout, images_to_tensor_layout

        loaded = artifact.load_model(lake_uri(self.lake), f"{name}@latest", device=device)
        test_uri = lake.read_json(f"{self.run_dir(name)}/model.json")["dataset"]["uri"] + "/test"
        table = pq.read_table(lake.local_path(test_uri), columns=["image", "label"])
        x = images_to_tensor_layout(table.column("image").to_pylist(), ImageLayout(SIDE, SIDE, 1))
        y = np.asarray(table.column("label"))
        placed = {p.device.type for p in loaded.model.parameters()} | {b.device.type for b in loaded.model.buffers()}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tracker = placement_tracker()
        t0 = time.perf_counter()
        with tracker:
            proba = loaded.predict_proba(x, batch_size=256)
        took = time.perf_counter() - t0
        acc = float((proba.argmax(1) == y).mean())
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB" if device == "cuda" else ""
        print(f"  scored {len(y)} test rows on {loaded.device} (parameters on {sorted(placed)}) in {took * 1000:.0f} ms: "
              f"accuracy {acc:.3f}{peak}")
        if placed != {device}:
            self.fail(f"scoring: model parameters on {placed}, not {device}")
        if acc < 0.9:
            self.fail(f"scoring: accuracy {acc:.3f} < 0.9")
        self.check_placement(f"scoring on {device}", tracker.report(), device)


def resnet18_case(device: str, steps: int, check: Check) -> None:
    """ResNet-18 at 224 px: on CUDA, samples/s of a training step (forward, backward, SGD) at batch
    32 per precision; on the CPU one step at batch 2, a smoke test without timings."""
    import torch

    from pipeline.model.networks import build_model
    from pipeline.model.spec import ModelSpec

    cuda = device == "cuda"
    batch, side, classes = (32, 224, 1000) if cuda else (2, 224, 1000)
    spec = ModelSpec(arch="resnet18", input_shape=[3, side, side], num_classes=classes)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    precisions = [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)] if cuda else [("fp32", None)]
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # pick the fastest convolution kernels, as a long training run would
    try:
        for name, dtype in precisions:
            torch.manual_seed(0)
            model = build_model(spec).to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)

            def step() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                return loss.detach()

            if not cuda:
                t0 = time.perf_counter()
                loss = float(step())
                placed = {p.device.type for p in model.parameters()}
                print(f"  cpu  {name} batch {batch}: one training step (forward, backward, SGD) in "
                      f"{time.perf_counter() - t0:.2f} s, loss {loss:.3f}, parameters on {sorted(placed)}: "
                      f"a smoke test only (no GPU), no samples/s measured")
                if not math.isfinite(loss) or placed != {"cpu"}:
                    check.fail(f"resnet18 smoke test on the CPU: loss {loss}, parameters on {placed}")
                continue
            for _ in range(5):  # warm-up: cuDNN autotuning, allocator
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            losses = [step() for _ in range(steps)]
            torch.cuda.synchronize()
            took = time.perf_counter() - t0
            last = float(losses[-1])
            placed = {p.device.type for p in model.parameters()}
            print(f"  cuda {name} batch {batch}: {batch * steps / took:10,.0f} samples/s "
                  f"({took / steps * 1000:.1f} ms per step over {steps} steps), loss {float(losses[0]):.3f} -> "
                  f"{last:.3f}, peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
            if not torch.isfinite(torch.stack(losses)).all() or placed != {"cuda"}:
                check.fail(f"resnet18 {name} on the GPU: losses {[float(v) for v in losses]}, parameters on {placed}")
            del model, opt
            torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = benchmark


def lake_uri(path: str) -> str:
    return f"file://{Path(path).resolve()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="directory for the lake and logs (default: a temporary one, removed)")
    p.add_argument("--cpu-only", action="store_true", help="skip the CUDA parts even if a GPU is present")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600, help="seconds for one torchrun")
    p.add_argument("--resnet-steps", type=int, default=20, help="timed ResNet-18 training steps per precision (GPU)")
    p.add_argument("--forbid", default=DEFAULT_FORBID, help="comma-separated modules whose import must fail")
    p.add_argument("--rank-entry", metavar="REPORT", help=argparse.SUPPRESS)
    p.add_argument("--track", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    forbid(args.forbid)
    sys.path.insert(0, str(ROOT))
    if args.rank_entry:
        rank_entry(args.rank_entry, args.track, [a for a in args.rest if a != "--"])
        return 0

    import numpy as np
    import pyarrow
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_only
    tmp = None
    if not args.work:
        tmp = args.work = tempfile.mkdtemp(prefix="gpu-check-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: torch {torch.__version__} (CUDA build: {torch.version.cuda}), numpy {np.__version__}, "
          f"pyarrow {pyarrow.__version__}, Python {sys.version.split()[0]}; not importable here: {args.forbid}")
    if cuda:
        print(f"gpu_check: GPU {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s), "
              f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        why = "--cpu-only" if args.cpu_only else "torch sees no CUDA device"
        print(f"gpu_check: CUDA parts SKIPPED ({why}): no GPU training in fp32/bf16/fp16, no GPU scoring, no "
              "GPU placement or memory checks; the CPU runs, the kill and resume and the scoring run on the CPU")
    check = Check(args)
    try:
        uri = write_dataset(check.lake, args.rows, args.files)
        print(f"gpu_check: wrote {args.rows} rows of curated 8x8 images ({args.files} files per split) to {uri}")
        results: dict[tuple[str, str], dict] = {}
        print("training (torchrun --nproc_per_node=1, train.backend=torch, train.reader=arrow):")
        for device, precision in [("cpu", "none"), ("cpu", "bf16")] + (
                [("cuda", "none"), ("cuda", "bf16"), ("cuda", "fp16")] if cuda else []):
            results[(device, precision)] = check.train(device, precision, args.epochs)
        main_device = "cuda" if cuda else "cpu"
        print(f"kill and resume ({main_device}, fp32):")
        check.kill_and_resume(main_device, results[(main_device, "none")], args.epochs)
        print(f"scoring with the artifact ({main_device}):")
        check.score(main_device, f"{MODEL}-{main_device}-none")
        print(f"ResNet-18, 224x224 images, random tensors on the {main_device}:")
        resnet18_case(main_device, args.resnet_steps, check)
        print("samples/s per precision (median epoch after the first):")
        for (device, precision), r in results.items():
            base = results[("cpu", precision if precision != "fp16" else "none")]
            vs = "" if device == "cpu" else (f"  {r['samples_per_s'] / base['samples_per_s']:.1f}x the CPU "
                                             f"{'fp32' if precision != 'bf16' else 'bf16'} run")
            print(f"  {device:4} {precision if precision != 'none' else 'fp32':5} {r['samples_per_s']:10,.0f}{vs}")
        if cuda:
            peaks = {f"{d}/{pr}": r["peak_gpu_bytes"] for (d, pr), r in results.items() if d == "cuda"}
            print("peak GPU memory of the rank: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in peaks.items()))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if check.failures:
        print(f"gpu_check: FAILED ({len(check.failures)}): " + "; ".join(check.failures))
        return 1
    print("gpu_check: OK" + ("" if cuda else " (CPU only: the CUDA parts were skipped)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
