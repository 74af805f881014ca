"""Seeds, random-number-generator states and the compute device.

A run is reproducible when every source of randomness starts from the seed: Python's ``random``, NumPy's global
generator, torch's CPU and CUDA generators, and the environments (gymnasium keeps its own NumPy generator per env).
:func:`rng_state` / :func:`set_rng_state` capture and restore the global generators, and :func:`env_rng_state` /
:func:`set_env_rng_state` the generator of a (TorchRL-wrapped) gymnasium env, so a checkpoint can resume a run
exactly.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from diffrl.train.config import ConfigError

__all__ = [
    "seed_everything",
    "seed_env",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "env_rng_state",
    "set_env_rng_state",
]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: a non-negative integer.

    Returns:
        A fresh CPU ``torch.Generator`` seeded with ``seed``, for components that take their own generator
        (e.g. a replay buffer's ``generator=``).

    Example:
        >>> g = seed_everything(3)
        >>> draw = lambda g: (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g)[0])
        >>> a = draw(g)
        >>> draw(seed_everything(3)) == a  # same Python, NumPy, torch and generator draws
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; e.g. seed=0")
    seed = int(seed)
    random.seed(seed)
    # The legacy global generator on purpose: it is what third-party code (and gymnasium's spaces) draw from.
    np.random.seed(seed % 2**32)  # noqa: NPY002 (it takes 32-bit seeds)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def seed_env(env: Any, seed: int) -> int:
    """Seed an environment: a TorchRL env (``env.set_seed``) or a gymnasium env (``reset(seed=...)``).

    Returns:
        The next seed to use for another env (TorchRL's convention; ``seed + 1`` for gymnasium envs), so training and
        evaluation envs get different streams: ``seed_env(eval_env, seed_env(train_env, cfg.seed))``.

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("Pendulum-v1")
        >>> _ = seed_env(env, 0); a = env.reset()[0]
        >>> _ = seed_env(env, 0); bool((env.reset()[0] == a).all())
        True
    """
    if hasattr(env, "set_seed"):
        next_seed = env.set_seed(int(seed))
        return int(next_seed) if next_seed is not None else int(seed) + 1
    if hasattr(env, "reset"):
        env.reset(seed=int(seed))
        if hasattr(env, "action_space"):
            env.action_space.seed(int(seed))
        return int(seed) + 1
    raise TypeError(f"cannot seed {type(env).__name__}: expected a TorchRL env (set_seed) or a gymnasium env (reset)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a ``device`` config value into a ``torch.device``.

    ``"auto"`` picks CUDA when available, else CPU. ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are taken as
    asked, and asking for an accelerator that is absent is an error (no silent fallback to a much slower run).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"
            raise ConfigError(
                f"device={device} asked for CUDA but none is available (torch {torch.__version__} "
                f"built {built} CUDA); use device=cpu or device=auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device} asked for CUDA device {dev.index} but only "
                f"{torch.cuda.device_count()} exist; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device={device} asked for Apple MPS but it is not available; use device=cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N, mps")
    return dev


def rng_state() -> dict[str, Any]:
    """The state of the global generators: Python ``random``, NumPy, torch CPU and (if initialised) every CUDA device.

    Example:
        >>> state = rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)
        >>> torch.equal(a, torch.rand(2))
        True
    """
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by :func:`rng_state` (a CUDA state is restored only if CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gym_env_of(env: Any) -> Any:
    # TransformedEnv -> base_env; TorchRL GymEnv -> ._env (the gymnasium env); gymnasium wrappers -> .unwrapped.
    seen = 0
    while seen < 16:
        seen += 1
        if hasattr(env, "base_env") and env.base_env is not env:
            env = env.base_env
        elif hasattr(env, "_env") and not hasattr(env, "np_random"):
            env = env._env
        else:
            break
    return getattr(env, "unwrapped", env) if hasattr(env, "np_random") else None


def env_rng_state(env: Any) -> dict[str, Any] | None:
    """The NumPy generator state of a gymnasium env (possibly wrapped by TorchRL), or ``None`` if there is none.

    Only the generator: an episode in progress (physics state) is not captured, so a run resumed mid-episode
    restarts the episode. Evaluation envs, reset at every evaluation, resume exactly.

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("Pendulum-v1"); _ = env.reset(seed=1)
        >>> state = env_rng_state(env); a = env.reset()[0]
        >>> set_env_rng_state(env, state); bool((env.reset()[0] == a).all())
        True
    """
    gym_env = _gym_env_of(env)
    if gym_env is None:
        return None
    space = getattr(gym_env, "action_space", None)
    return {
        "np_random": gym_env.np_random.bit_generator.state,
        "action_space": space.np_random.bit_generator.state if space is not None else None,
    }


def set_env_rng_state(env: Any, state: dict[str, Any] | None) -> None:
    """Restore what :func:`env_rng_state` captured (no-op when ``state`` is ``None``)."""
    gym_env = _gym_env_of(env)
    if state is None or gym_env is None:
        return
    gym_env.np_random.bit_generator.state = state["np_random"]
    space = getattr(gym_env, "action_space", None)
    if space is not None and state.get("action_space") is not None:
        space.np_random.bit_generator.state = state["action_space"]
