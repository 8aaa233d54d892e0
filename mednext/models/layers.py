"""Layers shared by the model families (pure torch)."""

from __future__ import annotations

import torch
from torch import nn


class GlobalResponseNorm(nn.Module):
    """Global Response Normalisation (ConvNeXt V2, Woo et al. 2023) for channels-first tensors.

    ``x + gamma * (x * N(x)) + beta`` where ``N`` is the per-channel L2 norm over all spatial
    positions divided by its mean over channels. ``gamma`` and ``beta`` start at zero, so a fresh
    layer is the identity. Input and output: ``(B, C, *spatial)``.
    """

    def __init__(self, channels: int, spatial_dims: int, eps: float = 1e-6) -> None:
        super().__init__()
        shape = (1, channels) + (1,) * spatial_dims
        self.gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.eps = eps
        self.spatial_axes = tuple(range(-spatial_dims, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=self.spatial_axes, keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) per sample: in training, zero a residual branch's
    output for a fraction ``rate`` of the samples and scale the rest by ``1/(1-rate)``; the
    identity in eval mode or at rate 0. Input and output ``(B, *)``."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), not {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
