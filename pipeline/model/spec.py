"""The model spec: what networks.build_model builds, saved as model.json's ``model``.

It travels as this dataclass in the code and as a plain dict on disk (model.json, checkpoints,
a user factory's argument), so old artifacts load and ``torch.load(weights_only=True)`` reads
checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

CNN_HEADS = ("pool", "flatten")  # cnn: pooled to a fixed grid (specs built today), or sized by the input


@dataclass(frozen=True)
class ModelSpec:
    arch: str                    # cnn, resnet, resnet18, strided_cnn, mlp, lstm, gru, torchvision:<name> or module.path:factory
    input_shape: list[int]       # [C, H, W], [F] or [window, F]
    num_classes: int             # the size of the output head
    task: str | None = None      # the ML task (objectives); absent in artifacts older than tasks
    hidden: list[int] | None = None   # recurrent layer sizes (lstm, gru)
    predict_change: bool = False      # recurrent: predict the change from the last value
    factory: dict[str, Any] | None = None  # a user factory: its path, version and source hash
    head: str | None = None      # cnn: "pool" in specs built today; absent (None) in older artifacts,
                                 # whose cnn has the "flatten" head sized by the input

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        """The on-disk form: the keys an artifact of this arch has always had."""
        d: dict[str, Any] = {"arch": self.arch, "input_shape": list(self.input_shape),
                             "num_classes": self.num_classes}
        if self.task is not None:
            d["task"] = self.task
        if self.hidden is not None:
            d.update(hidden=list(self.hidden), predict_change=self.predict_change)
        if self.factory is not None:
            d["factory"] = self.factory
        if self.head is not None:
            d["head"] = self.head
        return d
