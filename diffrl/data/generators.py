"""Registered dataset generators (kind ``dataset``): datasets any machine can build locally, with no internet.

A generator is registered under its dataset id and, when called, builds that dataset into the local Minari directory
(``$MINARI_DATASETS_PATH``) and returns the ``minari.MinariDataset``; if the dataset already exists it is returned as
is, unless ``overwrite=True``. ``load_dataset`` calls it on first use::

    from diffrl import registry
    registry.names("dataset")                  # what can be generated
    registry.get("dataset", "diffrl/pendulum/medium-v0")()   # build now (seconds)

Pendulum (``Pendulum-v1``, 200-step episodes), built in seconds by a scripted controller
(:class:`PendulumController`): energy-pumping swing-up, then a PD balance law near the top.

=============================  ==========  ============================================  ===========
dataset id                     steps       behaviour                                     mean return
=============================  ==========  ============================================  ===========
``diffrl/pendulum/random-v0``  20,000      uniform random torques                        about -1200
``diffrl/pendulum/medium-v0``  50,000      controller, half the steps random, N(0, 1)    about -640
``diffrl/pendulum/expert-v0``  20,000      controller with N(0, 0.1^2) torque noise      about -145
=============================  ==========  ============================================  ===========

Reference scores (all three): ``ref_min_score`` = :data:`PENDULUM_REF_MIN` (uniform random policy) and
``ref_max_score`` = :data:`PENDULUM_REF_MAX` (noise-free controller), each the mean return over 1000 episodes with
reset seeds 100000..100999; :func:`pendulum_reference_scores` recomputes them.

MuJoCo (``diffrl/{hopper,halfcheetah,walker2d}/{medium,medium-replay}-v0``): TorchRL's SAC trained on the v5 env
until its policy scores "medium" (first evaluation at D4RL-normalised 30-60, with D4RL's reference returns: hopper
-20.272305 / 3234.3, halfcheetah -280.178953 / 12135.0, walker2d 1.629008 / 4592.3); ``medium`` = rollouts of that
stochastic policy, ``medium-replay`` = the run's replay buffer up to the stop. Both are written by one training run
(calling either builds both). See :mod:`diffrl.data.sac_generator` for the budget, its CPU build time and the options
a user can lower (``train_steps``, ``medium_steps``, ``eval_episodes``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffrl import registry

__all__ = ["PendulumController", "PENDULUM_REF_MIN", "PENDULUM_REF_MAX", "pendulum_reference_scores"]

PENDULUM_ENV = "Pendulum-v1"
# pendulum_reference_scores(1000) -> (-1237.688, -149.811), rounded to 0.01
PENDULUM_REF_MIN = -1237.69
PENDULUM_REF_MAX = -149.81

_GRAVITY_TERM = 15.0  # 3 g / (2 l) for Pendulum-v1 (g = 10, l = 1): theta'' = 15 sin(theta) + 3 u


class PendulumController:
    """A scripted swing-up + balance controller for ``Pendulum-v1``, with optional noise.

    Pendulum-v1 observes ``[cos theta, sin theta, theta_dot]`` with theta = 0 upright and obeys
    ``theta'' = 15 sin(theta) + 3 u``, ``|u| <= 2``. The energy ``H = theta_dot^2 / 2 + 15 cos(theta)`` equals 15 when
    the pendulum rests upright. Far from the top, the controller pumps energy towards that level with a full torque
    in the direction of ``theta_dot * (15 - H)`` (``dH/dt = 3 u theta_dot``); near the top (``cos theta > 0.85``) it
    balances with ``u = -(10 theta + 2 theta_dot)``, which makes the linearised system
    ``theta'' = -15 theta - 6 theta_dot`` stable.

    Noise: with probability ``random_prob`` the torque is uniform in [-2, 2], otherwise Gaussian noise of std
    ``noise_std`` is added; the result is clipped to [-2, 2].

    Example:
        >>> ctrl = PendulumController()
        >>> bool(ctrl(np.array([0.995, 0.0998, 0.0]))[0] < 0)  # tilted by +0.1 rad near the top: push back
        True
    """

    def __init__(self, noise_std: float = 0.0, random_prob: float = 0.0, seed: int | None = None) -> None:
        self.noise_std = noise_std
        self.random_prob = random_prob
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        cos, sin, speed = (float(x) for x in obs)
        if self.random_prob > 0 and self.rng.random() < self.random_prob:
            return np.array([self.rng.uniform(-2.0, 2.0)], dtype=np.float32)
        if cos > 0.85:
            torque = -(10.0 * np.arctan2(sin, cos) + 2.0 * speed)
        else:
            energy = 0.5 * speed**2 + _GRAVITY_TERM * cos
            pump = speed * (_GRAVITY_TERM - energy)
            torque = 2.0 if pump >= 0 else -2.0
        if self.noise_std > 0:
            torque += self.noise_std * self.rng.normal()
        return np.array([min(max(torque, -2.0), 2.0)], dtype=np.float32)


_PENDULUM_LEVELS = {
    # level: (policy factory from a seed, number of episodes, description)
    "random": (lambda seed: "random", 100, "uniform random torques in [-2, 2]"),
    "medium": (
        lambda seed: PendulumController(noise_std=1.0, random_prob=0.5, seed=seed),
        250,
        "scripted swing-up/balance controller; each step a uniform random torque with probability 0.5, "
        "else the controller's torque plus N(0, 1) noise",
    ),
    "expert": (
        lambda seed: PendulumController(noise_std=0.1, seed=seed),
        100,
        "scripted swing-up/balance controller plus N(0, 0.1^2) torque noise",
    ),
}


def pendulum_reference_scores(num_episodes: int = 1000, seed: int = 100_000) -> tuple[float, float]:
    """Recompute (ref_min, ref_max): mean returns of the uniform random policy and of the noise-free controller.

    Example:
        >>> lo, hi = pendulum_reference_scores(num_episodes=3)
        >>> lo < -500 < hi
        True
    """
    import gymnasium as gym

    from diffrl.data.writing import average_return

    env = gym.make(PENDULUM_ENV)
    return (
        average_return(env, "random", num_episodes, seed=seed),
        average_return(env, PendulumController(), num_episodes, seed=seed),
    )


def _pendulum_generator(level: str) -> Callable:
    make_policy, episodes, behaviour = _PENDULUM_LEVELS[level]
    dataset_id = f"diffrl/pendulum/{level}-v0"

    def generate(*, overwrite: bool = False, seed: int = 0, num_episodes: int = episodes, progress: bool = False):
        import minari

        from diffrl.data.paths import dataset_dir
        from diffrl.data.writing import make_dataset

        if (dataset_dir(dataset_id) / "data").is_dir() and not overwrite:
            return minari.MinariDataset(dataset_dir(dataset_id) / "data")
        return make_dataset(
            PENDULUM_ENV,
            make_policy(seed),
            dataset_id,
            num_episodes=num_episodes,
            seed=seed,
            ref_min_score=PENDULUM_REF_MIN,
            ref_max_score=PENDULUM_REF_MAX,
            algorithm_name=f"diffrl scripted pendulum controller ({level})",
            description=f"Pendulum-v1, {num_episodes} episodes of 200 steps: {behaviour}.",
            overwrite=overwrite,
            progress=progress,
        )

    generate.__name__ = generate.__qualname__ = f"pendulum_{level}"
    generate.__doc__ = (
        f"Build {dataset_id} ({episodes} episodes x 200 steps of Pendulum-v1: {behaviour}); a few seconds on a CPU.\n\n"
        "Returns the existing copy if there is one. Args: overwrite (rebuild and replace it), seed (episode i resets "
        "with seed + i), num_episodes, progress."
    )
    return generate


for _level in _PENDULUM_LEVELS:
    registry.register("dataset", f"diffrl/pendulum/{_level}-v0", _pendulum_generator(_level))


def _sac_generator(task: str, env_id: str, kind: str) -> Callable:
    dataset_id = f"diffrl/{task}/{kind}-v0"

    def generate(**options):
        from diffrl.data.sac_generator import build_sac_datasets

        return build_sac_datasets(env_id, f"diffrl/{task}", **options)[kind]

    generate.__name__ = generate.__qualname__ = f"{task}_{kind.replace('-', '_')}"
    generate.__doc__ = (
        f"Build {dataset_id} by training TorchRL's SAC on {env_id} (also writes the sibling "
        f"{'medium-replay' if kind == 'medium' else 'medium'} dataset). Options: see "
        "diffrl.data.sac_generator.build_sac_datasets (CPU build time is stated there)."
    )
    return generate


for _task, _env_id in (("hopper", "Hopper-v5"), ("halfcheetah", "HalfCheetah-v5"), ("walker2d", "Walker2d-v5")):
    for _kind in ("medium", "medium-replay"):
        registry.register("dataset", f"diffrl/{_task}/{_kind}-v0", _sac_generator(_task, _env_id, _kind))
