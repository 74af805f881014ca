"""Policy evaluation: n episodes with TorchRL's ``env.rollout``; mean/std return and normalized score.

Normalized score (D4RL convention, also carried by Minari datasets as ``ref_min_score``/``ref_max_score``):
``100 * (R - ref_min) / (ref_max - ref_min)``, computed per episode, then averaged. Metric names are ready to log:
``eval/return``, ``eval/return_std``, ``eval/length``, ``eval/normalized_score``, ``eval/normalized_score_std``.

Exploration mode matters: TorchRL modules act deterministically under ``"deterministic"`` (the mode of a Gaussian
actor), but a diffusion actor's deterministic sample is a different, degenerate policy; recipes evaluating diffusion
actors pass ``exploration="random"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tensordict import TensorDictBase

__all__ = ["evaluate", "normalized_score"]

_MODES = ("deterministic", "random", "mode", "mean")


def normalized_score(returns: float | torch.Tensor, ref_min_score: float, ref_max_score: float) -> Any:
    """``100 * (returns - ref_min_score) / (ref_max_score - ref_min_score)``.

    Example:
        >>> normalized_score(50.0, ref_min_score=-100.0, ref_max_score=200.0)
        50.0
    """
    if ref_max_score == ref_min_score:
        raise ValueError(f"ref_max_score and ref_min_score are both {ref_min_score}; they must differ")
    return 100.0 * (returns - ref_min_score) / (ref_max_score - ref_min_score)


def evaluate(
    env: Any,
    policy: Callable[[TensorDictBase], TensorDictBase],
    episodes: int,
    *,
    max_steps: int | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    exploration: str = "deterministic",
    reward_key: Any = ("next", "reward"),
    done_key: Any = ("next", "done"),
) -> dict[str, float]:
    """Run ``episodes`` episodes of ``policy`` in ``env`` and summarise them.

    Args:
        env: a TorchRL env (``GymEnv``, ``TransformedEnv``, or a batched env: its batch runs episodes in parallel).
        policy: a TensorDict module or callable reading the observation and writing the action.
        episodes: number of episodes (>= 1).
        max_steps: cap on an episode's length; ``None`` runs until the env says done (its own time limit),
            with a safety cap of 100000 steps.
        ref_min_score, ref_max_score: reference returns; when both are given, normalized scores are reported.
        exploration: ``"deterministic"`` (default) or ``"random"`` (sample actions, e.g. diffusion actors);
            ``"mode"`` and ``"mean"`` are TorchRL's other exploration types.
        reward_key, done_key: where the rollout stores rewards and done flags.

    Returns:
        ``{"eval/return", "eval/return_std", "eval/return_min", "eval/length", "eval/episodes"}`` plus
        ``"eval/normalized_score"``, ``"eval/normalized_score_std"`` and ``"eval/normalized_score_min"`` when reference
        scores are given. Standard deviations are population (ddof=0); ``*_min`` is the worst episode, which shows an
        evaluation whose mean hides failing episodes.

    Example:
        >>> from torchrl.envs import GymEnv
        >>> env = GymEnv("Pendulum-v1"); _ = env.set_seed(0)
        >>> policy = lambda td: td.set("action", torch.zeros(1))
        >>> out = evaluate(env, policy, episodes=2, max_steps=10, ref_min_score=-100.0, ref_max_score=0.0)
        >>> out["eval/length"], out["eval/episodes"]
        (10.0, 2.0)
        >>> abs(out["eval/normalized_score"] - (100 + out["eval/return"])) < 1e-4
        True
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}; e.g. eval.episodes=10")
    if exploration not in _MODES:
        raise ValueError(f"unknown exploration {exploration!r}; accepted: {', '.join(_MODES)}")
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError(
            f"give both ref_min_score and ref_max_score, or neither (got {ref_min_score!r} and {ref_max_score!r})"
        )
    horizon = int(max_steps) if max_steps is not None else 100_000
    mode = getattr(ExplorationType, exploration.upper())
    batch = math.prod(env.batch_size) if len(env.batch_size) else 1

    returns, lengths = [], []
    was_training = getattr(policy, "training", None)
    if was_training:
        policy.eval()  # dropout/batch-norm in inference mode; restored below
    try:
        with torch.no_grad(), set_exploration_type(mode):
            while len(returns) < episodes:
                rollout = env.rollout(
                    horizon, policy, break_when_any_done=batch == 1, break_when_all_done=batch > 1 or None
                )
                ret, length = _episode_stats(rollout, env.batch_size, reward_key, done_key)
                returns.extend(ret.tolist())
                lengths.extend(length.tolist())
    finally:
        if was_training:
            policy.train()
    returns_t = torch.tensor(returns[:episodes], dtype=torch.float64)
    out = {
        "eval/return": returns_t.mean().item(),
        "eval/return_std": returns_t.std(unbiased=False).item(),
        "eval/return_min": returns_t.min().item(),
        "eval/length": float(sum(lengths[:episodes]) / episodes),
        "eval/episodes": float(episodes),
    }
    if ref_min_score is not None:
        scores = normalized_score(returns_t, float(ref_min_score), float(ref_max_score))
        out["eval/normalized_score"] = scores.mean().item()
        out["eval/normalized_score_std"] = scores.std(unbiased=False).item()
        out["eval/normalized_score_min"] = scores.min().item()
    return out


def _episode_stats(
    rollout: TensorDictBase, batch_size: torch.Size, reward_key: Any, done_key: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode return and length from a rollout shaped [*batch, T], counting steps up to the first done only."""
    ndim = len(batch_size)
    reward = rollout.get(reward_key).to(torch.float64)
    done = rollout.get(done_key)
    # Rewards and done flags carry a trailing feature dimension (and possibly more, e.g. multi-agent); sum rewards
    # over it, and an episode is done when any of its flags is.
    reward = reward.reshape(*reward.shape[: ndim + 1], -1).sum(-1)
    done = done.reshape(*done.shape[: ndim + 1], -1).any(-1)
    # alive[t] = no done strictly before t: the step that ends an episode still counts.
    done_before = torch.cumsum(done.to(torch.int64), dim=ndim) - done.to(torch.int64)
    alive = done_before == 0
    returns = (reward * alive).sum(ndim).reshape(-1)
    lengths = alive.sum(ndim).reshape(-1)
    return returns, lengths
