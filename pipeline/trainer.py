"""The per-rank training function.

``train_rank(params)`` runs unchanged under ``horovod.spark.run`` (Spark executors), under
``horovodrun -np N`` and as a single process. ``params`` holds plain values only; torch,
horovod and petastorm are imported inside, on the worker.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import numpy as np

log = logging.getLogger("pipeline.train")


def pick_device(requested: str, local_rank: int):
    """The GPU Spark assigned to this task, else the local rank's GPU, else the CPU."""
    import torch

    if requested == "cpu" or not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("train.device=cuda but torch sees no GPU on this worker "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        return torch.device("cpu")
    addresses: list[str] = []
    try:
        from horovod.spark.task import get_available_devices

        addresses = get_available_devices()
    except Exception:  # not under horovod.spark.run
        pass
    index = int(addresses[0]) if addresses else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def make_optimizer(model, t: dict[str, Any]):
    import torch

    if t["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def _seed_all(*parts: int) -> np.random.Generator:
    import random

    import torch

    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def _setup_logging(rank: int) -> None:
    if rank == 0 and not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s train: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def train_rank(p: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import horovod.torch as hvd
    import torch
    import torch.nn.functional as F

    from pipeline import artifact, checkpoints, feed, schedule
    from pipeline.images import ImageLayout, images_to_tensor_layout
    from pipeline.models import build_model

    hvd.init()
    rank, size, local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    _setup_logging(rank)
    t = p["train"]
    # Ranks on one host share its cores; oversubscribing them makes every rank slower.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    device = pick_device(t["device"], local_rank)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t["mixed_precision"])
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None

    _seed_all(t["seed"])  # identical init everywhere; the broadcast below makes it certain
    model = build_model(p["model_spec"]).to(device)
    opt = make_optimizer(model, t)

    start_epoch, history = 0, []
    stop = {"best_acc": -1.0, "best_epoch": -1, "bad_epochs": 0}
    best_state = None
    ck_uri = checkpoints.latest(p["checkpoint_dir"]) if p.get("resume") else None
    if ck_uri:
        ck = checkpoints.load(ck_uri)
        model.load_state_dict(ck["model"])
        start_epoch, history, stop, best_state = ck["epoch"] + 1, ck["history"], ck["early_stopping"], ck["best_model"]
        if rank == 0:
            log.info("resuming from %s at epoch %d", ck_uri, start_epoch + 1)

    compression = hvd.Compression.fp16 if t["fp16_allreduce"] else hvd.Compression.none
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), compression=compression)
    if ck_uri:
        # After wrapping: DistributedOptimizer builds a new optimizer from the param groups
        # and would drop state loaded into the original (momentum, Adam moments).
        opt.load_state_dict(ck["optimizer"])
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)

    inp = p["input"]
    field = inp["field"]
    pin = device.type == "cuda"
    if inp["kind"] == "images":
        layout = ImageLayout(**{k: inp["image"][k] for k in ("height", "width", "channels")})
        mean = torch.tensor(inp["normalization"]["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(inp["normalization"]["std"], device=device).view(1, -1, 1, 1)

        def decode(batch) -> np.ndarray:
            return images_to_tensor_layout(batch.image, layout)

        def normalise(x):  # uint8 travels to the device; the float conversion happens there
            return (x.float() / 255.0 - mean) / std
    else:
        def decode(batch) -> np.ndarray:
            return np.asarray(batch.features, dtype=np.float32)  # already standardised by preprocess

        def normalise(x):
            return x

    def to_device(x: np.ndarray, y: np.ndarray):
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        if pin:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        return normalise(xt.to(device, non_blocking=True)), yt.to(device, non_blocking=True)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def evaluate(url: str) -> dict[str, float]:
        """Loss/accuracy over the whole split: each rank scores its shard, sums are allreduced."""
        from petastorm.errors import NoDataAvailableError

        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        try:
            reader = feed.open_reader(url, rank, size, fields=[field, "label"], seed=None,
                                      infinite=False, shuffle=False)
        except NoDataAvailableError:
            reader = None  # fewer row groups than ranks: this rank contributes nothing
        if reader is not None:
            with reader, torch.no_grad():
                for x, y in feed.shuffled_batches(feed.row_group_batches(reader, decode), 1024, 0, None):
                    xt, yt = to_device(x, y)
                    with autocast():
                        out = model(xt).float()
                    sums += torch.tensor([F.cross_entropy(out, yt, reduction="sum").item(),
                                          (out.argmax(1) == yt).sum().item(), len(y)], dtype=torch.float64)
        sums = hvd.allreduce(sums, op=hvd.Sum, name=f"eval.{url}")
        n = max(sums[2].item(), 1.0)
        return {"loss": sums[0].item() / n, "accuracy": sums[1].item() / n, "count": int(sums[2].item())}

    steps = p["steps_per_epoch"]
    steps_run, rows_read = 0, 0  # this rank's own totals, returned for accounting checks
    for epoch in range(start_epoch, t["epochs"]):
        rng = _seed_all(t["seed"], rank, epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, wait = 0, 0.0
        t0 = time.perf_counter()
        chunks = feed.endless_row_groups(p["train_url"], rank, size, fields=[field, "label"],
                                         seed=t["seed"] * 1000 + epoch, decode=decode)
        try:
            batches = feed.shuffled_batches(chunks, t["batch_size"], t["shuffle_buffer"], rng)
            for step in range(steps):
                tw = time.perf_counter()
                x, y = next(batches)
                xt, yt = to_device(x, y)
                wait += time.perf_counter() - tw
                lr = schedule.lr_at(epoch + step / steps, t["lr"], size, t["warmup_epochs"], t["epochs"],
                                    t["scale_lr_by_world_size"], t["schedule"])
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad()
                with autocast():
                    out = model(xt)
                    loss = F.cross_entropy(out.float(), yt)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    opt.synchronize()
                    scaler.unscale_(opt)
                    with opt.skip_synchronize():
                        scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                steps_run += 1
                loss_sum += loss.detach().float() * len(y)
                correct += (out.detach().argmax(1) == yt).sum()
                seen += len(y)
        finally:
            chunks.close()  # stops the open reader
        elapsed = time.perf_counter() - t0
        rows_read += seen
        tot = hvd.allreduce(torch.tensor([loss_sum.item(), correct.item(), seen, wait, elapsed],
                                         dtype=torch.float64), op=hvd.Sum, name="train.sums")
        val = evaluate(p["val_url"])
        rec = {
            "epoch": epoch, "lr": lr,
            "train_loss": tot[0].item() / tot[2].item(), "train_accuracy": tot[1].item() / tot[2].item(),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "samples_per_s": tot[2].item() / (tot[4].item() / size),
            "data_wait_fraction": tot[3].item() / tot[4].item(),
            "samples": int(tot[2].item()),
        }
        history.append(rec)
        # Every rank sees the same allreduced val accuracy, so all take the same decision.
        if val["accuracy"] > stop["best_acc"]:
            stop = {"best_acc": val["accuracy"], "best_epoch": epoch, "bad_epochs": 0}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stop["bad_epochs"] += 1
        if rank == 0:
            log.info("epoch %d/%d loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f samples/s | data wait %.0f%% | lr %.4f",
                     epoch + 1, t["epochs"], rec["train_loss"], rec["train_accuracy"], rec["val_loss"],
                     rec["val_accuracy"], rec["samples_per_s"], 100 * rec["data_wait_fraction"], lr)
            checkpoints.save(p["checkpoint_dir"], epoch, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "step": (epoch + 1) * steps, "history": history, "early_stopping": stop,
                "best_model": best_state, "model_spec": p["model_spec"], "config": p["config"],
            }, keep=t["keep_checkpoints"])
        if t["early_stopping_patience"] and stop["bad_epochs"] >= t["early_stopping_patience"]:
            if rank == 0:
                log.info("early stop: val accuracy has not improved for %d epochs", stop["bad_epochs"])
            break

    if best_state is not None:
        model.load_state_dict(best_state)  # the weights of the best validation epoch
    test = evaluate(p["test_url"])
    last = history[-1] if history else {}
    metrics = {
        "run_id": p["run_id"], "world_size": size, "rank": rank, "steps_run": steps_run, "rows_read": rows_read, "device": str(device), "epochs_run": len(history),
        "best_epoch": stop["best_epoch"] + 1, "steps_per_epoch": steps,
        "val_accuracy": stop["best_acc"], "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "test_count": test["count"], "train_accuracy": last.get("train_accuracy"),
        "samples_per_s": float(np.mean([h["samples_per_s"] for h in history])) if history else None,
        "data_wait_fraction": float(np.mean([h["data_wait_fraction"] for h in history])) if history else None,
    }
    if rank == 0:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        artifact.save(p["model_uri"], state, p["artifact_spec"], metrics, history, p["config"])
        log.info("test accuracy %.4f on %d records; artifact %s", test["accuracy"], test["count"], p["model_uri"])
    hvd.shutdown()
    return metrics
