"""Writing Minari datasets: roll out any policy in any gymnasium env and store the episodes as a real Minari dataset.

Why not ``minari.DataCollector``: it needs jax, which diffrl does not depend on. Why not
``minari.create_dataset_from_buffers``: it writes straight into the final dataset directory, so an interrupted write
leaves a half-written dataset that ``minari`` lists as valid. Here episodes are kept in memory as Minari
``EpisodeBuffer``s, written with Minari's own storage writer (``MinariStorage``, HDF5) into a hidden staging directory
under the datasets root, and the finished directory is renamed into place: a dataset either exists complete or not at
all, whatever interrupts the build (an exception in the policy, Ctrl-C).
"""

from __future__ import annotations

import inspect
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer

from diffrl.data.paths import DatasetWriteError, check_dataset_id, check_writable, datasets_root, write_error

__all__ = [
    "DatasetWriteError",
    "make_dataset",
    "write_episodes",
    "rollout_episodes",
    "as_numpy_policy",
    "average_return",
]

STAGING_DIR = ".diffrl-staging"  # hidden: Minari skips dot-directories when it lists datasets
# write_episodes' parameters that make_dataset fills itself; it passes the others on from its **metadata
_SET_BY_MAKE_DATASET = (
    "dataset_id",
    "episodes",
    "observation_space",
    "action_space",
    "env_spec",
    "algorithm_name",
    "overwrite",
)


def as_numpy_policy(policy: Any, env: gym.Env, *, deterministic: bool = False, seed: int | None = None):
    """Turn ``policy`` into a function numpy observation -> numpy action.

    Accepted: ``"random"`` (uniform over the action space, seeded), a TorchRL / tensordict module reading
    ``"observation"`` and writing ``"action"`` (sampled in RANDOM exploration mode unless ``deterministic``), a plain
    ``torch.nn.Module`` (called on a float32 tensor), or any callable ``obs -> action``.

    Example:
        >>> env = gym.make("Pendulum-v1")
        >>> act = as_numpy_policy(lambda obs: -obs[2:3], env)
        >>> act(np.array([1.0, 0.0, 0.5], dtype=np.float32)).tolist()
        [-0.5]
    """
    if isinstance(policy, str):
        if policy != "random":
            raise ValueError(f"unknown policy name {policy!r}; the only named policy is 'random'.")
        space = env.action_space
        if isinstance(space, gym.spaces.Box) and space.is_bounded():
            # same distribution as space.sample() for a bounded Box, about 5x cheaper per call
            rng = np.random.default_rng(seed)
            low, high, dtype = space.low.astype(np.float64), space.high.astype(np.float64), space.dtype
            return lambda obs: rng.uniform(low, high).astype(dtype)
        space.seed(seed)
        return lambda obs: space.sample()
    import torch  # imported here so that writing datasets with numpy policies stays light

    if isinstance(policy, torch.nn.Module):
        from tensordict import TensorDict
        from tensordict.nn import TensorDictModuleBase
        from torchrl.envs.utils import ExplorationType, set_exploration_type

        params = list(policy.parameters())
        device = params[0].device if params else torch.device("cpu")
        mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        is_td_module = isinstance(policy, TensorDictModuleBase)

        def act(obs):
            x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)
            with torch.no_grad(), set_exploration_type(mode):
                out = policy(TensorDict({"observation": x}, batch_size=[]))["action"] if is_td_module else policy(x)
            return out.detach().cpu().numpy()

        return act
    if callable(policy):
        return policy
    raise TypeError(
        f"policy must be 'random', a callable obs -> action, or a torch / TorchRL module; got {type(policy).__name__}."
    )


def rollout_episodes(
    env: gym.Env,
    act: Callable[[np.ndarray], Any],
    *,
    num_steps: int | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
    on_step: Callable[..., None] | None = None,
    progress: bool = False,
) -> list[EpisodeBuffer]:
    """Roll out ``act`` in ``env`` and return Minari ``EpisodeBuffer``s (observations include the final one).

    Episode ``i`` is reset with ``seed + i`` (stored in the buffer). With ``num_steps``, collection stops exactly at
    that many transitions; a cut episode is marked truncated on its last step, as a time limit would. Actions are
    clipped to the Box bounds before stepping, so stored actions lie in the action space. ``on_step(obs, action,
    reward, next_obs, terminated, truncated)``, if given, sees every transition as recorded (an online learner, e.g.
    the SAC dataset generator, trains from it).

    Example:
        >>> episodes = rollout_episodes(gym.make("Pendulum-v1"), lambda obs: np.array([5.0]), num_steps=250)
        >>> [len(e.rewards) for e in episodes], bool(episodes[1].truncations[-1]), float(episodes[0].actions.max())
        ([200, 50], True, 2.0)
    """
    if (num_steps is None) == (num_episodes is None):
        raise ValueError(
            f"pass exactly one of num_steps and num_episodes; got num_steps={num_steps}, num_episodes={num_episodes}."
        )
    name, value = ("num_steps", num_steps) if num_steps is not None else ("num_episodes", num_episodes)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer (the number of {name[4:]} to record), got {value!r}.")
    space = env.action_space
    low, high = (space.low, space.high) if isinstance(space, gym.spaces.Box) else (None, None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps or num_episodes, unit="step" if num_steps else "episode")
    episodes, total = [], 0
    try:
        while (num_steps is None or total < num_steps) and (num_episodes is None or len(episodes) < num_episodes):
            episode_seed = seed + len(episodes)
            obs, _ = env.reset(seed=episode_seed)
            observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
            done = False
            while not done:
                action = np.asarray(act(obs), dtype=space.dtype).reshape(space.shape)
                if low is not None:  # (np.minimum/np.maximum: several times faster than np.clip on tiny arrays)
                    action = np.minimum(np.maximum(action, low), high)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                total += 1
                if num_steps is not None and total >= num_steps:
                    truncated = truncated or not terminated
                if on_step is not None:
                    on_step(obs, action, float(reward), next_obs, bool(terminated), bool(truncated))
                obs = next_obs
                observations.append(obs)
                actions.append(action)
                rewards.append(float(reward))
                terminations.append(bool(terminated))
                truncations.append(bool(truncated))
                done = terminated or truncated
                if bar is not None and num_steps:
                    bar.update(1)
            episodes.append(
                EpisodeBuffer(
                    id=len(episodes),
                    seed=episode_seed,
                    observations=np.stack(observations),
                    actions=np.stack(actions),
                    rewards=np.asarray(rewards, dtype=np.float64),
                    terminations=np.asarray(terminations),
                    truncations=np.asarray(truncations),
                )
            )
            if bar is not None and not num_steps:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return episodes


def average_return(env: gym.Env, policy: Any, num_episodes: int = 10, *, seed: int = 0, **kwargs: Any) -> float:
    """Mean undiscounted return of ``policy`` over ``num_episodes`` episodes (seeds ``seed, seed + 1, ...``).

    Example:
        >>> env = gym.make("Pendulum-v1")
        >>> average_return(env, lambda obs: np.zeros(1), num_episodes=1, seed=0) < 0
        True
    """
    act = as_numpy_policy(policy, env, seed=seed, **kwargs)
    episodes = rollout_episodes(env, act, num_episodes=num_episodes, seed=seed)
    return float(np.mean([np.sum(e.rewards) for e in episodes]))


def write_episodes(
    dataset_id: str,
    episodes: Sequence[EpisodeBuffer],
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    env_spec: gym.envs.registration.EnvSpec | None = None,
    eval_env_spec: gym.envs.registration.EnvSpec | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    algorithm_name: str | None = None,
    author: str | None = "diffrl",
    author_email: str | None = None,
    code_permalink: str | None = None,
    description: str | None = None,
    requirements: list[str] | None = None,
    extra_metadata: dict | None = None,
    overwrite: bool = False,
):
    """Write episodes as a Minari dataset, atomically (staging directory + rename). Returns the ``MinariDataset``.

    The metadata holds what ``minari.create_dataset_from_buffers`` writes (dataset id, Minari version, algorithm,
    author, description, env specs, ``ref_min_score`` / ``ref_max_score`` when given) plus ``extra_metadata``.
    An existing dataset with the same id is an error unless ``overwrite`` (it is replaced only once the new one is
    complete).

    Example:
        >>> import tempfile
        >>> from diffrl.data.paths import datasets_path_override
        >>> space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        >>> episode = EpisodeBuffer(observations=np.zeros((3, 1), np.float32), actions=np.ones((2, 1), np.float32),
        ...                         rewards=np.array([1.0, 2.0]), terminations=np.array([False, True]),
        ...                         truncations=np.array([False, False]))
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     ds = write_episodes("demo/tiny-v0", [episode], observation_space=space, action_space=space)
        >>> ds.total_steps, next(iter(ds.iterate_episodes())).rewards.tolist()
        (2, [1.0, 2.0])
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.dataset.minari_storage import MinariStorage
    from minari.namespace import create_namespace, list_local_namespaces

    check_dataset_id(dataset_id)
    if not episodes:
        raise ValueError(f"cannot write dataset {dataset_id!r}: no episodes were collected.")
    root = datasets_root()
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id!r} already exists at {final}. Pass overwrite=True, delete it first "
            f"(python -m diffrl.data delete {dataset_id}), or choose another id / version."
        )
    metadata: dict[str, Any] = {"dataset_id": dataset_id, "minari_version": minari.__version__}
    for key, value in (
        ("algorithm_name", algorithm_name),
        ("code_permalink", code_permalink),
        ("description", description),
        ("requirements", requirements),
    ):
        if value is not None:
            metadata[key] = value
    if author is not None:
        metadata["author"] = {author}
    if author_email is not None:
        metadata["author_email"] = {author_email}
    if eval_env_spec is not None:
        metadata["eval_env_spec"] = eval_env_spec.to_json()
    if ref_min_score is not None or ref_max_score is not None:
        if ref_min_score is None or ref_max_score is None or not ref_max_score > ref_min_score:
            raise ValueError(
                f"reference scores need both ref_min_score < ref_max_score; got ref_min_score={ref_min_score}, "
                f"ref_max_score={ref_max_score}."
            )
        metadata.update(ref_min_score=float(ref_min_score), ref_max_score=float(ref_max_score))
    metadata.update(extra_metadata or {})

    staging = root / STAGING_DIR / uuid.uuid4().hex
    try:
        staging.mkdir(parents=True)
        storage = MinariStorage.new(
            staging / "data", observation_space=observation_space, action_space=action_space, env_spec=env_spec
        )
        storage.update_metadata(metadata)
        storage.update_episodes(episodes)
        namespace = parse_dataset_id(dataset_id)[0]
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not overwrite:  # another process finished the same dataset meanwhile
            raise FileExistsError(f"dataset {dataset_id!r} appeared at {final} while this copy was being written.")
        if final.exists():  # overwrite: move the old dataset aside only now that the new one is complete
            trash = root / STAGING_DIR / f"old-{uuid.uuid4().hex}"
            os.rename(final, trash)
            os.rename(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, final)
    except (FileExistsError, DatasetWriteError):
        raise
    except OSError as err:  # read-only root, no permission, full disk: one line naming the directory and the fix
        raise write_error(root, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return minari.MinariDataset(final / "data")


def _check_metadata_keywords(metadata: dict[str, Any]) -> None:
    """Reject, before a long rollout, the keywords :func:`make_dataset` cannot pass on to :func:`write_episodes`."""
    accepted = [name for name in inspect.signature(write_episodes).parameters if name not in _SET_BY_MAKE_DATASET]
    unknown = sorted(set(metadata) - set(accepted))
    if unknown:
        raise TypeError(
            f"make_dataset got unexpected keyword(s) {unknown}; besides its own it accepts write_episodes' metadata "
            f"keywords {accepted}. Fix the name(s) or drop them."
        )


def make_dataset(
    env: str | gym.Env,
    policy: Any,
    dataset_id: str,
    *,
    num_steps: int | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    deterministic: bool = False,
    algorithm_name: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **metadata: Any,
):
    """Roll out ``policy`` in a gymnasium env and write the episodes as a Minari (HDF5) dataset.

    Nothing is written until collection finished; the write itself is atomic (see the module docstring), so an
    exception raised by the policy, or Ctrl-C, leaves no dataset behind.

    Args:
        env: a gymnasium env id (made with ``gym.make(env, max_episode_steps=..., **env_kwargs)``) or an env instance.
        policy: ``"random"``, a callable numpy obs -> action, a ``torch.nn.Module`` or a TorchRL module (reads
            ``"observation"``, writes ``"action"``).
        dataset_id: Minari id, ``namespace/name-v<version>``.
        num_steps: number of transitions to record (the last episode is cut and marked truncated). Or:
        num_episodes: number of whole episodes to record.
        seed: episode ``i`` is reset with ``seed + i``; the random policy is seeded with ``seed``.
        deterministic: sample TorchRL modules in DETERMINISTIC exploration mode (default: RANDOM).
        algorithm_name: Minari metadata; defaults to ``policy`` when that is a name ("random").
        overwrite: replace an existing dataset with the same id.
        progress: show a progress bar.
        **metadata: the rest of :func:`write_episodes`' metadata, passed on: ``ref_min_score`` and ``ref_max_score``
            (reference returns for normalised scores, both or neither), ``author`` (default "diffrl"),
            ``author_email``, ``code_permalink``, ``description``, ``requirements``, ``eval_env_spec`` and
            ``extra_metadata`` (more JSON-serialisable metadata). Checked before the rollout: any other keyword is a
            ``TypeError``.

    Returns:
        The written ``minari.MinariDataset``.

    Example:
        >>> import tempfile, minari
        >>> from diffrl.data.paths import datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     ds = make_dataset("Pendulum-v1", "random", "demo/pendulum/random-v0", num_steps=250,
        ...                       ref_min_score=-1200.0, ref_max_score=-150.0, algorithm_name="uniform random")
        ...     ids = list(minari.list_local_datasets())
        >>> (ds.total_steps, ds.total_episodes, ds.storage.metadata["ref_max_score"], ids)
        (250, 2, -150.0, ['demo/pendulum/random-v0'])
    """
    check_dataset_id(dataset_id)
    _check_metadata_keywords(metadata)
    if isinstance(env, str):
        env = gym.make(env, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    elif not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium env id or a gymnasium.Env, got {type(env).__name__}.")
    check_writable(datasets_root())  # fail before a long collection, not after
    if (datasets_root() / dataset_id).exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id!r} already exists. Pass overwrite=True, delete it first "
            f"(python -m diffrl.data delete {dataset_id}), or choose another id / version."
        )
    act = as_numpy_policy(policy, env, deterministic=deterministic, seed=seed)
    episodes = rollout_episodes(env, act, num_steps=num_steps, num_episodes=num_episodes, seed=seed, progress=progress)
    if algorithm_name is None and isinstance(policy, str):
        algorithm_name = policy
    return write_episodes(
        dataset_id,
        episodes,
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_spec=env.spec,
        algorithm_name=algorithm_name,
        overwrite=overwrite,
        **metadata,
    )
