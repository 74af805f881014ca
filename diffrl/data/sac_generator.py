"""D4RL-style ``medium`` and ``medium-replay`` datasets for any gymnasium env, made by training TorchRL's SAC.

D4RL made its MuJoCo ``medium`` data by rolling out a SAC policy stopped early, at about a third of expert return,
and ``medium-replay`` from that SAC run's replay buffer. :func:`build_sac_datasets` does the same on this machine, in
one training run:

* SAC as usually tuned for MuJoCo: TorchRL's ``SACLoss`` (twin Q, no state-value net, automatic entropy tuning with
  target ``-dim(A)``) with an L2 critic loss, three Adam optimizers (actor 3e-4, critics and temperature 1e-3),
  ``SoftUpdate`` with tau 0.005, gamma 0.99, 256x256 ReLU networks, batch 256, 5k uniform-random warm-up steps, then
  one gradient step per environment step; batches uniform over every transition so far (the buffer never overflows).
  The actor is a tanh-Gaussian whose log-std is ``tanh``-squashed into [-5, 2], so a fresh actor's pre-tanh std is
  about 0.22 (TorchRL's default softplus scale starts near 1, which keeps early Hopper policies falling over).
* Every ``eval_every`` steps the policy is evaluated (``eval_episodes`` stochastic episodes, the way the ``medium``
  data is collected, plus as many deterministic ones). Training stops at the first evaluation whose normalised
  stochastic AND deterministic returns both lie inside ``stop_band`` (default 35-60, inside D4RL's "medium" range
  30-60; see :func:`build_sac_datasets` for why 35), or at the ``train_steps`` cap; at the cap the evaluated
  snapshot closest to the band is used and the replay is cut there.
* ``<namespace>/medium-replay-v<version>``: every transition of the run up to the stopping step, warm-up included, in
  episode order (the episode running at the stop is cut and marked truncated);
* ``<namespace>/medium-v<version>``: ``medium_steps`` transitions of the stopped policy, sampled stochastically.

The whole build is deterministic given ``seed`` (torch, the env resets, warm-up actions and minibatches are seeded;
evaluations draw from their own seeded random stream, so evaluating more or less often does not change training).

CPU cost, measured on this project's machine (one torch thread, ``time.process_time``): one SAC update costs
21-25 ms and one policy step about 0.5 ms, so each 5k-step stretch of training costs about 2 CPU-minutes and the
100k-step ``medium`` rollout about 1. Hopper-v5 (seed 0) sits on a stand-still plateau at 30k steps (10 CPU-minutes,
normalised 32) and was still below 35 at 55k steps (20 CPU-minutes); CleanRL's published SAC curve reaches return
~1000 (normalised ~31) near 65k. ``benchmarks/results/sac_datasets/README.md`` has the measured curves and build times.
Knobs a user can lower: ``train_steps`` (the cap, default 300k = up to about 2 CPU-hours; a policy stopped by
the cap before reaching the band is weaker than "medium"), ``stop_band`` (``(30, 60)`` accepts Hopper's stand-still
policy after 10 CPU-minutes), ``medium_steps`` (size of the ``medium`` data, about 0.5 ms per
step) and ``eval_episodes`` / ``eval_every``. Pass ``stop_band=None`` to train exactly ``train_steps`` steps.
Reference scores: D4RL's MuJoCo constants for hopper, halfcheetah and walker2d (random and expert returns), so
normalised scores read like D4RL's; other envs get none unless passed (and then train to the cap).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from minari.data_collector.episode_buffer import EpisodeBuffer

from diffrl.data.paths import dataset_dir
from diffrl.data.writing import as_numpy_policy, rollout_episodes, write_episodes

__all__ = ["build_sac_datasets", "D4RL_REFERENCE_SCORES", "band_stop_rule", "complete_episode_returns", "make_sac"]

# D4RL's (random, expert) reference returns for the MuJoCo locomotion tasks.
D4RL_REFERENCE_SCORES = {
    "Hopper": (-20.272305, 3234.3),
    "HalfCheetah": (-280.178953, 12135.0),
    "Walker2d": (1.629008, 4592.3),
}

_LOG_STD_MIN, _LOG_STD_MAX = -5.0, 2.0


class _BoundedScale(torch.nn.Module):
    """Split ``[loc, raw]`` and map ``raw`` to a std whose log lies in [-5, 2] (std exp(-1.5) ~ 0.22 at raw = 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = x.chunk(2, -1)
        log_std = _LOG_STD_MIN + 0.5 * (_LOG_STD_MAX - _LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return loc, log_std.exp()


def make_sac(
    env: gym.Env,
    hidden_sizes: tuple[int, ...] = (256, 256),
    *,
    actor_lr: float = 3e-4,
    critic_lr: float = 1e-3,
    alpha_lr: float = 1e-3,
    gamma: float = 0.99,
    tau: float = 0.005,
) -> tuple[Any, Any, Any, dict[str, torch.optim.Optimizer]]:
    """Build the generator's SAC: ``(actor, loss, target updater, {"actor", "critic", "alpha"} optimizers)``.

    Example:
        >>> actor, loss, updater, optimizers = make_sac(gym.make("Pendulum-v1"), (8,))
        >>> loss.loss_function, sorted(optimizers), optimizers["critic"].param_groups[0]["lr"]
        ('l2', ['actor', 'alpha', 'critic'], 0.001)
    """
    from tensordict.nn import TensorDictModule
    from torchrl.data import Bounded
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import SACLoss, SoftUpdate

    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
    high = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    cells = list(hidden_sizes)
    actor_net = torch.nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * act_dim, num_cells=cells, activation_class=torch.nn.ReLU),
        _BoundedScale(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
    )
    qvalue = ValueOperator(
        MLP(in_features=obs_dim + act_dim, out_features=1, num_cells=cells, activation_class=torch.nn.ReLU),
        in_keys=["observation", "action"],
    )
    # L2 critic loss (SACLoss defaults to smooth L1); target entropy "auto" = -dim(A)
    loss = SACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        loss_function="l2",
        target_entropy="auto",
        action_spec=Bounded(low=low, high=high, shape=(act_dim,)),
    )
    loss.make_value_estimator(gamma=gamma)
    optimizers = {
        "actor": torch.optim.Adam(list(loss.actor_network_params.flatten_keys().values()), lr=actor_lr),
        "critic": torch.optim.Adam(list(loss.qvalue_network_params.flatten_keys().values()), lr=critic_lr),
        "alpha": torch.optim.Adam([loss.log_alpha], lr=alpha_lr),
    }
    return actor, loss, SoftUpdate(loss, tau=tau), optimizers


def band_stop_rule(
    band: tuple[float, float] | None, ref_min: float | None, ref_max: float | None
) -> Callable[[float], tuple[bool, float]]:
    """Stopping rule: ``rule(mean_return) -> (stop, distance)``; stop once the normalised return lies in ``band``.

    Scores are D4RL-normalised, ``100 * (R - ref_min) / (ref_max - ref_min)``; ``distance`` is how far outside the band
    the score is (0 inside; used to pick the closest snapshot when the step cap is reached first). Without a band or
    reference scores the rule never stops (distance 0).

    Example:
        >>> rule = band_stop_rule((30.0, 60.0), 0.0, 1000.0)
        >>> rule(250.0), rule(450.0), rule(700.0)
        ((False, 5.0), (True, 0.0), (False, 10.0))
    """
    if band is not None and not band[0] < band[1]:
        raise ValueError(f"stop_band must be (low, high) with low < high, got {band}; e.g. (30.0, 60.0).")
    if band is None or ref_min is None or ref_max is None:
        return lambda mean_return: (False, 0.0)
    lo, hi = band

    def rule(mean_return: float) -> tuple[bool, float]:
        score = 100.0 * (mean_return - ref_min) / (ref_max - ref_min)
        distance = max(lo - score, score - hi, 0.0)
        return distance == 0.0, distance

    return rule


def build_sac_datasets(
    env_id: str,
    namespace: str,
    *,
    version: int = 0,
    train_steps: int = 300_000,
    warmup_steps: int = 5_000,
    medium_steps: int = 100_000,
    stop_band: tuple[float, float] | None = (35.0, 60.0),
    eval_every: int = 5_000,
    eval_episodes: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_threads: int | None = 1,
    on_evaluation: Callable[[dict], None] | None = None,
    **sac_options: Any,
) -> dict[str, Any]:
    """Train TorchRL's SAC on ``env_id`` until it is "medium"; write ``<namespace>/medium-v<version>`` and ``-replay``.

    Datasets that already exist are kept (unless ``overwrite``); if both exist, nothing is trained.

    Args:
        env_id: gymnasium id of a continuous-action env (Box observations).
        namespace: dataset namespace, e.g. ``"diffrl/hopper"``.
        version: dataset version suffix. Default 0.
        train_steps: cap on SAC environment steps (one update per step after warm-up). Default 300k.
        warmup_steps: uniform-random steps before learning starts. Default 5k.
        medium_steps: transitions of the stopped policy's rollouts in the ``medium`` dataset. Default 100k.
        stop_band: normalised-score band (D4RL units, 0 = random, 100 = expert) that stops training at the first
            evaluation whose stochastic and deterministic means are both inside it. Default (35, 60): inside D4RL's
            medium range 30-60 with a margin for the difference between a 5-episode evaluation and the 100k-step
            dataset, and above Hopper's "stand still" plateau (1000 steps of alive bonus, return about 1030 =
            normalised 32, which a 30-60 band accepts).
            ``None``: train exactly ``train_steps`` steps.
        eval_every, eval_episodes: evaluation period (env steps) and episodes per evaluation mode. Default 5k, 5.
        batch_size: SAC minibatch size. Default 256.
        seed: seeds torch, the env resets, the warm-up actions, the minibatches and the evaluations.
        ref_min_score, ref_max_score: reference returns; default D4RL's for Hopper / HalfCheetah / Walker2d.
        overwrite: rebuild datasets that exist. progress: show a progress bar.
        num_threads: torch intra-op threads while training (restored afterwards). Default 1: 256-wide MLPs at batch
            256 run fastest single-threaded, and several times faster than with 2 threads on a busy 2-core machine.
        on_evaluation: called with each evaluation record (``step``, ``return_stochastic``, ``return_deterministic``,
            their normalised scores when references exist, ``cpu_seconds``).
        **sac_options: :func:`make_sac`'s settings, passed on: ``hidden_sizes``, ``actor_lr``, ``critic_lr``,
            ``alpha_lr``, ``gamma``, ``tau`` (defaults (256, 256), 3e-4, 1e-3, 1e-3, 0.99, 0.005). Any other keyword is
            a ``TypeError``, raised before anything is built.

    Returns:
        ``{"medium": MinariDataset, "medium-replay": MinariDataset}``; both datasets' metadata hold the evaluations
        (``sac_evaluations``, JSON), the stopping step (``sac_train_steps``) and the training CPU time.

    Example (a few seconds; real budgets are in the module docstring):
        >>> import tempfile
        >>> from diffrl.data.paths import datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     out = build_sac_datasets("Pendulum-v1", "demo/pendulum-sac", train_steps=40, warmup_steps=30,
        ...                              medium_steps=20, batch_size=8, hidden_sizes=(8,), progress=False)
        >>> out["medium-replay"].total_steps, out["medium"].total_steps
        (40, 20)
    """
    import minari

    try:  # a misspelt setting fails now, not after the warm-up
        inspect.signature(make_sac).bind(None, **sac_options)
    except TypeError as err:
        raise TypeError(
            f"build_sac_datasets: {err} (received {sorted(sac_options)}); besides its own keywords it accepts "
            f"make_sac's settings {list(inspect.signature(make_sac).parameters)[1:]}. Fix or drop the name."
        ) from None
    ids = {kind: f"{namespace}/{kind}-v{version}" for kind in ("medium", "medium-replay")}
    existing = {kind: (dataset_dir(i) / "data").is_dir() and not overwrite for kind, i in ids.items()}
    if all(existing.values()):
        return {kind: minari.MinariDataset(dataset_dir(i) / "data") for kind, i in ids.items()}
    if warmup_steps >= train_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than train_steps ({train_steps}).")
    if ref_min_score is None and ref_max_score is None:
        ref_min_score, ref_max_score = D4RL_REFERENCE_SCORES.get(env_id.split("-v")[0], (None, None))
    rule = band_stop_rule(stop_band, ref_min_score, ref_max_score)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        start = time.process_time()
        env = gym.make(env_id)
        evaluate = _make_evaluator(env_id, eval_episodes, seed, ref_min_score, ref_max_score)
        actor, episodes, history, stop_step = _train_sac(
            env,
            train_steps,
            warmup_steps,
            batch_size,
            sac_options,
            seed,
            progress,
            evaluate,
            rule,
            eval_every,
            on_evaluation,
        )
        train_cpu = time.process_time() - start
        medium = None
        if not existing["medium"]:
            medium = rollout_episodes(env, as_numpy_policy(actor, env), num_steps=medium_steps, seed=seed + 10**6)
    finally:
        torch.set_num_threads(previous_threads)

    common = {
        "observation_space": env.observation_space,
        "action_space": env.action_space,
        "env_spec": env.spec,
        "ref_min_score": ref_min_score,
        "ref_max_score": ref_max_score,
        "extra_metadata": {
            "sac_train_steps": stop_step,
            "sac_step_cap": train_steps,
            "sac_warmup_steps": warmup_steps,
            "sac_seed": seed,
            "sac_stop_band": json.dumps(stop_band),
            "sac_train_cpu_seconds": round(train_cpu, 1),
            "sac_evaluations": json.dumps(history),
        },
        "overwrite": overwrite,
    }
    out = {}
    if not existing["medium-replay"]:
        out["medium-replay"] = write_episodes(
            ids["medium-replay"],
            episodes,
            algorithm_name=f"TorchRL SAC replay buffer ({stop_step} steps, {warmup_steps} random warm-up)",
            description=f"{env_id}: every transition of a SAC run stopped after {stop_step} steps, in episode order.",
            **common,
        )
    if medium is not None:
        mean_return = float(np.mean([np.sum(e.rewards) for e in medium]))
        out["medium"] = write_episodes(
            ids["medium"],
            medium,
            algorithm_name=f"TorchRL SAC policy after {stop_step} steps (stochastic rollouts)",
            description=f"{env_id}: {medium_steps} steps of a partly trained SAC policy (mean return "
            f"{mean_return:.1f}).",
            **common,
        )
    return {kind: out.get(kind) or minari.MinariDataset(dataset_dir(i) / "data") for kind, i in ids.items()}


def complete_episode_returns(dataset: Any, time_limit: int | None = None) -> np.ndarray:
    """Undiscounted returns (float64, in episode order) of a Minari dataset's complete episodes.

    Complete: terminated, or ``time_limit`` steps long. An episode cut short by a step budget (the last one of a
    ``medium`` dataset, marked truncated) is left out, so that statistics of the data describe whole episodes.

    Args:
        dataset: a ``minari.MinariDataset``.
        time_limit: the episode length that counts as complete; default the ``max_episode_steps`` of the env spec the
            dataset records.

    Example:
        >>> import tempfile
        >>> from diffrl.data import make_dataset
        >>> from diffrl.data.paths import datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):  # Pendulum-v1 episodes last 200 steps
        ...     ds = make_dataset("Pendulum-v1", "random", "demo/pendulum/random-v0", num_steps=450)
        ...     lengths = [len(e.rewards) for e in ds.iterate_episodes()]
        ...     returns = complete_episode_returns(ds)
        >>> lengths, returns.shape, bool((returns < 0).all())
        ([200, 200, 50], (2,), True)
    """
    if time_limit is None:
        spec = dataset.env_spec
        time_limit = spec.max_episode_steps if spec is not None else None
        if time_limit is None:
            raise ValueError(
                f"dataset {dataset.id!r} records no time limit (env_spec.max_episode_steps), so "
                "complete episodes cannot be told from cut ones; pass time_limit=<episode length>."
            )
    returns = [
        float(np.sum(ep.rewards))
        for ep in dataset.iterate_episodes()
        if bool(ep.terminations[-1]) or len(ep.rewards) >= time_limit
    ]
    return np.asarray(returns, dtype=np.float64)


def _make_evaluator(env_id, episodes, seed, ref_min, ref_max):
    """``evaluate(actor) -> record``: mean returns of stochastic and deterministic episodes on a separate env.

    Runs in a forked torch RNG seeded from ``seed``, so evaluating never shifts the training run's random stream.
    """
    env = gym.make(env_id)

    def evaluate(actor) -> dict:
        record = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7_919)
            for mode, deterministic in (("stochastic", False), ("deterministic", True)):
                act = as_numpy_policy(actor, env, deterministic=deterministic)
                eps = rollout_episodes(env, act, num_episodes=episodes, seed=seed + 2 * 10**6)
                returns = [float(np.sum(e.rewards)) for e in eps]
                record[f"return_{mode}"] = float(np.mean(returns))
                record[f"return_{mode}_std"] = float(np.std(returns))
                if ref_min is not None and ref_max is not None:
                    record[f"score_{mode}"] = 100.0 * (record[f"return_{mode}"] - ref_min) / (ref_max - ref_min)
        return record

    return evaluate


def _train_sac(
    env, train_steps, warmup_steps, batch_size, sac_options, seed, progress, evaluate, rule, eval_every, on_evaluation
):
    """SAC run with the stopping rule; returns ``(actor, replay episodes, evaluation history, stopping step)``.

    ``evaluate(actor) -> {"return_stochastic": ..., ...}`` runs every ``eval_every`` steps after the warm-up;
    ``rule(mean_return) -> (stop, distance to band)`` decides whether to stop there (see :func:`_both_in_band`).
    """
    from tensordict import TensorDict

    torch.manual_seed(seed)
    actor, loss, updater, optimizers = make_sac(env, **sac_options)
    generator = torch.Generator().manual_seed(seed)
    warmup_act, policy_act = as_numpy_policy("random", env, seed=seed), as_numpy_policy(actor, env)
    space = env.action_space
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(space.shape))
    # the replay buffer: preallocated tensors, filled in step order
    buf = {
        "observation": torch.zeros(train_steps, obs_dim),
        "action": torch.zeros(train_steps, act_dim),
        "next_observation": torch.zeros(train_steps, obs_dim),
        "reward": torch.zeros(train_steps, 1),
        "terminated": torch.zeros(train_steps, 1, dtype=torch.bool),
        "truncated": torch.zeros(train_steps, 1, dtype=torch.bool),
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_steps, unit="step")
    episodes: list[EpisodeBuffer] = []  # finished episodes
    history: list[dict] = []
    snapshots: dict[int, dict] = {}  # step -> actor state at that evaluation (to fall back on at the cap)
    start = time.process_time()
    step, stop_step = 0, None
    current = None
    try:
        while stop_step is None:
            episode_seed = seed + len(episodes)
            obs, _ = env.reset(seed=episode_seed)
            current = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": [], "seed": episode_seed}
            done = False
            while not done:
                raw = warmup_act(obs) if step < warmup_steps else policy_act(obs)
                action = np.minimum(
                    np.maximum(np.asarray(raw, dtype=space.dtype).reshape(space.shape), space.low), space.high
                )
                next_obs, reward, terminated, truncated, _ = env.step(action)
                buf["observation"][step] = torch.as_tensor(obs)
                buf["action"][step] = torch.as_tensor(action)
                buf["next_observation"][step] = torch.as_tensor(next_obs)
                buf["reward"][step] = float(reward)
                buf["terminated"][step] = bool(terminated)
                buf["truncated"][step] = bool(truncated)
                current["obs"].append(next_obs)
                current["act"].append(action)
                current["rew"].append(float(reward))
                current["term"].append(bool(terminated))
                current["trunc"].append(bool(truncated))
                obs, done = next_obs, terminated or truncated
                if step >= warmup_steps:
                    _sac_update(loss, updater, optimizers, buf, step + 1, batch_size, generator, TensorDict)
                step += 1
                if bar is not None:
                    bar.update(1)
                if step > warmup_steps and (step - warmup_steps) % eval_every == 0 or step == train_steps:
                    record = {"step": step, **evaluate(actor), "cpu_seconds": round(time.process_time() - start, 1)}
                    stop, record["band_distance"] = _both_in_band(rule, record)
                    history.append(record)
                    if on_evaluation is not None:
                        on_evaluation(record)
                    snapshots[step] = {k: v.detach().clone() for k, v in actor.state_dict().items()}
                    if stop or step == train_steps:
                        stop_step = step
                        break
                if done:
                    episodes.append(_episode_buffer(len(episodes), current))
                    current = None
    finally:
        if bar is not None:
            bar.close()
    if history and not _both_in_band(rule, history[-1])[0]:
        # cap reached outside the band: fall back on the evaluated policy closest to it, and cut the replay there
        best = min(history, key=lambda r: (r["band_distance"], -r["step"]))
        if best["step"] != stop_step:
            stop_step = best["step"]
            actor.load_state_dict(snapshots[stop_step])
            episodes, current = _cut_episodes(episodes, current, stop_step)
    if current is not None and current["act"]:
        current["trunc"][-1] = not current["term"][-1]  # the run stopped mid-episode: a time-limit-like cut
        episodes.append(_episode_buffer(len(episodes), current))
    return actor, episodes, history, stop_step


def _both_in_band(rule: Callable[[float], tuple[bool, float]], record: dict) -> tuple[bool, float]:
    """Stop only when the stochastic AND the deterministic evaluations are in the band; distance: the larger one.

    Five episodes of a policy still learning can land in the band by luck: Walker2d's stochastic mean read 40.4 at
    60k steps while its deterministic one read 12.7, and the 100k-step ``medium`` rollout of that policy averaged
    22.8. Two independent evaluations agreeing is a cheap guard against stopping on such a draw.
    """
    stop_s, dist_s = rule(record["return_stochastic"])
    stop_d, dist_d = rule(record["return_deterministic"])
    return stop_s and stop_d, max(dist_s, dist_d)


def _sac_update(loss, updater, optimizers, buf, filled, batch_size, generator, TensorDict):
    idx = torch.randint(0, filled, (batch_size,), generator=generator)
    terminated, truncated = buf["terminated"][idx], buf["truncated"][idx]
    batch = TensorDict(
        {
            "observation": buf["observation"][idx],
            "action": buf["action"][idx],
            "next": {
                "observation": buf["next_observation"][idx],
                "reward": buf["reward"][idx],
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
        },
        batch_size=[batch_size],
    )
    losses = loss(batch)
    for opt in optimizers.values():
        opt.zero_grad()
    # the actor loss sees detached critic parameters and the alpha loss a detached log-prob, so one backward pass
    # gives each optimizer exactly its own loss's gradient
    (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
    for opt in optimizers.values():
        opt.step()
    updater.step()


def _episode_buffer(index: int, ep: dict) -> EpisodeBuffer:
    return EpisodeBuffer(
        id=index,
        seed=ep["seed"],
        observations=np.stack(ep["obs"]),
        actions=np.stack(ep["act"]),
        rewards=np.asarray(ep["rew"], dtype=np.float64),
        terminations=np.asarray(ep["term"]),
        truncations=np.asarray(ep["trunc"]),
    )


def _cut_episodes(episodes: list[EpisodeBuffer], current: dict | None, stop_step: int):
    """Keep the first ``stop_step`` transitions: whole episodes, then the cut one as an open ``current`` episode."""
    kept, total = [], 0
    finished = [
        {
            "obs": list(e.observations),
            "act": list(e.actions),
            "rew": list(e.rewards),
            "term": list(e.terminations),
            "trunc": list(e.truncations),
            "seed": e.seed,
        }
        for e in episodes
    ]
    if current is not None:
        finished.append(current)
    for ep in finished:
        n = len(ep["act"])
        if total + n <= stop_step:
            kept.append(ep)
            total += n
            continue
        keep = stop_step - total
        cut = {k: (v[: keep + 1] if k == "obs" else v[:keep]) for k, v in ep.items() if k != "seed"}
        cut["seed"] = ep["seed"]
        done_eps = [_episode_buffer(i, e) for i, e in enumerate(kept)]
        return done_eps, (cut if keep > 0 else None)
    return [_episode_buffer(i, e) for i, e in enumerate(kept)], None
