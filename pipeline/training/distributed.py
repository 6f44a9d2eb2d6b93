"""The distribution seam of training: Horovod or torch.distributed (DDP), one interface.

``init(name, device)`` is called once per rank, inside the rank's process; everything the
training loop needs from its peers goes through the returned backend:

- ``rank, size, local_rank, local_size`` and the ``device`` this rank trains on;
- ``prepare(model, opt, ...)`` wraps model and optimizer and starts every rank from rank 0's
  state (with ``dp``, for DP-SGD: torch only, pipeline/training/dp.py);
- ``step(loss, opt, scaler)`` backward and optimizer step (with a GradScaler for fp16 on GPU);
- ``allreduce_sum(tensor)`` and ``allgather(array)`` for the metrics;
- ``shutdown()``.

horovod and torch.distributed are imported here, inside the rank, never by a job's driver module.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any

import numpy as np

BACKENDS = ("horovod", "torch")


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def default_backend() -> str:
    """horovod where it is installed (the default stack), torch DDP otherwise (the modern one)."""
    return "horovod" if installed("horovod") else "torch"


def init(name: str, requested_device: str) -> "Horovod | TorchDDP":
    if name == "auto":
        name = default_backend()
    if name == "horovod":
        return Horovod(requested_device)
    if name == "torch":
        return TorchDDP(requested_device)
    raise ValueError(f"unknown train.backend {name!r}; use auto, horovod or torch")


def pick_device(requested: str, local_rank: int, assigned: list[str]):
    """The GPU Spark assigned to this rank, else the local rank's GPU, else the CPU."""
    import torch

    if requested == "cpu" or not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("train.device=cuda but torch sees no GPU on this worker "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        return torch.device("cpu")
    index = int(assigned[0]) if assigned else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _share_cores(local_size: int) -> None:
    import torch

    # Ranks on one host share its cores; oversubscribing them makes every rank slower.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


class Horovod:
    name = "horovod"

    def __init__(self, requested_device: str):
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        _share_cores(self.local_size)
        assigned: list[str] = []
        # Under horovod.spark.run the rank runs in a process horovod's Spark task started, which
        # has imported horovod.spark.task: ask it for the GPUs Spark assigned. Elsewhere (horovodrun,
        # a bare GPU node) importing it would pull in pyspark, which a rank must not need.
        spark_task = sys.modules.get("horovod.spark.task")
        if spark_task is not None:
            try:
                assigned = spark_task.get_available_devices()
            except Exception:  # noqa: BLE001  (no task service: not a horovod.spark.run rank)
                pass
        self.device = pick_device(requested_device, self.local_rank, assigned)

    def prepare(self, model, opt, *, fp16_allreduce: bool, opt_state: dict | None = None,
                dp: dict | None = None, batch_size: int = 0):
        if dp:  # train.py refuses this before any rank starts; a rank started by hand gets the same reason
            raise ValueError("train.privacy: DP-SGD runs on train.backend=torch, not horovod")
        hvd = self.hvd
        compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), compression=compression)
        if opt_state is not None:
            # After wrapping: DistributedOptimizer builds a new optimizer from the param groups
            # and would drop state loaded into the original (momentum, Adam moments).
            opt.load_state_dict(opt_state)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        return model, opt

    def step(self, loss, opt, scaler) -> None:
        if scaler is None:
            loss.backward()
            opt.step()
            return
        # fp16 on GPU: allreduce the scaled gradients once, unscale, then step without a
        # second synchronisation (Horovod's documented GradScaler pattern).
        scaler.scale(loss).backward()
        opt.synchronize()
        scaler.unscale_(opt)
        with opt.skip_synchronize():
            scaler.step(opt)
        scaler.update()

    def allreduce_sum(self, tensor, name: str):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)

    def allgather(self, array: np.ndarray) -> np.ndarray:
        return np.concatenate(self.hvd.allgather_object(array))

    def shutdown(self) -> None:
        self.hvd.shutdown()


def _attempt_store(td, rank: int, size: int):
    """torchrun's store, with this attempt's keys apart. torchrun's agent serves one store for
    the whole job, and after a restart the ranks would otherwise read the dead attempt's Gloo
    addresses from it and fail to connect (seen with torch 2.13's --standalone rendezvous)."""
    from datetime import timedelta

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent serves it, else rank 0
    store = td.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                        is_master=not agent and rank == 0, timeout=timedelta(minutes=10),
                        multi_tenant=not agent)
    return td.PrefixStore(f"/pipeline/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


class TorchDDP:
    """torch.distributed with DistributedDataParallel: gloo on CPU, nccl on GPU.

    Under torchrun or TorchDistributor the rendezvous comes from the environment they set
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK). Without it (the local launcher)
    this process is a group of one on a free local port.
    """

    name = "torch"

    def __init__(self, requested_device: str):
        import torch.distributed as td

        launched = "RANK" in os.environ  # by torchrun or TorchDistributor
        self.rank = int(os.environ.get("RANK", "0"))
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        _share_cores(self.local_size)
        self.device = pick_device(requested_device, self.local_rank, [])
        if not td.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if "TORCHELASTIC_RESTART_COUNT" in os.environ:
                td.init_process_group(backend, store=_attempt_store(td, self.rank, self.size), rank=self.rank, world_size=self.size)
            elif launched:
                td.init_process_group(backend)
            else:
                td.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        self.td = td

    def prepare(self, model, opt, *, fp16_allreduce: bool, opt_state: dict | None = None,
                dp: dict | None = None, batch_size: int = 0):
        from torch.nn.parallel import DistributedDataParallel

        # Every rank reads the same checkpoint; DDP broadcasts rank 0's parameters and buffers.
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        if dp:
            from pipeline.training import dp as dp_sgd

            return dp_sgd.wrap(model, opt, dp, batch_size)
        ids = [self.device.index] if self.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
        if fp16_allreduce:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            net.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return net, opt

    def step(self, loss, opt, scaler) -> None:
        if scaler is None:
            loss.backward()
            opt.step()
            return
        scaler.scale(loss).backward()  # DDP allreduces the scaled gradients during backward
        scaler.step(opt)
        scaler.update()

    def allreduce_sum(self, tensor, name: str):
        out = tensor.to(self.device)
        self.td.all_reduce(out, op=self.td.ReduceOp.SUM)
        return out.cpu()

    def allgather(self, array: np.ndarray) -> np.ndarray:
        parts: list[Any] = [None] * self.size
        self.td.all_gather_object(parts, array)
        return np.concatenate(parts)

    def shutdown(self) -> None:
        # Every rank reaches this point before any tears the group down: without the barrier a rank
        # that finished first could abort in destroy_process_group ("terminate called without an
        # active exception", SIGABRT) while rank 0 was still writing the artifact.
        self.td.barrier()
        self.td.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
