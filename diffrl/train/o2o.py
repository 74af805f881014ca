"""The offline-to-online loop shared by Cal-QL, IQL and their EDIS variants.

CORL's fine-tuning protocol (``algorithms/finetune/{cal_ql,iql}.py``), written once:

1. offline phase: ``offline.steps`` updates on batches of the offline dataset;
2. the switch: hooks run once (Cal-QL turns calibration off and sets ``cql_alpha_online``);
3. online phase: a TorchRL ``Collector`` steps the env with the stochastic policy, ``frames_per_batch`` env steps at a
   time; every fresh transition goes to an online replay buffer with ``mc_return = 0`` (its return-to-go is unknown),
   and ``utd_ratio`` updates per env step follow, each on a batch that a :class:`BatchMixer` draws from the offline
   and online buffers in fixed proportions (``mixing_ratio`` offline, CORL's Cal-QL: 0.5) or uniformly from their
   union (``mixing_ratio: null``, CORL's IQL, whose single buffer starts with the dataset);
4. evaluation every ``eval.every`` global steps (offline updates, then env steps), at the end of the offline phase and
   at the end, into one CSV per metric; checkpoints at every evaluation, resumable in either phase.

The recipe supplies the update, ``update(batch) -> metrics``: losses, optimizers and target updates are its own
(:func:`summed_loss_update` is the usual one), so one loop serves every algorithm. EDIS plugs in through
:class:`O2OHook`: ``on_switch`` runs when the online phase begins, ``on_interval`` every ``every`` online env steps,
and both can change what online batches are drawn from through ``loop.mixer`` (add a synthetic buffer, change the
fractions, set a batch transform).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase

from diffrl.envs import make_env
from diffrl.train.checkpoint import without_contents
from diffrl.train.collectors import EpisodeTracker
from diffrl.train.evaluation import evaluate
from diffrl.train.progress import Timer, format_summary, make_progress
from diffrl.train.replay import BatchMixer, StoredItems, make_online_buffer
from diffrl.train.seeding import seed_env

__all__ = ["O2OHook", "O2OSettings", "OfflineToOnline", "o2o_envs", "summed_loss_update"]

_LOOP_STATE = "o2o_loop"  # checkpoint name of the loop's counters


@dataclass
class O2OHook:
    """Code run by :class:`OfflineToOnline` at the phase switch and periodically during the online phase.

    Args:
        on_switch: ``fn(loop)``, called when the online phase begins - also when a run resumes in the online phase,
            so that switches kept outside state dicts (e.g. ``CalQLLoss.calibration``) are re-applied: make it
            idempotent.
        on_interval: ``fn(loop)``, called after every ``every`` online env steps (e.g. EDIS retrains its generator).
            Whatever it changes that must survive a resume goes into the loop's ``checkpoint`` objects.
        every: online env steps between ``on_interval`` calls (0: never).

    Example:
        >>> O2OHook(on_switch=lambda loop: None).every
        0
    """

    on_switch: Callable[[OfflineToOnline], None] | None = None
    on_interval: Callable[[OfflineToOnline], None] | None = None
    every: int = 0


@dataclass
class O2OSettings:
    """The numbers that drive :class:`OfflineToOnline` (read from a recipe config by :meth:`from_config`).

    Args:
        offline_steps: offline updates (``offline.steps``).
        online_steps: online env steps (``online.steps``).
        batch_size: transitions per update (``data.batch_size``).
        mixing_ratio: offline share of every online batch (``online.mixing_ratio``); ``None`` draws uniformly from
            offline + online data. Default 0.5 (CORL's Cal-QL).
        utd_ratio: updates per online env step (``online.utd_ratio``; fractions accumulate). Default 1.
        frames_per_batch: env steps the collector takes between rounds of updates (``online.frames_per_batch``).
        buffer_size: online buffer capacity (``online.buffer_size``); ``None`` keeps every online transition.
        eval_every, eval_episodes: evaluation period in global steps and episodes per evaluation (``eval.every``,
            ``eval.episodes``); ``eval_every`` 0 evaluates only at the end of each phase.
        eval_exploration: ``"deterministic"`` (the Gaussian mode, CORL) or ``"random"`` (``eval.exploration``).
        log_every: global steps between logged training metrics (``logger.log_every``). Default 100.
        checkpoint_every: global steps between checkpoints (``logger.checkpoint_every``); ``None``: at every
            evaluation. Checkpoints are also written at the end of each phase.

    Example:
        >>> cfg = {"offline": {"steps": 10}, "online": {"steps": 5, "mixing_ratio": None}, "data": {"batch_size": 4},
        ...        "eval": {"every": 5, "episodes": 1}}
        >>> s = O2OSettings.from_config(cfg)
        >>> s.total_steps, s.mixing_ratio, s.buffer_size
        (15, None, 5)
    """

    offline_steps: int
    online_steps: int
    batch_size: int
    mixing_ratio: float | None = 0.5
    utd_ratio: float = 1.0
    frames_per_batch: int = 1
    buffer_size: int | None = None
    eval_every: int = 1000
    eval_episodes: int = 10
    eval_exploration: str = "deterministic"
    log_every: int = 100
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        for name in ("offline_steps", "online_steps", "eval_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "frames_per_batch", "eval_episodes", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.mixing_ratio is not None and not 0.0 <= float(self.mixing_ratio) <= 1.0:
            raise ValueError(
                f"mixing_ratio must be in [0, 1] or null (uniform over offline + online data), got {self.mixing_ratio}"
            )
        if float(self.utd_ratio) <= 0:
            raise ValueError(f"utd_ratio (updates per env step) must be > 0, got {self.utd_ratio}")
        if self.buffer_size is None:
            self.buffer_size = max(int(self.online_steps), 1)
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(
                f"checkpoint_every must be a positive integer or null (at every evaluation), "
                f"got {self.checkpoint_every}"
            )

    @property
    def total_steps(self) -> int:
        """Offline updates plus online env steps: the global step at the end of the run."""
        return int(self.offline_steps) + int(self.online_steps)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> O2OSettings:
        """Read ``offline.steps``, ``online.*``, ``data.batch_size``, ``eval.*`` and ``logger.log_every``."""
        online, evaluation = cfg["online"], cfg.get("eval", {})
        logger = cfg.get("logger", {}) or {}
        return cls(
            offline_steps=int(cfg["offline"]["steps"]),
            online_steps=int(online["steps"]),
            batch_size=int(cfg["data"]["batch_size"]),
            mixing_ratio=online.get("mixing_ratio", 0.5),
            utd_ratio=float(online.get("utd_ratio", 1.0)),
            frames_per_batch=int(online.get("frames_per_batch", 1)),
            buffer_size=online.get("buffer_size"),
            eval_every=int(evaluation.get("every", 1000)),
            eval_episodes=int(evaluation.get("episodes", 10)),
            eval_exploration=str(evaluation.get("exploration", "deterministic")),
            log_every=int(logger.get("log_every", 100)),
            checkpoint_every=logger.get("checkpoint_every"),
        )


class OfflineToOnline:
    """Offline pre-training, the switch, then online fine-tuning with a TorchRL ``Collector`` (module docstring).

    Args:
        cfg: an :class:`O2OSettings`, or a recipe config read with :meth:`O2OSettings.from_config`.
        update: ``update(batch) -> metrics``: one gradient update of the recipe's algorithm (loss, backward,
            optimizer steps, ``updater.step()``); ``metrics`` is a mapping or TensorDict of scalars, logged as
            ``train/<name>``.
        offline_rb: the offline dataset as a replay buffer (``diffrl.data.load_dataset``); its reference scores, when
            it has them, turn returns into ``eval/normalized_score``.
        env: the training env, or a zero-argument factory (``diffrl.envs.make_env`` with the dataset's env id and
            reward transform, so online rewards are in the units of the offline ones).
        policy: the actor; the collector samples it (exploration RANDOM), evaluation uses ``eval.exploration``.
        run: a :class:`~diffrl.train.Run` (``start_run(cfg)``): logger, checkpoints, ``resume=``.
        eval_env: env (or factory) for evaluation, with raw rewards so returns are comparable to the reference
            scores; ``None`` skips evaluation.
        checkpoint: the recipe's stateful objects by name (loss, optimizers, updater, hook state...), saved with the
            loop's own (online buffer, offline sampler state, mixer, envs' generators, counters) at every evaluation.
        hooks: :class:`O2OHook` objects.
        name: printed in the summary line.
        progress_keys: metrics shown on the progress bar.

    Attributes:
        step: the global step (offline updates, then offline steps + online env steps). ``phase``: "offline" or
        "online". ``updates``: gradient updates so far. ``online_rb``: online transitions (``mc_return`` 0).
        ``mixer``: the :class:`BatchMixer` online batches come from (sources "offline" and "online").
        ``phase_scores``: the evaluation metrics at the end of each phase.

    Example (a few seconds: skipped in doctests; see ``recipes/calql.py`` for a full recipe):
        >>> loop = OfflineToOnline(cfg, update=update, offline_rb=rb, env=lambda: make_env(from_dataset=rb),
        ...                        policy=actor, run=start_run(cfg), eval_env=lambda: make_env(
        ...                        from_dataset=rb, transform_reward=False), checkpoint={"loss": loss},
        ...                        hooks=[O2OHook(on_switch=lambda loop: loss.switch_to_online(1.0))])  # doctest: +SKIP
        >>> result = loop.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: O2OSettings | Mapping[str, Any],
        *,
        update: Callable[[TensorDictBase], Any],
        offline_rb: Any,
        env: Any,
        policy: Callable,
        run: Any,
        eval_env: Any = None,
        checkpoint: Mapping[str, Any] | None = None,
        hooks: Iterable[O2OHook] = (),
        name: str = "o2o",
        progress_keys: Iterable[str] | None = ("train/loss_qvalue", "eval/normalized_score"),
    ) -> None:
        self.settings = cfg if isinstance(cfg, O2OSettings) else O2OSettings.from_config(cfg)
        self.update = update
        self.offline_rb = offline_rb
        self.env = _make(env)
        self.eval_env = _make(eval_env) if eval_env is not None else None
        self.policy = policy
        self.record = run
        self.name = name
        self.progress_keys = list(progress_keys) if progress_keys is not None else None
        self.hooks = list(hooks)
        self.checkpoint_objects = dict(checkpoint or {})
        clash = sorted(k for k in self.checkpoint_objects if k.startswith("o2o_"))
        if clash:
            raise ValueError(f"checkpoint names {clash} are reserved for the loop (prefix 'o2o_'); rename them")
        self._offline_keys = list(offline_rb.storage[0:1].keys(True, True))
        device = offline_rb.storage[0:1].device or "cpu"
        self.online_rb = make_online_buffer(self.settings.buffer_size, device)
        ratio = self.settings.mixing_ratio
        fractions = None if ratio is None else {"offline": float(ratio), "online": 1.0 - float(ratio)}
        self.mixer = BatchMixer(
            {"offline": offline_rb, "online": self.online_rb}, fractions, batch_size=self.settings.batch_size
        )
        self.step, self.updates, self.phase = 0, 0, "offline"
        self.phase_scores: dict[str, dict[str, float]] = {}
        self._credit = 0.0  # fractional updates owed (utd_ratio < 1 or non-integer)
        self._tracker = EpisodeTracker(reward_key=None)  # reward key chosen on the first batch
        self._metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        """Run (or resume) both phases; returns ``{"offline": {...}, "online": {...}, "steps", "updates",
        "seconds"}`` with the end-of-phase evaluation metrics."""
        timer = Timer()
        s = self.settings
        self._resume()
        start = self.step
        if self.step < s.offline_steps:
            self._offline_phase()
        if s.online_steps > 0 and self.step < s.total_steps:
            self._online_phase()
        seconds = timer.elapsed
        line = format_summary(self.name, self.step - start, seconds, self.record.logger.last)
        offline_score = self.phase_scores.get("offline", {}).get("eval/normalized_score")
        if offline_score is not None and "online" in self.phase_scores:
            line += (
                f" | normalized score offline {offline_score:.1f} -> online "
                f"{self.phase_scores['online']['eval/normalized_score']:.1f}"
            )
        print(line, flush=True)
        return {**self.phase_scores, "steps": self.step, "updates": self.updates, "seconds": seconds}

    def evaluate(self) -> dict[str, float]:
        """Evaluate the policy now and log the result at the current global step."""
        if self.eval_env is None:
            return {}
        rb = self.offline_rb
        refs = {}
        if getattr(rb, "has_reference_scores", False):
            refs = {"ref_min_score": rb.ref_min_score, "ref_max_score": rb.ref_max_score}
        out = evaluate(
            self.eval_env, self.policy, self.settings.eval_episodes, exploration=self.settings.eval_exploration, **refs
        )
        self.record.log(out, self.step)
        self._metrics.update(out)
        return out

    def save(self) -> None:
        """Write a checkpoint at the current global step (the recipe's objects plus the loop's)."""
        state = {
            "phase": self.phase,
            "step": self.step,
            "updates": self.updates,
            "credit": self._credit,
            "phase_scores": self.phase_scores,
            "episodes": self._tracker.episodes,
        }
        self.record.save(self.step, **self._stateful(), **{_LOOP_STATE: state})

    # ------------------------------------------------------------------------------------------------------ phases
    def _offline_phase(self) -> None:
        s = self.settings
        bar = make_progress(s.offline_steps, "offline", initial=self.step, keys=self.progress_keys)
        while self.step < s.offline_steps:
            metrics = self.update(self.offline_rb.sample(s.batch_size))
            self.updates += 1
            self._advance(1, metrics, bar)
        bar.close()
        self._end_phase("offline")

    def _online_phase(self) -> None:
        from torchrl.collectors import Collector
        from torchrl.envs.utils import ExplorationType

        s = self.settings
        self.phase = "online"
        for hook in self.hooks:
            if hook.on_switch is not None:
                hook.on_switch(self)
        collector = Collector(
            self.env,
            self.policy,
            frames_per_batch=s.frames_per_batch,
            total_frames=-1,
            exploration_type=ExplorationType.RANDOM,
            auto_register_policy_transforms=False,
        )
        bar = make_progress(s.online_steps, "online", initial=self.step - s.offline_steps, keys=self.progress_keys)
        try:
            for data in collector:
                data = data.reshape(-1)
                self._store(data)
                self._credit += data.numel() * s.utd_ratio
                metrics = None
                while self._credit >= 1.0:
                    metrics = self.update(self.mixer.sample())
                    self.updates += 1
                    self._credit -= 1.0
                before = self.step - s.offline_steps
                self._advance(data.numel(), metrics, bar, online=data)
                for hook in self.hooks:
                    if hook.on_interval is not None and _crossed(before, self.step - s.offline_steps, hook.every):
                        hook.on_interval(self)
                if self.step >= s.total_steps:
                    break
        finally:
            collector.shutdown()
            bar.close()
        self._end_phase("online")

    def _advance(self, n: int, metrics: Any, bar: Any, online: TensorDictBase | None = None) -> None:
        s = self.settings
        before, self.step = self.step, self.step + n
        if online is not None:
            self._track_episodes(online)
        if metrics is not None:
            self._metrics.update({f"train/{key}": value for key, value in metrics.items()})
            if _crossed(before, self.step, s.log_every):
                logged = {k: v for k, v in self._metrics.items() if k.startswith("train/")}
                self.record.log({**logged, "train/updates": self.updates}, self.step)
        bar.update(n, self._metrics)
        if self.step in (s.offline_steps, s.total_steps) or self.step > s.total_steps:
            return  # the end of the phase evaluates and saves
        due_eval = _crossed(before, self.step, s.eval_every)
        if due_eval:
            self.evaluate()
        due_save = _crossed(before, self.step, s.checkpoint_every) if s.checkpoint_every else due_eval
        if due_save:
            self.save()

    def _end_phase(self, phase: str) -> None:
        self.phase_scores[phase] = self.evaluate()
        self.save()

    # ------------------------------------------------------------------------------------------------------ helpers
    def _store(self, data: TensorDictBase) -> None:
        """Keep the offline dataset's keys of fresh transitions; their return-to-go is unknown: mc_return = 0."""
        keys = [key for key in self._offline_keys if key in data.keys(True, True)]
        transitions = data.select(*keys)
        if "mc_return" in self._offline_keys:
            transitions.set("mc_return", torch.zeros_like(data.get(("next", "reward")), dtype=torch.float32))
        self.online_rb.extend(transitions.to(self.online_rb.storage.device or transitions.device))

    def _track_episodes(self, data: TensorDictBase) -> None:
        """Log the return of every training episode that ends in ``data`` (raw rewards when the env keeps them)."""
        if self._tracker.reward_key is None:
            raw = ("next", "raw_reward") in data.keys(True, True)
            self._tracker.reward_key = ("next", "raw_reward") if raw else ("next", "reward")
        for episode_return, _ in self._tracker.update(data):
            episode = {"train/episode_return": episode_return, "train/episodes": self._tracker.episodes}
            if getattr(self.offline_rb, "has_reference_scores", False):
                episode["train/normalized_return"] = float(self.offline_rb.normalized_score(episode_return))
            self.record.log(episode, self.step)

    def _stateful(self) -> dict[str, Any]:
        objects = dict(self.checkpoint_objects)
        objects.update(o2o_online_rb=StoredItems(self.online_rb), o2o_mixer=self.mixer, o2o_env=self.env)
        if callable(getattr(self.offline_rb, "state_dict", None)):
            objects["o2o_offline_rb"] = without_contents(self.offline_rb)
        if self.eval_env is not None:
            objects["o2o_eval_env"] = self.eval_env
        return objects

    def _resume(self) -> None:
        if not self.record.resume(**self._stateful()):
            return
        state = self.record.resumed[_LOOP_STATE]
        self.phase, self.step, self.updates = state["phase"], int(state["step"]), int(state["updates"])
        self._credit = float(state["credit"])
        self._tracker.load_state_dict({"episodes": state["episodes"]})
        self.phase_scores = dict(state["phase_scores"])


def o2o_envs(
    name: str | None, dataset: Any, *, device: Any = None, max_episode_steps: int | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """The training and evaluation envs of an offline-to-online recipe, built from the dataset and seeded.

    Training env: the dataset's observation normalisation and reward transform, so fresh transitions are in the
    units the critic learned, plus the raw reward in ("next", "raw_reward") so training-episode returns are logged
    in the reference scores' units. Evaluation env: the same observations, raw rewards. Seeds ``seed`` and the next
    one (``seed_env``'s convention), so the two envs draw different streams.

    Args:
        name: the gymnasium env id, or None for the env the dataset was collected in.
        dataset: an ``OfflineReplayBuffer`` (``load_dataset``), or None for plain envs.
        device: where the envs put their tensors.
        max_episode_steps: episode limit (None: the env's own).
        seed: the training env's seed.

    Example:
        >>> env, eval_env = o2o_envs("Pendulum-v1", None, max_episode_steps=3, seed=0)
        >>> [("next", "raw_reward") in e.rollout(3).keys(True) for e in (env, eval_env)]
        [True, False]
    """
    options = {"from_dataset": dataset, "device": device, "max_episode_steps": max_episode_steps}
    env = make_env(name, keep_raw_reward=True, **options)
    eval_env = make_env(name, transform_reward=False, **options)
    seed_env(eval_env, seed_env(env, seed))
    return env, eval_env


def summed_loss_update(
    loss: Callable[[TensorDictBase], TensorDictBase], optimizers: Iterable[torch.optim.Optimizer], updater: Any
) -> Callable[[TensorDictBase], TensorDictBase]:
    """``update(batch) -> metrics`` for :class:`OfflineToOnline`: one backward of the summed ``loss_*`` entries.

    Every optimizer zeroes its gradients, the ``loss_*`` entries of ``loss(batch)`` are summed and backpropagated once
    (diffrl's and TorchRL's losses route each term only to the parameters it trains), every optimizer steps, then
    ``updater.step()`` moves the target networks. Returns the loss output, detached, as the loop's metrics.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> weight = torch.nn.Parameter(torch.ones(1))
        >>> loss = lambda batch: TensorDict({"loss_x": (weight * batch["x"]).sum(), "mean_x": batch["x"].mean()})
        >>> class NoTargets:
        ...     def step(self):
        ...         pass
        >>> update = summed_loss_update(loss, [torch.optim.SGD([weight], lr=0.5)], NoTargets())
        >>> out = update(TensorDict({"x": torch.ones(2)}, batch_size=[2]))
        >>> float(weight), float(out["loss_x"]), out["loss_x"].requires_grad
        (0.0, 2.0, False)
    """
    optimizers = list(optimizers)

    def update(batch: TensorDictBase) -> TensorDictBase:
        out = loss(batch)
        for optimizer in optimizers:
            optimizer.zero_grad()
        sum(value for key, value in out.items() if key.startswith("loss_")).backward()
        for optimizer in optimizers:
            optimizer.step()
        updater.step()
        return out.detach()

    return update


def _crossed(before: int, after: int, every: int | None) -> bool:
    """True when a multiple of ``every`` lies in ``(before, after]``."""
    return bool(every) and every > 0 and after // every > before // every


def _make(env: Any) -> Any:
    from torchrl.envs import EnvBase

    return env if isinstance(env, EnvBase) or not callable(env) else env()
