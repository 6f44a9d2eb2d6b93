"""The per-rank training function.

``train_rank(params)`` runs unchanged under every launcher (``horovod.spark.run``,
``horovodrun``, Spark's TorchDistributor, ``torchrun``, or one process). ``params`` holds plain
values only; torch, horovod and petastorm are imported inside, on the worker. What differs
between Horovod and DDP sits behind ``pipeline.training.distributed``, between task types behind
``pipeline.model.objectives``, and between Petastorm and the pyarrow reader behind ``pipeline.training.feed``.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from pipeline.model.objectives import higher_is_better
from pipeline.training.params import RankParams

log = logging.getLogger("pipeline.train")


def train_rank(p: RankParams) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from pipeline.model import artifact, objectives
    from pipeline.training import distributed, dp
    from pipeline.model.networks import build_model, load_initial_weights

    t = p.train
    dist = distributed.init(t["backend"], t["device"])
    _setup_logging(dist.rank)
    tracker = _tracker(p, dist.rank)  # rank 0 logs to the MLflow run the launcher started
    objective = objectives.for_task(t["task"], p.task_info)
    data = Batches(p, dist, objective.label_dtype)
    precision = Precision(t["mixed_precision"], dist.device)

    _seed_all(t["seed"])  # identical init everywhere; prepare() makes it certain
    model = build_model(p.model_spec)
    if t["init_weights"] and not p.resume:
        load_initial_weights(model, t["init_weights"])
    model = model.to(dist.device)
    state = RunState.start(p, dist.rank)
    private = t["privacy"] if dp.enabled(t) else None  # DP-SGD (pipeline/training/dp.py)
    net, opt = dist.prepare(model, make_optimizer(model, t), fp16_allreduce=t["fp16_allreduce"],
                            opt_state=state.resume_model(model), dp=private, batch_size=t["batch_size"])

    for epoch in range(state.next_epoch, t["epochs"]):
        rec = train_epoch(net, opt, data, objective, dist, precision, epoch, p)
        if private:
            rec["dp_epsilon"] = dp.epsilon(private, (epoch + 1) * p.steps_per_epoch)
        rec.update(_prefixed("val", evaluate(model, data, p.val_url, objective, dist, precision)))
        state.record(rec, model)
        if dist.rank == 0:
            _log_epoch(rec, t["epochs"])
            tracker.log_epoch(rec)
            state.checkpoint(model, opt, epoch)
        if state.should_stop(t["early_stopping_patience"]):
            if dist.rank == 0:
                log.info("early stop: %s has not improved for %d epochs", state.monitor, state.stop["bad_epochs"])
            break

    state.restore_best(model)
    out, y = split_outputs(model, data, p.test_url, objective, dist, precision)
    test = {**objective.metrics(out, y), "count": len(y)}
    metrics = state.final_metrics(test, dist, data)
    if dist.rank == 0:
        metrics["epochs_tracked"] = tracker.active
        artifact.save(p.model_uri, {k: v.detach().cpu() for k, v in model.state_dict().items()},
                      p.artifact_spec, metrics, state.history, p.config, report=objective.report(out, y))
        log.info("test %s on %d records; artifact %s", _fmt(test), test["count"], p.model_uri)
    dist.shutdown()
    return metrics


def train_epoch(net, opt, data: "Batches", objective, dist, precision: "Precision", epoch: int,
                p: RankParams) -> dict[str, Any]:
    """One epoch of exactly ``steps_per_epoch`` steps on every rank; returns the epoch's record."""
    import torch

    from pipeline.training import schedule

    t, steps = p.train, p.steps_per_epoch
    rng = _seed_all(t["seed"], dist.rank, epoch)
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    sums, seen, wait = None, 0, 0.0
    t0 = time.perf_counter()
    with data.train_stream(epoch, rng) as batches:
        for step in range(steps):
            tw = time.perf_counter()
            x, y = next(batches)
            wait += time.perf_counter() - tw
            lr = schedule.lr_at(epoch + step / steps, t["lr"], dist.size, t["warmup_epochs"], t["epochs"],
                                t["scale_lr_by_world_size"], t["schedule"])
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            with precision.autocast():
                out = net(x)
                loss = objective.loss(out, y)
            dist.step(loss, opt, precision.scaler)
            loss_sum += loss.detach().double() * len(y)
            batch = objective.batch_sums(out, y)
            sums = batch if sums is None else sums + batch
            seen += len(y)
    elapsed = time.perf_counter() - t0
    data.account(steps, seen)
    assert sums is not None  # steps_per_epoch is at least 1
    local = torch.cat([torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=dist.device),
                                    torch.tensor(wait, dtype=torch.float64, device=dist.device),
                                    torch.tensor(elapsed, dtype=torch.float64, device=dist.device)]), sums.double()])
    tot = dist.allreduce_sum(local.cpu(), name="train.sums").tolist()  # plain floats: checkpoints load weights_only
    n = tot[1]
    return {
        "epoch": epoch, "lr": lr, "train_loss": tot[0] / n,
        **_prefixed("train", objective.train_metrics(np.array(tot[4:]), n)),
        "samples_per_s": n / (tot[3] / dist.size), "data_wait_fraction": tot[2] / tot[3], "samples": int(n),
    }


def evaluate(model, data: "Batches", url: str, objective, dist, precision: "Precision") -> dict[str, float]:
    """Metrics over a whole split: each rank scores its shard, outputs are gathered from all ranks."""
    out, y = split_outputs(model, data, url, objective, dist, precision)
    return {**objective.metrics(out, y), "count": len(y)}


def split_outputs(model, data: "Batches", url: str, objective, dist, precision: "Precision"):
    """(outputs, labels) of every row of a split, gathered from all ranks in rank order."""
    import torch

    model.eval()
    outs, labels = [], []
    with torch.no_grad():
        for x, y in data.eval_batches(url):
            with precision.autocast():
                outs.append(model(x).float().cpu().numpy())
            labels.append(y.cpu().numpy())
    out = dist.allgather(np.concatenate(outs) if outs else np.zeros((0, objective.output_size()), np.float32))
    y = dist.allgather(np.concatenate(labels) if labels else np.zeros(0, objective.label_dtype))
    return out, y


class Batches:
    """This rank's (features, labels) batches on its device, from the curated splits."""

    def __init__(self, p: RankParams, dist, label_dtype):
        import torch

        from pipeline import kinds
        from pipeline.model.artifact import input_normaliser
        from pipeline.training import feed

        self.p, self.dist, self.torch, self.feed = p, dist, torch, feed
        t, inp = p.train, p.input
        self.reader = t["reader"]
        self.fields = [inp["field"], "label"]
        self.label_dtype = label_dtype
        self.augment = t.get("augment") or {}
        self.steps_run = self.rows_read = 0  # this rank's totals, returned for accounting checks
        self._decode_x = kinds.get(inp["kind"]).rank_decoder(inp)
        self._normalise = input_normaliser(inp, dist.device)  # uint8 images travel; floats on the device

    def decode(self, batch) -> tuple[np.ndarray, np.ndarray]:
        y = batch.label
        if y.dtype == object:  # a list column (multi-step forecasts) as an array of arrays
            y = np.stack(y) if len(y) else np.zeros((0, 0))
        return self._decode_x(batch), np.asarray(y, dtype=self.label_dtype)

    def to_device(self, x: np.ndarray, y: np.ndarray, augment=None):
        """Batch to the device; ``augment`` (a seeded generator) augments uint8 images there, before
        normalisation."""
        from pipeline.training import augment as aug

        torch, device = self.torch, self.dist.device
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        if device.type == "cuda":
            xt, yt = xt.pin_memory(), yt.pin_memory()
        xt = xt.to(device, non_blocking=True)
        if augment is not None:
            xt = aug.apply(xt, self.augment, augment)
        return self._normalise(xt), yt.to(device, non_blocking=True)

    def train_stream(self, epoch: int, rng: np.random.Generator):
        """The epoch's shuffled batches (augmented, if configured, from a generator seeded with
        (seed, rank, epoch)); a context manager that closes the open reader."""
        from pipeline.training import augment as aug

        t = self.p.train
        gen = (aug.generator(self.dist.device, t["seed"], self.dist.rank, epoch)
               if aug.enabled(self.augment) else None)
        chunks = self.feed.endless_row_groups(self.p.train_url, self.dist.rank, self.dist.size,
                                              fields=self.fields, reader=self.reader,
                                              seed=t["seed"] * 1000 + epoch, decode=self.decode)
        batches = (self.to_device(x, y, gen) for x, y in
                   self.feed.shuffled_batches(chunks, t["batch_size"], t["shuffle_buffer"], rng))
        return _Closing(batches, chunks)

    def eval_batches(self, url: str):
        """The split's batches in order, of the training batch size: a rank's memory is then what
        training takes (a fixed 1024 rows made 224 px photos grow a rank by a GB with the data)."""
        chunks = (self.decode(b) for b in self.feed.shard_batches(
            url, self.dist.rank, self.dist.size, fields=self.fields, reader=self.reader, seed=None, shuffle=False))
        for x, y in self.feed.shuffled_batches(chunks, self.p.train["batch_size"], 0, None):
            yield self.to_device(x, y)

    def account(self, steps: int, rows: int) -> None:
        self.steps_run += steps
        self.rows_read += rows


class _Closing:
    def __init__(self, batches, chunks):
        self.batches, self.chunks = batches, chunks

    def __enter__(self):
        return self.batches

    def __exit__(self, *exc):
        self.chunks.close()  # stops the open reader


class Precision:
    """Autocast (bf16 or fp16) and, for fp16 on GPU, the gradient scaler."""

    def __init__(self, mixed_precision: str, device):
        import torch

        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        on_gpu = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 and on_gpu else None

    def autocast(self):
        import torch

        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


class RunState:
    """History, the best epoch by ``train.monitor`` and its weights, checkpoints and resume."""

    def __init__(self, p: RankParams, rank: int):
        self.p, self.rank = p, rank
        self.monitor = p.monitor
        self.next_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.stop: dict[str, Any] = {"best": None, "best_epoch": -1, "bad_epochs": 0}
        self.best_state: dict[str, Any] | None = None
        self.checkpoint_state: dict[str, Any] | None = None
        self.t0 = time.perf_counter()

    @classmethod
    def start(cls, p: RankParams, rank: int) -> "RunState":
        from pipeline.training import checkpoints

        state = cls(p, rank)
        uri = checkpoints.latest(p.checkpoint_dir) if p.resume else None
        if uri:
            ck = checkpoints.load(uri)
            state.checkpoint_state = ck
            state.next_epoch, state.history = ck["epoch"] + 1, ck["history"]
            state.stop, state.best_state = ck["early_stopping"], ck["best_model"]
            if rank == 0:
                log.info("resuming from %s at epoch %d", uri, state.next_epoch + 1)
        return state

    def resume_model(self, model) -> dict | None:
        """Load the checkpoint's weights into ``model``; return its optimizer state (or None)."""
        if self.checkpoint_state is None:
            return None
        model.load_state_dict(self.checkpoint_state["model"])
        return self.checkpoint_state["optimizer"]

    def record(self, rec: dict[str, Any], model) -> None:
        # Every rank sees the same reduced metrics, so all take the same decision.
        self.history.append(rec)
        value, best = rec[self.monitor], self.stop["best"]
        better = best is None or (value > best if higher_is_better(self.monitor) else value < best)
        if better:
            self.stop = {"best": value, "best_epoch": rec["epoch"], "bad_epochs": 0}
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.stop["bad_epochs"] += 1

    def should_stop(self, patience: int) -> bool:
        return bool(patience) and self.stop["bad_epochs"] >= patience

    def checkpoint(self, model, opt, epoch: int) -> None:
        from pipeline.training import checkpoints

        t = self.p.train
        checkpoints.save(self.p.checkpoint_dir, epoch, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "step": (epoch + 1) * self.p.steps_per_epoch, "history": self.history, "early_stopping": self.stop,
            "best_model": self.best_state, "model_spec": self.p.model_spec.as_dict(), "config": self.p.config,
        }, keep=t["keep_checkpoints"])

    def restore_best(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)  # the weights of the best validation epoch

    def final_metrics(self, test: dict[str, float], dist, data: Batches) -> dict[str, Any]:
        h = self.history
        import resource

        use = resource.getrusage(resource.RUSAGE_SELF)  # this rank's cost: CPU ms, peak RSS KiB, wall ms
        cost = [int(1000 * (use.ru_utime + use.ru_stime)), use.ru_maxrss, int(1000 * (time.perf_counter() - self.t0))]
        ranks = dist.allgather(np.array([[dist.rank, data.steps_run, data.rows_read, *cost]], dtype=np.int64))
        best = next((r for r in h if r["epoch"] == self.stop["best_epoch"]), h[-1] if h else {})
        return {
            "run_id": self.p.run_id, "world_size": dist.size, "rank": dist.rank, "backend": dist.name,
            "reader": data.reader, "device": str(dist.device), "steps_run": data.steps_run,
            "rows_read": data.rows_read,
            "ranks": [{**dict(zip(("rank", "steps_run", "rows_read"), map(int, r[:3]))), "cpu_s": r[3] / 1000,
                       "peak_rss_mb": r[4] / 1024, "wall_s": r[5] / 1000} for r in ranks], "epochs_run": len(h), "best_epoch": self.stop["best_epoch"] + 1,
            "monitor": self.monitor, "steps_per_epoch": self.p.steps_per_epoch,
            **{k: v for k, v in best.items() if k.startswith("val_")},
            **_prefixed("test", test),
            **{k: v for k, v in (h[-1] if h else {}).items() if k.startswith("train_") or k == "dp_epsilon"},
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in h])) if h else None,
            "data_wait_fraction": float(np.mean([r["data_wait_fraction"] for r in h])) if h else None,
        }


def make_optimizer(model, t: dict[str, Any]):
    import torch

    if t["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def _fmt(metrics: dict[str, Any]) -> str:
    """The metrics for a log line; per-class precision and recall stay in metrics.json."""
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                    if isinstance(v, float) and "precision_" not in k and "recall_" not in k)


def _log_epoch(rec: dict[str, Any], epochs: int) -> None:
    shown = {k: v for k, v in rec.items() if k.startswith(("train_", "val_")) and not k.endswith("_count")}
    log.info("epoch %d/%d %s | %.0f samples/s | data wait %.0f%% | lr %.4f", rec["epoch"] + 1, epochs,
             _fmt(shown), rec["samples_per_s"], 100 * rec["data_wait_fraction"], rec["lr"])


def _seed_all(*parts: int) -> np.random.Generator:
    import random

    import torch

    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def _tracker(p: RankParams, rank: int):
    """The launcher's MLflow run on rank 0 (pipeline.ops.tracking); an inactive one elsewhere."""
    from pipeline.ops import tracking

    t = p.tracking or {"settings": {"enabled": False}, "run_id": None}
    return tracking.Tracker.attach(t["settings"], t["run_id"] if rank == 0 else None)


def _setup_logging(rank: int) -> None:
    if rank == 0 and not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s train: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
