"""The 2D bandit of the Diffusion-QL paper (Wang et al. 2023, section 5.1; docs/algorithms.md section 2.5).

One fixed state (zeros(2)); behaviour actions come from four Gaussian modes at (+-0.8, +-0.8) with std 0.05, clipped to
[-1, 1], 2,500 per mode; each mode has its own reward distribution, N(mean, 0.5^2):

=============  ===========
mode (a1, a2)  reward mean
=============  ===========
(-0.8, +0.8)   3.0
(-0.8, -0.8)   0.0
(+0.8, +0.8)   1.5
(+0.8, -0.8)   5.0  (the best)
=============  ===========

Every transition is a terminated one-step episode, so ``mc_return`` equals the reward and a critic trained on it
regresses the reward (the paper's toy critic has no bootstrap). Expected: diffusion BC recovers all four modes, a
Gaussian BC policy averages them, Diffusion-QL concentrates on (+0.8, -0.8).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["BANDIT_MODES", "BANDIT_REWARD_MEANS", "bandit_dataset", "bandit_replay_buffer"]

BANDIT_MODES = torch.tensor([[-0.8, 0.8], [-0.8, -0.8], [0.8, 0.8], [0.8, -0.8]])
BANDIT_REWARD_MEANS = torch.tensor([3.0, 0.0, 1.5, 5.0])


def bandit_dataset(
    num_per_mode: int = 2500,
    *,
    action_std: float = 0.05,
    reward_std: float = 0.5,
    seed: int = 0,
) -> TensorDict:
    """The bandit's transitions as a TensorDict of batch size ``[4 * num_per_mode]``.

    Keys: "observation" (zeros, [N, 2]), "action" ([N, 2]), "mode" (which Gaussian, [N]), "mc_return" ([N, 1]) and
    ("next", "observation" / "reward" [N, 1] / "done" / "terminated" (all True) / "truncated" (all False)).

    Example:
        >>> td = bandit_dataset(num_per_mode=1000, seed=0)
        >>> td.batch_size, bool(td["next", "terminated"].all())
        (torch.Size([4000]), True)
        >>> means = torch.stack([td["next", "reward"][td["mode"] == m].mean() for m in range(4)])
        >>> bool((means - BANDIT_REWARD_MEANS).abs().max() < 0.1)
        True
    """
    generator = torch.Generator().manual_seed(seed)
    mode = torch.arange(4).repeat_interleave(num_per_mode)
    num = mode.numel()
    action = BANDIT_MODES[mode] + action_std * torch.randn(num, 2, generator=generator)
    action = action.clamp(-1.0, 1.0)
    reward = BANDIT_REWARD_MEANS[mode].unsqueeze(-1) + reward_std * torch.randn(num, 1, generator=generator)
    ones = torch.ones(num, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": torch.zeros(num, 2),
            "action": action,
            "mode": mode,
            "mc_return": reward.clone(),
            "next": {
                "observation": torch.zeros(num, 2),
                "reward": reward,
                "done": ones.clone(),
                "terminated": ones,
                "truncated": torch.zeros(num, 1, dtype=torch.bool),
            },
        },
        batch_size=[num],
    )


def bandit_replay_buffer(
    batch_size: int = 100,
    *,
    num_per_mode: int = 2500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    **kwargs,
):
    """The bandit as an :class:`~diffrl.data.loading.OfflineReplayBuffer` (uniform sampling; default batch 100 as in
    the paper's toy settings). Extra keyword arguments go to :func:`bandit_dataset`.

    Example:
        >>> rb = bandit_replay_buffer(batch_size=100, num_per_mode=250)
        >>> rb.sample()["action"].shape, rb.obs_dim, rb.action_dim
        (torch.Size([100, 2]), 2, 2)
    """
    from diffrl.data.loading import OfflineReplayBuffer

    data = bandit_dataset(num_per_mode, seed=seed, **kwargs)
    return OfflineReplayBuffer(
        data,
        batch_size=batch_size,
        device=device,
        seed=seed,
        dataset_id="diffrl/toy/bandit",
        obs_mean=torch.zeros(2),
        obs_std=torch.ones(2),
        gamma=0.0,
    )
