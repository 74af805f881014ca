"""Denoiser networks for EDM: a residual MLP over flat vectors with a random-Fourier embedding of the noise level.

The architecture follows the one SynthER and EDIS use for transitions (Lu et al., "Synthetic Experience Replay",
2023): the input is projected to ``embed_dim`` and summed with an embedding of ``c_noise``, then a stack of residual
blocks (LayerNorm -> SiLU -> Linear) of width ``width`` maps it back to the data dimension. The paper size is
``width=1024, blocks=6, embed_dim=256`` (about 6.7M parameters for a 40-dimensional transition); the CPU default is much
smaller. Networks here are plain torch: they see ``(x, c_noise)`` and know nothing of preconditioning
(:class:`diffrl.diffusion.edm.EDMDenoiser` adds it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RandomFourierEmbedding", "ResidualBlock", "ResidualMLPDenoiser"]


class RandomFourierEmbedding(nn.Module):
    """Fixed random Fourier features of a scalar: ``[t, cos(2 pi w t), sin(2 pi w t)]`` with ``w ~ N(0, scale^2)``.

    The frequencies are a buffer (saved with the model, never trained), drawn from a dedicated generator seeded by
    ``seed`` so that two networks built with the same arguments embed identically.

    Args:
        num_frequencies: number of frequencies ``w``; the output has ``2 * num_frequencies + 1`` features.
        scale: standard deviation of the frequencies. Default 1 (``c_noise`` spans about [-1.6, 1.1]).
        seed: seed of the frequencies.

    Example:
        >>> import torch
        >>> emb = RandomFourierEmbedding(8)
        >>> out = emb(torch.zeros(3))
        >>> out.shape, bool((out[:, 1:9] == 1).all())  # cos(0) = 1
        (torch.Size([3, 17]), True)
    """

    def __init__(self, num_frequencies: int = 16, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", torch.randn(num_frequencies, generator=gen) * scale)
        self.out_features = 2 * num_frequencies + 1

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * t.unsqueeze(-1) * self.frequencies.to(t.dtype)
        return torch.cat([t.unsqueeze(-1), angles.cos(), angles.sin()], dim=-1)


_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; accepted: {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]()


class ResidualBlock(nn.Module):
    """``x + Linear(act(LayerNorm(x)))``: a pre-norm residual MLP block of constant width (one linear layer).

    ``activation`` is "silu" (default) or "relu"; ``layer_norm=False`` drops the LayerNorm (the official EDIS blocks).

    Example:
        >>> import torch
        >>> block = ResidualBlock(8)
        >>> _ = torch.nn.init.zeros_(block.linear.weight), torch.nn.init.zeros_(block.linear.bias)
        >>> x = torch.randn(2, 8)
        >>> torch.equal(block(x), x)  # a zeroed linear layer leaves the identity
        True
    """

    def __init__(self, width: int, dropout: float = 0.0, activation: str = "silu", layer_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.act = _activation(activation)
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.linear(self.act(self.norm(x))))


class ResidualMLPDenoiser(nn.Module):
    """Residual-MLP denoiser ``F(x, c_noise)`` for flat vectors, as used by SynthER/EDIS.

    1. ``h = Linear(x) + MLP(RandomFourier(c_noise))`` (both of size ``embed_dim``);
    2. ``h = Linear(h)`` to ``width``, then ``blocks`` residual blocks (LayerNorm, SiLU, Linear);
    3. ``out = Linear(SiLU(LayerNorm(h)))`` back to ``dim``.

    Args:
        dim: data dimension (input = output size).
        width: residual width. Default 256 (paper: 1024).
        blocks: number of residual blocks. Default 3 (paper: 6).
        embed_dim: size of the input projection and time embedding. Default 128 (paper: 256).
        num_frequencies: random Fourier frequencies of the noise embedding. Default 16.
        fourier_scale: standard deviation of those frequencies. Default 1.
        dropout: dropout inside the blocks. Default 0.
        activation: "silu" (default) or "relu", in the blocks and the head.
        layer_norm: LayerNorm in the blocks and the head. Default True (the official EDIS model: ReLU, no LayerNorm).
        seed: seed of the fixed Fourier frequencies.

    Batch shapes come from the inputs: ``x`` is ``[..., dim]`` and ``c_noise`` is ``[...]`` (or broadcastable to it).

    Example:
        >>> import torch
        >>> net = ResidualMLPDenoiser(4, width=32, blocks=2, embed_dim=16)
        >>> net(torch.randn(5, 7, 4), torch.zeros(5, 7)).shape
        torch.Size([5, 7, 4])
        >>> big = ResidualMLPDenoiser(40, width=1024, blocks=6, embed_dim=256)  # the paper size
        >>> round(sum(p.numel() for p in big.parameters()) / 1e6, 1)
        6.7
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        blocks: int = 3,
        embed_dim: int = 128,
        num_frequencies: int = 16,
        fourier_scale: float = 1.0,
        dropout: float = 0.0,
        activation: str = "silu",
        layer_norm: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("embed_dim", embed_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if int(blocks) < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}.")
        self.dim = int(dim)
        self.input_proj = nn.Linear(dim, embed_dim)
        fourier = RandomFourierEmbedding(num_frequencies, fourier_scale, seed=seed)
        self.time_embed = nn.Sequential(
            fourier, nn.Linear(fourier.out_features, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.trunk_in = nn.Linear(embed_dim, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width, dropout, activation, layer_norm) for _ in range(blocks)])
        self.head = nn.Sequential(
            nn.LayerNorm(width) if layer_norm else nn.Identity(), _activation(activation), nn.Linear(width, dim)
        )

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected inputs of size {self.dim} in the last dimension, got shape {tuple(x.shape)}.")
        c_noise = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        h = self.input_proj(x) + self.time_embed(c_noise)
        return self.head(self.blocks(self.trunk_in(h)))
