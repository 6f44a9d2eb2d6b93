"""DP-SGD (train.privacy) with Opacus on the torch (DDP) backend.

Each rank computes per-example gradients (Opacus' ``GradSampleModule``), clips each to
``max_grad_norm``; rank 0 adds Gaussian noise of ``noise_multiplier * max_grad_norm`` to the sum
and the ranks average it (``DistributedDPOptimizer``). The privacy spent is accounted with Opacus'
RDP accountant from the steps run so far, so a resumed run reports the same epsilon as an
uninterrupted one. The accountant assumes Poisson sampling at rate ``sample_rate`` (global batch /
train rows); the feed draws fixed-size shuffled batches instead: see the README.
"""
from __future__ import annotations

from typing import Any


def enabled(t: dict[str, Any]) -> bool:
    return bool((t.get("privacy") or {}).get("noise_multiplier"))


def wrap(model, opt, dp: dict[str, Any], batch_size: int):
    """(the network to train, the optimizer) for DP-SGD across the torch.distributed group: rank 0's
    weights broadcast, per-example gradients, clipping and noise in the optimizer's step."""
    import warnings

    from opacus import GradSampleModule  # type: ignore[import-untyped]
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel  # type: ignore[import-untyped]
    from opacus.optimizers import DistributedDPOptimizer  # type: ignore[import-untyped]
    from opacus.validators import ModuleValidator  # type: ignore[import-untyped]

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"train.privacy: the network has layers DP-SGD cannot train: {errors[0]}")
    # Opacus' hooks on the first layer, whose input needs no gradient: expected, not a problem.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    net = GradSampleModule(DifferentiallyPrivateDistributedDataParallel(model), loss_reduction="mean")
    opt = DistributedDPOptimizer(opt, noise_multiplier=dp["noise_multiplier"], max_grad_norm=dp["max_grad_norm"],
                                 expected_batch_size=batch_size, loss_reduction="mean")
    return net, opt


def epsilon(dp: dict[str, Any], steps: int) -> float:
    """The cumulative epsilon at ``dp["delta"]`` after ``steps`` noisy steps (RDP accountant)."""
    from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]

    acc = RDPAccountant()
    acc.history = [(dp["noise_multiplier"], dp["sample_rate"], steps)]
    return float(acc.get_epsilon(dp["delta"]))
