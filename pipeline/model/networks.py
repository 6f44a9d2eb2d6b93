"""Model architectures, chosen by ``train.arch``. Built from a plain dict (the model spec) that
is saved in the artifact, so scoring rebuilds exactly what was trained."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.model.spec import CNN_HEADS, ModelSpec


class ConvNet(nn.Module):
    """The classic MNIST network (conv, conv, pool, dropout, dense, dropout, dense).

    ``head="pool"`` (every spec built today): the feature maps are average-pooled to a fixed
    4x4 grid before the dense layers, so the network's size does not depend on the input's:
    about 150k parameters at any size, and for 8x8 input (4x4 after the max-pool) exactly the
    classic network. ``head="flatten"``: the dense layers take the flattened feature maps, sized
    by the input (about 100M parameters at 224x224), as artifacts written before the pooled head
    have it. Both have the same module names, so a state dict of one fits the other where the
    shapes agree."""

    POOLED = 4  # the side of the grid the pooled head sees

    def __init__(self, channels: int, height: int, width: int, num_classes: int, head: str = "pool"):
        super().__init__()
        if head not in CNN_HEADS:
            raise ValueError(f"cnn head {head!r}: use one of {list(CNN_HEADS)}")
        pooled = head == "pool"
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            *([nn.AdaptiveAvgPool2d(self.POOLED)] if pooled else []), nn.Flatten(),
        )
        cells = self.POOLED * self.POOLED if pooled else (height // 2) * (width // 2)
        self.head = nn.Sequential(
            nn.Linear(64 * cells, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class StridedCNN(nn.Module):
    """Four 3x3 convolutions of stride 2 (16, 32, 64, 128 channels, each with batch norm and ReLU),
    global average pooling and a linear layer: a network for large images that a CPU can train.
    At 224x224x3 about 49M multiply-accumulates per image (0.1 GFLOP, 1/37 of resnet18's), about
    99k parameters; any image size works."""

    def __init__(self, channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((channels, *widths[:-1]), widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNet(nn.Module):
    """A small residual CNN: stem, two residual stages, global pooling."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, width_mult: int = 32):
        super().__init__()
        c = width_mult
        self.net = nn.Sequential(
            nn.Conv2d(channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            _Block(c), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            _Block(2 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, added to the input (through a
    1x1 convolution and batch norm, ``downsample``, where the stride or the width changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 as torchvision lays it out: a 7x7/2 convolution, batch norm, ReLU and a 3x3/2
    max-pool, four stages of two basic blocks (64, 128, 256, 512 channels; the last three start
    with stride 2), global average pooling and a linear layer. The modules have torchvision's
    names (conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0, fc), so a state dict of
    torchvision's resnet18 loads into it (with 3 channels and its number of classes). About
    11.7M parameters and 1.8 GMAC per 224x224 image; any input size works."""

    def __init__(self, channels: int, num_classes: int, blocks_per_stage: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, 64, 1, blocks_per_stage)
        self.layer2 = self._stage(64, 128, 2, blocks_per_stage)
        self.layer3 = self._stage(128, 256, 2, blocks_per_stage)
        self.layer4 = self._stage(256, 512, 2, blocks_per_stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(inplanes: int, planes: int, stride: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(inplanes, planes, stride), *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLP(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class Recurrent(nn.Module):
    """Stacked LSTM (or GRU) layers over a (batch, window, features) sequence, then a dense layer
    on the last step: the classic LSTM 64 -> LSTM 64 -> LSTM 64 -> Dense regressor by default.

    ``predict_change``: the history is taken relative to its last value of feature 0 (the
    target) and the network predicts the change from that value, which keeps a trending series
    inside the range the network saw in training. Flat (batch, window x features) input is
    reshaped."""

    def __init__(self, cell: str, window: int, num_features: int, num_outputs: int, hidden: list[int],
                 predict_change: bool = False):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        sizes = [num_features, *hidden]
        self.window, self.num_features, self.predict_change = window, num_features, predict_change
        self.layers = nn.ModuleList(rnn(a, b, batch_first=True) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.window, self.num_features)
        last = x[:, -1:, :1]
        if self.predict_change:
            x = torch.cat([x[:, :, :1] - last, x[:, :, 1:]], dim=2)
        for layer in self.layers:
            x, _ = layer(x)
        out = self.head(x[:, -1])
        return out + last[:, 0] if self.predict_change else out


def _size(shape: list[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def import_factory(path: str):
    """``package.module:callable`` -> the callable."""
    import importlib

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"train.arch {path!r}: a model factory is written module.path:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"train.arch {path!r}: cannot import {module_name!r} ({e}); ship it to the "
                         f"executors with spark-submit --py-files") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"train.arch {path!r}: module {module_name!r} has no {attr!r}") from None


def factory_version(path: str) -> dict[str, Any]:
    """What the artifact records about a user's factory: the import path, the module's
    ``__version__`` if it has one and the sha256 of its source file."""
    import hashlib
    import importlib
    import inspect

    module = importlib.import_module(path.partition(":")[0])
    try:
        source = inspect.getsource(module).encode()
        digest = hashlib.sha256(source).hexdigest()
    except (OSError, TypeError):
        digest = None
    return {"path": path, "version": getattr(module, "__version__", None), "source_sha256": digest}


def torchvision_model(name: str, channels: int, num_outputs: int) -> nn.Module:
    """A torchvision architecture (no pretrained weights: nothing is downloaded) with its first
    convolution taking ``channels`` inputs and its head giving ``num_outputs``."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        raise ValueError(f"train.arch torchvision:{name} needs torchvision built for torch {torch.__version__} "
                         f"({type(e).__name__}: {e})") from None
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_outputs)
    except ValueError as e:
        raise ValueError(f"train.arch torchvision:{name}: {e}") from None
    if channels != 3:
        for parent in model.modules():
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d):
                    # torch types these attributes tuple[int, ...]; they are a 2d convolution's pairs
                    setattr(parent, child_name, nn.Conv2d(
                        channels, child.out_channels, child.kernel_size, child.stride, child.padding,  # type: ignore[arg-type]
                        child.dilation, child.groups, child.bias is not None, child.padding_mode))  # type: ignore[arg-type]
                    return model
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    arch, shape, n = spec.arch, spec.input_shape, spec.num_classes
    if arch == "cnn":
        channels, height, width = shape
        return ConvNet(channels, height, width, n, head=spec.head or "flatten")  # no head: an older artifact
    if arch == "resnet":
        channels, height, width = shape
        return ResNet(channels, height, width, n)
    if arch == "resnet18":
        return ResNet18(shape[0], n)
    if arch == "strided_cnn":
        return StridedCNN(shape[0], n)
    if arch == "mlp":
        return MLP(_size(shape), n)
    if arch in ("lstm", "gru"):
        window, features = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)
        return Recurrent(arch, window, features, n, list(spec.hidden or [64, 64, 64]), spec.predict_change)
    if arch.startswith("torchvision:"):
        return torchvision_model(arch.split(":", 1)[1], shape[0], n)
    if ":" in arch:
        model = import_factory(arch)(spec.as_dict())  # a user factory gets model.json's plain dict
        if not isinstance(model, nn.Module):
            raise ValueError(f"train.arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise ValueError(f"unknown train.arch {arch!r}; use cnn, resnet, resnet18, strided_cnn, mlp, lstm, gru, torchvision:<name> "
                     f"or module.path:factory")


def load_initial_weights(model: nn.Module, uri: str) -> None:
    """``train.init_weights``: a state dict saved with torch.save, loaded with weights_only=True
    (tensors only, no code runs). Keys and shapes must match the model."""
    import io

    from pipeline.core import lake

    try:
        data = lake.read_bytes(uri)
    except FileNotFoundError:
        raise ValueError(f"train.init_weights: no file at {uri}") from None
    state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of this pipeline
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"train.init_weights {uri} does not fit train.arch: {str(e).splitlines()[0]} ...") from None
