"""Flat transition vectors for EDIS: ``x = [s, a, r, s'(, terminal)]`` <-> TorchRL TensorDicts, and their z-scoring.

The diffusion model, the energies and the guided sampler all work on one flat vector per transition, in normalised
coordinates; this module is the only place that knows the column layout and the TorchRL keys.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

__all__ = ["TransitionLayout", "ZScoreNormalizer", "REQUIRED_KEYS"]

REQUIRED_KEYS: tuple = ("observation", "action", ("next", "reward"), ("next", "observation"))


def _key_name(key) -> str:
    return key if isinstance(key, str) else ".".join(key)


class TransitionLayout:
    """Column layout of flat transitions: ``s`` (obs_dim), ``a`` (action_dim), ``r`` (1), ``s'`` (obs_dim), and an
    optional terminal flag (1).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> layout = TransitionLayout(obs_dim=2, action_dim=1)
        >>> td = TensorDict({"observation": torch.ones(3, 2), "action": torch.zeros(3, 1),
        ...                  "next": {"reward": torch.full((3, 1), 5.0), "observation": torch.ones(3, 2) * 2}}, [3])
        >>> x = layout.flatten(td)
        >>> x[0].tolist(), layout.dim
        ([1.0, 1.0, 0.0, 5.0, 2.0, 2.0], 6)
        >>> layout.unflatten(x)["next", "reward"].shape
        torch.Size([3, 1])
    """

    def __init__(self, obs_dim: int, action_dim: int, terminal_channel: bool = False) -> None:
        if int(obs_dim) < 1 or int(action_dim) < 1:
            raise ValueError(f"obs_dim and action_dim must be positive integers, got {obs_dim} and {action_dim}.")
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.terminal_channel = bool(terminal_channel)
        ds, da = self.obs_dim, self.action_dim
        self.blocks: dict[str, slice] = {
            "state": slice(0, ds),
            "action": slice(ds, ds + da),
            "reward": slice(ds + da, ds + da + 1),
            "next_state": slice(ds + da + 1, 2 * ds + da + 1),
        }
        if self.terminal_channel:
            self.blocks["terminal"] = slice(2 * ds + da + 1, 2 * ds + da + 2)
        self.dim = 2 * ds + da + 1 + int(self.terminal_channel)

    def mask(self, *blocks: str) -> Tensor:
        """A boolean ``[dim]`` mask over the FEATURE dimension selecting the named blocks (e.g. "state", "action")."""
        m = torch.zeros(self.dim, dtype=torch.bool)
        for name in blocks:
            if name not in self.blocks:
                raise KeyError(f"unknown block {name!r}; the layout has {list(self.blocks)}.")
            m[self.blocks[name]] = True
        return m

    def flatten(self, td: TensorDictBase) -> Tensor:
        """``[N, dim]`` float32 from a TensorDict of transitions (any batch shape, flattened)."""
        missing = [_key_name(k) for k in REQUIRED_KEYS if k not in td.keys(include_nested=True)]
        if missing:
            raise KeyError(
                f"EDIS needs transitions with keys {[_key_name(k) for k in REQUIRED_KEYS]}; missing {missing} in a "
                f"TensorDict with keys {sorted(_key_name(k) for k in td.keys(True, True))}."
            )
        n = td.batch_size.numel()
        cols = []
        for key, width in zip(REQUIRED_KEYS, (self.obs_dim, self.action_dim, 1, self.obs_dim)):
            value = td.get(key).reshape(n, -1).to(torch.float32)
            if value.shape[-1] != width:
                raise ValueError(
                    f"{_key_name(key)!r} has {value.shape[-1]} features per transition, but this EDIS transform was "
                    f"built for {width}. Build it with obs_dim={self.obs_dim}, action_dim={self.action_dim} matching "
                    "the data."
                )
            cols.append(value)
        if self.terminal_channel:
            for key in (("next", "terminated"), ("next", "done")):
                if key in td.keys(include_nested=True):
                    cols.append(td.get(key).reshape(n, 1).to(torch.float32))
                    break
            else:
                raise KeyError(
                    "terminal_channel=True needs ('next', 'terminated') or ('next', 'done') in the data; neither is "
                    "present. Add them or build the transform with terminal_channel=False."
                )
        return torch.cat(cols, dim=-1)

    def check_finite(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` if flat transitions ``x [N, dim]`` hold NaN or inf: one line naming the field, the
        number of non-finite values and the first transition (row of ``x``) holding one.

        Example:
            >>> import torch
            >>> layout = TransitionLayout(obs_dim=1, action_dim=1)
            >>> x = torch.zeros(4, layout.dim)
            >>> x[2, 2] = float("nan")  # the reward column
            >>> try:
            ...     layout.check_finite(x, "data")
            ... except ValueError as err:
            ...     print(str(err).split(";")[0])
            EDIS fit: data has 1 non-finite value(s) in 'next.reward', first at transition 2 of 4
        """
        bad = ~torch.isfinite(x)
        if not bool(bad.any()):
            return
        names = {"state": "observation", "action": "action", "reward": "next.reward"}
        names.update({"next_state": "next.observation", "terminal": "next.terminated"})
        for block, cols in self.blocks.items():
            hits = bad[:, cols]
            if bool(hits.any()):
                row = int(hits.any(-1).nonzero()[0])
                raise ValueError(
                    f"EDIS fit: {name} has {int(hits.sum())} non-finite value(s) in {names[block]!r}, first at "
                    f"transition {row} of {x.shape[0]}; drop or repair those transitions before fitting."
                )

    def unflatten(self, x: Tensor) -> TensorDict:
        """A TensorDict ``[N]`` with TorchRL's transition keys, float32 rewards ``[N, 1]``, boolean done flags
        (terminal channel > 0.5 when present, else False) and ``mc_return`` zeros ``[N, 1]``."""
        n = x.shape[0]
        x = x.to(torch.float32)
        b = self.blocks
        if self.terminal_channel:
            terminated = x[:, b["terminal"]] > 0.5
        else:
            terminated = torch.zeros(n, 1, dtype=torch.bool, device=x.device)
        return TensorDict(
            {
                "observation": x[:, b["state"]],
                "action": x[:, b["action"]],
                "mc_return": torch.zeros(n, 1, device=x.device),
                "next": {
                    "observation": x[:, b["next_state"]],
                    "reward": x[:, b["reward"]],
                    "done": terminated.clone(),
                    "terminated": terminated,
                    "truncated": torch.zeros(n, 1, dtype=torch.bool, device=x.device),
                },
            },
            batch_size=[n],
            device=x.device,
        )


class ZScoreNormalizer(nn.Module):
    """Per-dimension z-scoring ``(x - mean) / std``, refit on each dataset; columns in ``skip`` stay raw.

    Constant columns get ``std = 1`` so that they map to 0 instead of dividing by zero.

    Example:
        >>> import torch
        >>> norm = ZScoreNormalizer(2)
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
        >>> norm.fit(x)
        >>> norm.normalize(x).tolist(), torch.equal(norm.denormalize(norm.normalize(x)), x)
        ([[-1.0, 0.0], [1.0, 0.0]], True)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor, skip: Tensor | None = None, eps: float = 1e-6) -> None:
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std < eps, torch.ones_like(std), std)
        if skip is not None:
            skip = skip.to(mean.device)
            mean = torch.where(skip, torch.zeros_like(mean), mean)
            std = torch.where(skip, torch.ones_like(std), std)
        self.mean.copy_(mean)
        self.std.copy_(std)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
