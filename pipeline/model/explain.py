"""Attributions of a model's outputs to its inputs, with Captum, in the scoring batch.

What is explained is one number per row, which the ML task's objective picks
(pipeline/model/objectives.py ``explained``): the predicted class's logit for classification,
the prediction in the label's units for regression, its sum over the horizon for a forecast.
Attributions live in the network's input space (standardised features, normalised pixels) and
are measured from a baseline in that space that the kind gives: the train split's means.

For integrated gradients the attributions of a row sum to f(input) - f(baseline)
(completeness) up to the error of the path integral over ``n_steps`` points; a row off by more
than 1% is computed again with 4 and then 16 times the steps. Each row's two sides are
returned, so scoring reports how closely completeness holds. The kinds reduce and name the attributions (pipeline/kinds/): per declared column, per
input column of a window, or a map per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from pipeline.model.artifact import LoadedModel

# The hidden columns of the scored rows that carry each row's completeness check to the driver.
ATTRIBUTED, EXPLAINED = "_attributed", "_explained"
HIDDEN_DDL = f"{ATTRIBUTED} double, {EXPLAINED} double"
TOP_FEATURES_DDL = "array<struct<feature:string,attribution:double>>"
REFINE = 4
# Rows of one attribution pass: about this many input values, whatever the input's size.
_VALUES_PER_PASS = 250_000


@dataclass(frozen=True)
class Request:
    """What the scoring tasks need to explain a batch: plain values and the kind's reduction,
    pickled to the Python workers with the rest of the task."""
    method: str
    n_steps: int
    baseline: np.ndarray                    # one input in the network's input space
    column: str                             # the explanation column and its Spark type
    ddl: str
    reduce: Callable[[np.ndarray], list]    # (rows, *input shape) attributions -> the column's values

    def run(self, m: LoadedModel, x: np.ndarray, out: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
        """(the explanation column's values, each row's sum of attributions, f(x) - f(baseline))
        for the prepared inputs ``x`` whose network outputs are ``out``."""
        attr, attributed, explained = attribute(m, x, out, self.method, self.n_steps, self.baseline)
        return self.reduce(attr), attributed, explained


def attribute(m: LoadedModel, x: np.ndarray, out: np.ndarray, method: str, n_steps: int,
              baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions shaped as the network's input; their sum per row; f(x) - f(baseline)
    per row). ``x``: prepared inputs as scoring gives them to ``predict_raw`` (uint8 pixels,
    standardised features); ``out``: the network's outputs for them, which pick what is explained."""
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    from pipeline.model.artifact import input_normaliser

    n = len(x)
    if n == 0:
        return np.zeros((0, *baseline.shape)), np.zeros(0), np.zeros(0)
    objective = m.objective
    model = m.model  # float32: its rounding is far below the completeness tolerance; float64 cost 2-4x on the CPU
    forward = objective.explained_forward(model)
    target = objective.explained_target(out)
    inputs = input_normaliser(m.spec["input"], m.device)(torch.from_numpy(np.ascontiguousarray(x)).to(m.device))
    base = torch.as_tensor(baseline, dtype=inputs.dtype, device=m.device).expand_as(inputs).contiguous()
    t = None if target is None else torch.as_tensor(target, dtype=torch.long, device=m.device)
    per_pass = max(1, _VALUES_PER_PASS // max(1, int(np.prod(baseline.shape))))
    with _rnn_backward_allowed(model):
        with torch.no_grad():
            explained = (_picked(forward(inputs), t) - _picked(forward(base), t)).cpu().numpy().astype(np.float64)
        if method != "integrated_gradients":
            attr = torch.cat([_gradient_method(method, forward, InputXGradient, Saliency)(
                inputs[i:i + per_pass], target=None if t is None else t[i:i + per_pass])
                for i in range(0, n, per_pass)])
            a = attr.detach().cpu().numpy().astype(np.float64)
            return a, a.reshape(n, -1).sum(1), explained
        ig = IntegratedGradients(forward)
        a = np.zeros((n, *baseline.shape))
        rows = np.arange(n)
        # A ReLU network's path integral has kinks that n_steps points can miss: rows whose sum is
        # off by more than the completeness tolerance are computed again with REFINE x the steps.
        for steps in (n_steps, n_steps * REFINE, n_steps * REFINE ** 2):
            idx = torch.as_tensor(rows, device=m.device)
            attr = ig.attribute(inputs[idx], baselines=base[idx], target=None if t is None else t[idx],
                                n_steps=steps, internal_batch_size=per_pass)
            a[rows] = attr.detach().cpu().numpy()
            rows = rows[~completeness(a[rows].reshape(len(rows), -1).sum(1), explained[rows])]
            if not len(rows):
                break
    return a, a.reshape(n, -1).sum(1), explained


def _gradient_method(method: str, forward, input_x_gradient, saliency):
    if method == "input_x_gradient":
        return input_x_gradient(forward).attribute
    if method == "saliency":
        return lambda inp, target: saliency(forward).attribute(inp, target=target, abs=False)
    raise ValueError(f"score.explain.method: {method!r} is not an attribution method")


def _picked(out, target):
    return out if target is None else out.gather(1, target.view(-1, 1)).squeeze(1)


def _rnn_backward_allowed(model):
    """cuDNN computes an RNN's backward pass only in training mode: attributions through an
    LSTM or GRU on a GPU run without cuDNN (the model stays in eval mode)."""
    import contextlib

    import torch

    if any(isinstance(mod, torch.nn.RNNBase) for mod in model.modules()):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def top_features(scores: np.ndarray, names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` named scores of largest magnitude, largest first (ties: declared order)."""
    order = np.argsort(-np.abs(scores), axis=1, kind="stable")[:, :k]
    return [[{"feature": names[j], "attribution": float(row[j])} for j in idx] for row, idx in zip(scores, order)]


def completeness(attributed: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """Whether each row's attributions sum to f(x) - f(baseline) within 1% (and 1e-4 absolute)."""
    return np.abs(attributed - explained) <= 0.01 * np.abs(explained) + 1e-4
