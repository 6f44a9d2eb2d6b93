"""Image augmentation on uint8 (N, C, H, W) batches, on the training device, train split only.

Every random draw comes from a ``torch.Generator`` the trainer seeds from (seed, rank, epoch),
so an epoch's augmented batches are the same on a re-run and after a resume from the previous
epoch's checkpoint. Batches stay uint8 until the model's normalisation, as they travelled.

- ``crop_padding``: pad each side with zeros, then crop back to H x W at a random offset.
- ``hflip``: mirror half of the images left-right.
- ``rotate_degrees``: rotate by a uniform angle in [-d, d] (bilinear, zeros outside).
- ``brightness`` / ``contrast``: scale pixel values (brightness) or their distance to the
  image mean (contrast) by a uniform factor in [1 - b, 1 + b].
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KEYS = ("crop_padding", "hflip", "rotate_degrees", "brightness", "contrast")


def enabled(conf: dict[str, Any] | None) -> bool:
    return conf is not None and any(conf.get(k) for k in KEYS)


def generator(device: torch.device, *parts: int) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, rank, epoch, ...)."""
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (N, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    # (N, H, W, C) gathered, back to (N, C, H, W)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def horizontal_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n, generator=g, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    y = x.float()
    if brightness:
        y = y * (1 + (torch.rand(n, 1, 1, 1, generator=g, device=x.device) * 2 - 1) * brightness)
    if contrast:
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = mean + (y - mean) * (1 + (torch.rand(n, 1, 1, 1, generator=g, device=x.device) * 2 - 1) * contrast)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def apply(x: torch.Tensor, conf: dict[str, Any], g: torch.Generator) -> torch.Tensor:
    """All configured augmentations, in a fixed order, on a uint8 (N, C, H, W) batch."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"augmentation takes uint8 (N, C, H, W) image batches, got {x.dtype} {tuple(x.shape)}")
    if conf.get("crop_padding"):
        x = random_crop(x, int(conf["crop_padding"]), g)
    if conf.get("hflip"):
        x = horizontal_flip(x, g)
    if conf.get("rotate_degrees"):
        x = rotate(x, float(conf["rotate_degrees"]), g)
    if conf.get("brightness") or conf.get("contrast"):
        x = colour_jitter(x, float(conf.get("brightness") or 0), float(conf.get("contrast") or 0), g)
    return x
