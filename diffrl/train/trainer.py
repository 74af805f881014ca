"""The one training loop every recipe runs: an optional offline phase, then an optional online phase.

1. offline phase (``offline.steps`` > 0): one update per step on a batch of the offline dataset;
2. the switch: every :class:`Hook`'s ``on_switch`` runs once (Cal-QL turns calibration off, EDIS fits its generator);
3. online phase (``online.steps`` > 0): a TorchRL collector steps the env with the exploration policy,
   ``frames_per_batch`` env steps at a time (the first ``random_steps`` with uniformly random actions); fresh
   transitions go to an online replay buffer (``mc_return = 0`` when the dataset has that key: the return-to-go of an
   unfinished online episode is unknown); after the warm-up, ``utd_ratio`` updates per env step follow, each on a
   batch that a :class:`~diffrl.train.replay.BatchMixer` draws from the offline and online buffers in fixed
   proportions (``mixing_ratio`` offline; CORL's Cal-QL: 0.5), uniformly from their union (``mixing_ratio: null``,
   CORL's IQL) or from the online buffer alone (no dataset: QSM, SAC...);
4. evaluation every ``eval.every`` global steps (offline updates, then env steps), at the end of each phase, logged
   with the run; checkpoints at every evaluation (or every ``logger.checkpoint_every`` steps) and at phase ends.

The recipe supplies ``update(batch) -> metrics`` (losses, optimizers, target updates: see :mod:`diffrl.train.updates`),
so one loop serves every algorithm.

What survives what:

* **SIGINT / SIGTERM**: handled at a safe point (between two updates): a checkpoint at the current step, the resume
  command printed, exit status 130 / 143 (:class:`~diffrl.train.faults.RunInterrupted`).
* **A non-finite loss** (any ``loss_*`` entry or ``*grad_norm`` of the update's metrics): the run stops at that step
  with :class:`~diffrl.train.faults.NonFiniteLossError` naming the term; nothing is saved after it, so the last
  checkpoint is the last good state.
* **Resume** (``resume=RUN_DIR``) continues exactly where the checkpoint was written, in either phase: model,
  optimizer, target and replay states, every generator (global, replay, envs), and the collector's env mid-episode.
  The online env's episode in progress is rebuilt by resetting the env from the generator state it had when that
  episode began and replaying the episode's actions (kept in the checkpoint), which reproduces the simulator state of
  any deterministic env (MuJoCo, classic control). Exceptions, stated in the resume message when they apply: a
  collector with several worker processes or on Ray (each worker starts a fresh episode), and a collected batch in
  which more than one episode began (``frames_per_batch`` longer than an episode).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase

from diffrl.train.checkpoint import without_contents
from diffrl.train.collectors import EpisodeTracker, make_collector
from diffrl.train.evaluation import evaluate
from diffrl.train.faults import NonFiniteLossError, RunInterrupted, check_finite, graceful_signals, raise_if_interrupted
from diffrl.train.progress import Timer, format_summary, make_progress
from diffrl.train.replay import BatchMixer, StoredItems, make_online_buffer
from diffrl.train.seeding import env_rng_state, rng_state, set_env_rng_state, set_rng_state

__all__ = ["Hook", "Trainer", "TrainerSettings"]

_LOOP_STATE = "loop"  # checkpoint name of the loop's counters
_EXPLORATION = ("deterministic", "random", "mode", "mean")


@dataclass
class Hook:
    """Code the :class:`Trainer` runs at the phase switch and periodically during the online phase.

    Args:
        on_switch: ``fn(trainer)``, called when the online phase begins - also when a run resumes in the online
            phase, so that switches kept outside state dicts (e.g. ``CalQLLoss.calibration``) are re-applied: make it
            idempotent.
        on_interval: ``fn(trainer)``, called after every ``every`` online env steps (e.g. EDIS refits its generator).
            Whatever it changes that must survive a resume goes into the trainer's ``checkpoint`` objects.
        every: online env steps between ``on_interval`` calls (0: never).

    Example:
        >>> Hook(on_switch=lambda trainer: None).every
        0
    """

    on_switch: Callable[[Trainer], None] | None = None
    on_interval: Callable[[Trainer], None] | None = None
    every: int = 0


@dataclass
class TrainerSettings:
    """The numbers that drive a :class:`Trainer` (read from a recipe config by :meth:`from_config`).

    Args:
        offline_steps: offline updates (``offline.steps``; 0 or absent: no offline phase).
        online_steps: online env steps (``online.steps``; 0 or absent: no online phase).
        batch_size: transitions per update (``data.batch_size``, else ``online.batch_size``).
        mixing_ratio: offline share of every online batch (``online.mixing_ratio``); ``None`` draws uniformly from
            offline + online data. Default 0.5 (CORL's Cal-QL). Ignored without a dataset.
        utd_ratio: updates per online env step after the warm-up (``online.utd_ratio``; fractions accumulate).
        random_steps: first online env steps with uniformly random actions, and no updates (``online.random_steps``).
        frames_per_batch: env steps the collector takes between rounds of updates (``online.frames_per_batch`` or
            ``collector.frames_per_batch``).
        buffer_size: online buffer capacity (``online.buffer_size``); ``None`` keeps every online transition.
        eval_every, eval_episodes: evaluation period in global steps and episodes per evaluation (``eval.every``,
            ``eval.episodes``); ``eval_every`` 0 evaluates only at the end of each phase.
        eval_exploration: ``"deterministic"`` (e.g. a Gaussian's mode) or ``"random"`` (``eval.exploration``).
        log_every: global steps between logged training metrics (``logger.log_every``). Default 100.
        checkpoint_every: global steps between checkpoints (``logger.checkpoint_every``); ``None``: at every
            evaluation. Checkpoints are also written at the end of each phase.
        collector: the ``collector`` config group (:func:`~diffrl.train.collectors.make_collector`); ``None``: one
            in-process ``Collector``.

    Example:
        >>> cfg = {"offline": {"steps": 10}, "online": {"steps": 5, "mixing_ratio": None}, "data": {"batch_size": 4},
        ...        "eval": {"every": 5, "episodes": 1}}
        >>> s = TrainerSettings.from_config(cfg)
        >>> s.total_steps, s.mixing_ratio, s.buffer_size
        (15, None, 5)
    """

    offline_steps: int = 0
    online_steps: int = 0
    batch_size: int = 256
    mixing_ratio: float | None = 0.5
    utd_ratio: float = 1.0
    random_steps: int = 0
    frames_per_batch: int = 1
    buffer_size: int | None = None
    eval_every: int = 1000
    eval_episodes: int = 10
    eval_exploration: str = "deterministic"
    log_every: int = 100
    checkpoint_every: int | None = None
    collector: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("offline_steps", "online_steps", "eval_every", "random_steps"):
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
        if self.eval_exploration not in _EXPLORATION:
            raise ValueError(f"eval exploration must be one of {_EXPLORATION}, got {self.eval_exploration!r}")
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
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> TrainerSettings:
        """Read the phase groups of a recipe config (see the class docstring for the keys); ``overrides`` win."""
        offline = cfg.get("offline") or {}
        online = cfg.get("online") or {}
        evaluation = cfg.get("eval") or {}
        logger = cfg.get("logger") or {}
        collector = cfg.get("collector")
        data = cfg.get("data") or {}
        frames = online.get("frames_per_batch", (collector or {}).get("frames_per_batch", 1))
        values = {
            "offline_steps": int(offline.get("steps", 0)),
            "online_steps": int(online.get("steps", 0)),
            "batch_size": int(data.get("batch_size", online.get("batch_size", 256))),
            "mixing_ratio": online.get("mixing_ratio", 0.5),
            "utd_ratio": float(online.get("utd_ratio", 1.0)),
            "random_steps": int(online.get("random_steps", 0)),
            "frames_per_batch": int(frames),
            "buffer_size": online.get("buffer_size"),
            "eval_every": int(evaluation.get("every", 1000)),
            "eval_episodes": int(evaluation.get("episodes", 10)),
            "eval_exploration": str(evaluation.get("exploration", "deterministic")),
            "log_every": int(logger.get("log_every", 100)),
            "checkpoint_every": logger.get("checkpoint_every"),
            "collector": collector,
        }
        values.update(overrides)
        return cls(**values)


class Trainer:
    """Offline updates, the switch, then online fine-tuning with a TorchRL collector (see the module docstring).

    Args:
        cfg: a :class:`TrainerSettings`, or a recipe config read with :meth:`TrainerSettings.from_config`.
        update: ``update(batch) -> metrics``: one gradient update (loss, backward, optimizer steps, target updates);
            ``metrics`` is a mapping or TensorDict of scalars, logged as ``train/<name>``.
        run: a :class:`~diffrl.train.run.Run` (``start_run(cfg)``): logger, checkpoints, ``resume=``.
        policy: the actor; evaluated with ``eval.exploration`` unless ``eval_policy`` is given, and used for
            collection (exploration RANDOM) unless ``exploration_policy`` is given.
        offline_rb: the offline dataset as a replay buffer (``diffrl.data.load_dataset``), or ``None`` for a purely
            online run; its reference scores, when it has them, turn returns into ``eval/normalized_score``.
        env: the training env, or a zero-argument factory (picklable for multi-process collectors). Needed when
            ``online_steps`` > 0.
        eval_env: env (or factory) for evaluation, with raw rewards; ``None`` skips evaluation.
        eval_policy: what evaluation runs (default ``policy``), e.g. a Q-selection wrapper of a diffusion actor.
        exploration_policy: what the collector runs (default ``policy``), e.g. the actor plus Gaussian noise.
        checkpoint: the recipe's stateful objects by name (loss, optimizers, updater, hook state...), saved with the
            loop's own (online buffer, offline sampler state, mixer, envs' generators, counters).
        hooks: :class:`Hook` objects.
        name: printed in the summary line.
        progress_keys: metrics shown on the progress bar.
        store_keys: keys of collected transitions to keep in the online buffer (default: the offline dataset's keys,
            or every key without a dataset).
        device: where online transitions are stored (default: the offline data's device, or CPU).

    Attributes:
        step: the global step (offline updates, then offline steps + online env steps). ``phase``: "offline" or
        "online". ``updates``: gradient updates so far. ``online_rb``: online transitions. ``mixer``: the
        :class:`~diffrl.train.replay.BatchMixer` online batches come from (sources "offline" and "online").
        ``phase_scores``: the evaluation metrics at the end of each phase.

    Example (an online-only run: random updates on Pendulum, two short phases' worth of bookkeeping):
        >>> import tempfile, torch
        >>> from omegaconf import OmegaConf
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.collectors import RandomPolicy
        >>> from diffrl.train.run import start_run
        >>> cfg = OmegaConf.create({"online": {"steps": 40, "random_steps": 20, "batch_size": 8},
        ...                         "eval": {"every": 0, "episodes": 1}, "resume": None,
        ...                         "logger": {"dir": tempfile.mkdtemp() + "/run", "backend": "csv", "log_every": 10}})
        >>> env = GymEnv("Pendulum-v1")
        >>> seen = []
        >>> update = lambda batch: seen.append(batch.numel()) or {"loss_x": torch.zeros(())}
        >>> trainer = Trainer(cfg, update=update, run=start_run(cfg), policy=RandomPolicy(env.action_spec), env=env,
        ...                   progress_keys=None, verbose=False)
        >>> out = trainer.run()
        >>> out["steps"], out["updates"], set(seen)
        (40, 20, {8})
    """

    def __init__(
        self,
        cfg: TrainerSettings | Mapping[str, Any],
        *,
        update: Callable[[TensorDictBase], Any],
        run: Any,
        policy: Callable,
        offline_rb: Any = None,
        env: Any = None,
        eval_env: Any = None,
        eval_policy: Callable | None = None,
        exploration_policy: Callable | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        hooks: Iterable[Hook] = (),
        name: str = "train",
        progress_keys: Iterable[str] | None = (
            "train/loss_qvalue",
            "train/loss_actor",
            "eval/return",
            "eval/normalized_score",
        ),
        store_keys: Iterable[Any] | None = None,
        device: Any = None,
        verbose: bool = True,
    ) -> None:
        self.settings = cfg if isinstance(cfg, TrainerSettings) else TrainerSettings.from_config(cfg)
        s = self.settings
        if s.offline_steps > 0 and offline_rb is None:
            raise ValueError(f"offline_steps={s.offline_steps} needs an offline dataset (offline_rb)")
        if s.online_steps > 0 and env is None:
            raise ValueError(f"online_steps={s.online_steps} needs a training env (env)")
        self.update = update
        self.run_record = run
        self.offline_rb = offline_rb
        self._env_factory = env if callable(env) and not _is_env(env) else None
        self.env = None if env is None or self._env_factory is not None else env
        if self.env is None and self._env_factory is not None and not self._multi_process:
            self.env = self._env_factory()  # one in-process env: built once, its generator is checkpointed
        self.eval_env = _make(eval_env) if eval_env is not None else None
        self.policy = policy
        self.eval_policy = eval_policy if eval_policy is not None else policy
        self.exploration_policy = exploration_policy if exploration_policy is not None else policy
        self.name = name
        self.verbose = verbose
        self.progress_keys = list(progress_keys) if progress_keys is not None else None
        self.hooks = list(hooks)
        self.checkpoint_objects = dict(checkpoint or {})
        if _LOOP_STATE in self.checkpoint_objects or any(k.startswith("loop_") for k in self.checkpoint_objects):
            raise ValueError(f"checkpoint names '{_LOOP_STATE}' and 'loop_*' are reserved for the trainer; rename them")

        if offline_rb is not None:
            sample = offline_rb.storage[0:1]
            self._store_keys = list(store_keys) if store_keys is not None else list(sample.keys(True, True))
            device = device if device is not None else (sample.device or "cpu")
        else:
            self._store_keys = list(store_keys) if store_keys is not None else None
            first = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
            device = device if device is not None else (first.device if first is not None else "cpu")
        self.device = torch.device(device)
        # With an env, the online buffer exists even before an online phase is asked for: a resume may add one.
        has_online = s.online_steps > 0 or env is not None
        self.online_rb = make_online_buffer(s.buffer_size, self.device) if has_online else None
        sources = {"offline": offline_rb} if offline_rb is not None else {}
        if self.online_rb is not None:
            sources["online"] = self.online_rb
        fractions = None
        if offline_rb is not None and self.online_rb is not None and s.mixing_ratio is not None:
            fractions = {"offline": float(s.mixing_ratio), "online": 1.0 - float(s.mixing_ratio)}
        self.mixer = BatchMixer(sources, fractions, batch_size=s.batch_size) if self.online_rb is not None else None

        self.step, self.updates, self.phase = 0, 0, "offline" if s.offline_steps > 0 else "online"
        self.phase_scores: dict[str, dict[str, float]] = {}
        self._credit = 0.0  # fractional updates owed (utd_ratio < 1 or non-integer)
        self._tracker = EpisodeTracker(reward_key=None)  # reward key chosen on the first batch
        self._metrics: dict[str, Any] = {}
        # The online env's episode in progress, for an exact resume: the env generator's state before the episode's
        # reset, and its actions so far. ``None`` when it cannot be known (several episodes began in one batch).
        self._episode_rng: Any = None
        self._rng_since_reset: Any = None  # the env generator's state since its latest reset (read only at resets)
        self._episode_actions: list[torch.Tensor] = []
        self._episode_exact = True
        self._resumed_episode: dict[str, Any] | None = None
        self._saved_at: int | None = None
        self._cpu_seconds, self._cpu_mark = 0.0, time.process_time()  # CPU time of earlier sessions of this run
        self._cpu_logged_at: int | None = None  # the step train/cpu_seconds was last logged at (by an evaluation)

    # ------------------------------------------------------------------------------------------------------ driver
    @property
    def record(self) -> Any:
        """The :class:`~diffrl.train.run.Run` (logger and checkpoints) this trainer writes to."""
        return self.run_record

    def run(self) -> dict[str, Any]:
        """Run (or resume) both phases; returns ``{"offline": {...}, "online": {...}, "steps", "updates",
        "seconds"}`` with the end-of-phase evaluation metrics."""
        timer = Timer()
        s = self.settings
        with graceful_signals():
            self._resume()
            start = self.step
            try:
                if self.step < s.offline_steps:
                    self._offline_phase()
                if s.online_steps > 0 and self.step < s.total_steps:
                    self._online_phase()
            except NonFiniteLossError as err:
                latest = self.record.checkpointer.latest()
                err.args = (
                    f"{err.args[0]}; nothing was saved after it, the last good checkpoint is "
                    f"{latest if latest is not None else '(none yet)'}",
                )
                raise
            except RunInterrupted as err:
                path = self._save_now()
                err.message = (
                    f"interrupted by {err.signal_name} at step {self.step}; checkpoint saved: {path}; "
                    f"resume with: {self._resume_command()}"
                )
                raise
        seconds = timer.elapsed
        if self._cpu_logged_at != self.step:  # the final evaluation has logged it already (one row per step)
            self.record.log({"train/cpu_seconds": self._cpu_total()}, self.step)
        line = format_summary(self.name, self.step - start, seconds, self.record.logger.last, keys=())
        if self.verbose:
            print(self._final_report(line), flush=True)
        return {**self.phase_scores, "steps": self.step, "updates": self.updates, "seconds": seconds}

    def _cpu_total(self) -> float:
        """CPU seconds of this run's process since the trainer was built, plus those of the sessions it resumes."""
        return self._cpu_seconds + time.process_time() - self._cpu_mark

    def _final_report(self, line: str) -> str:
        """The summary line: each phase's score as the mean +- std of its last 3 evaluations (never a single one);
        the learning curve is drawn to a PNG whose path is printed first."""
        if self.eval_env is None or not self.phase_scores:
            return line
        try:
            from diffrl.train.report import plot_run, run_summary

            print(f"{self.name}: learning curve {plot_run(self.record.dir)}", flush=True)
            return f"{line} | {run_summary(self.record.dir, last_k=3)}"
        except Exception as err:  # a report must never turn a finished run into a failed one
            print(f"{self.name}: no learning curve ({' '.join(str(err).split())})", flush=True)
            return format_summary(self.name, self.step, 0.0, self.record.logger.last)

    def evaluate(self) -> dict[str, float]:
        """Evaluate the policy now and log the result at the current global step."""
        if self.eval_env is None:
            return {}
        refs = {}
        if getattr(self.offline_rb, "has_reference_scores", False):
            refs = {"ref_min_score": self.offline_rb.ref_min_score, "ref_max_score": self.offline_rb.ref_max_score}
        s = self.settings
        out = evaluate(self.eval_env, self.eval_policy, s.eval_episodes, exploration=s.eval_exploration, **refs)
        # CPU time beside every evaluation: a phase's cost (and a hook's share of it) is read from the run directory
        self.record.log({**out, "train/cpu_seconds": self._cpu_total()}, self.step)
        self._cpu_logged_at = self.step
        self._metrics.update(out)
        return out

    def save(self) -> Any:
        """Write a checkpoint at the current global step (the recipe's objects plus the loop's); returns its path."""
        state = {
            "phase": self.phase,
            "step": self.step,
            "updates": self.updates,
            "credit": self._credit,
            "phase_scores": self.phase_scores,
            "episodes": self._tracker.state_dict(),
            "cpu_seconds": self._cpu_total(),
        }
        objects = {**self._stateful(), _LOOP_STATE: state}
        if self.env is not None:
            objects["loop_episode"] = _EpisodeSlot(self._episode_state() if self.phase == "online" else None)
        path = self.record.save(self.step, **objects)
        self._saved_at = self.step
        return path

    # ------------------------------------------------------------------------------------------------------ phases
    def _offline_phase(self) -> None:
        s = self.settings
        bar = make_progress(s.offline_steps, "offline", initial=self.step, keys=self.progress_keys)
        try:
            while self.step < s.offline_steps:
                raise_if_interrupted()
                metrics = self.update(self.offline_rb.sample(s.batch_size))
                self.updates += 1
                check_finite(metrics, self.step + 1)
                self._advance(1, metrics, bar)
        finally:
            bar.close()
        self._end_phase("offline")

    def _online_phase(self) -> None:
        s = self.settings
        self.phase = "online"
        for hook in self.hooks:
            if hook.on_switch is not None:
                hook.on_switch(self)
        online_done = self.step - s.offline_steps
        collector = self._make_collector(online_done)
        bar = make_progress(s.online_steps, "online", initial=online_done, keys=self.progress_keys)
        try:
            iterator = iter(collector)
            while self.step < s.total_steps:
                raise_if_interrupted()
                data = next(iterator).reshape(-1)
                self._follow_episode(data)
                self._store(data)
                before = self.step - s.offline_steps
                if before + data.numel() > s.random_steps:
                    self._credit += (before + data.numel() - max(before, s.random_steps)) * s.utd_ratio
                metrics = None
                while self._credit >= 1.0:
                    metrics = self.update(self.mixer.sample())
                    self.updates += 1
                    self._credit -= 1.0
                    check_finite(metrics, self.step + data.numel())
                if metrics is not None and self._multi_process:
                    collector.update_policy_weights_()  # workers in other processes act with the new weights
                self._advance(data.numel(), metrics, bar, online=data)
        finally:
            if self._multi_process:
                collector.shutdown()
            else:
                collector.shutdown(close_env=False)  # the env is the trainer's: its generator is checkpointed
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
        if online is not None:
            # Periodic hooks run before this step's evaluation and checkpoint, so that a run resumed from that
            # checkpoint holds what they did (an EDIS refit) instead of skipping it.
            online_before, online_now = before - s.offline_steps, self.step - s.offline_steps
            for hook in self.hooks:
                if hook.on_interval is not None and _crossed(online_before, online_now, hook.every):
                    hook.on_interval(self)
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

    # ------------------------------------------------------------------------------------------------ collection
    @property
    def _multi_process(self) -> bool:
        opts = dict(self.settings.collector or {})
        return int(opts.get("num_workers", 1)) > 1 or opts.get("backend", "auto") in ("process", "ray")

    def _make_collector(self, online_done: int) -> Any:
        from torchrl.collectors import Collector
        from torchrl.envs.utils import ExplorationType

        s = self.settings
        random_frames = max(0, s.random_steps - online_done)
        if self._multi_process:
            return make_collector(
                s.collector,
                self._env_factory,
                self.exploration_policy,
                total_frames=-1,
                init_random_frames=random_frames,
                device=self.device if self.device.type != "cpu" else None,
                exploration_type=ExplorationType.RANDOM,
            )
        # Building a collector resets the env and may run the policy once: neither may move any generator, so that a
        # resumed run draws exactly what the uninterrupted one drew from here on.
        global_rng, env_rng = rng_state(), env_rng_state(self.env)
        if self._episode_rng is None and online_done == 0:
            self._episode_rng = env_rng  # the first episode begins with the collector's reset
        collector = Collector(
            self.env,
            self.exploration_policy,
            frames_per_batch=s.frames_per_batch,
            total_frames=-1,
            init_random_frames=random_frames,
            exploration_type=ExplorationType.RANDOM,
            auto_register_policy_transforms=False,
        )
        if self._resumed_episode is not None:
            self._replay_episode(collector, self._resumed_episode)
            self._resumed_episode = None
        else:
            set_env_rng_state(self.env, env_rng)
            if online_done == 0:
                # The uninterrupted run's first reset is the collector's own: redo it from the saved generator.
                collector._carrier.update(self.env.reset(), inplace=True)
        self._rng_since_reset = env_rng_state(self.env)
        set_rng_state(global_rng)
        return collector

    def _follow_episode(self, data: TensorDictBase) -> None:
        """Keep the actions of the episode in progress and the env generator's state before it began."""
        if self.env is None:
            return
        done = data.get(("next", "done")).reshape(data.shape[0], -1).any(-1)
        ends = done.nonzero().flatten()
        if ends.numel() == 0:
            self._episode_actions.append(data.get("action").detach().cpu())
            return
        # The env was reset right after the last end in this batch. Steps draw nothing from its generator, so that
        # reset drew from the state the previous reset left, provided no other reset happened in this batch.
        last = int(ends[-1])
        self._episode_exact = ends.numel() == 1
        self._episode_rng, self._rng_since_reset = self._rng_since_reset, env_rng_state(self.env)
        self._episode_actions = [data.get("action")[last + 1 :].detach().cpu()]

    def _episode_state(self) -> dict[str, Any]:
        actions = torch.cat(self._episode_actions) if self._episode_actions else torch.zeros(0)
        return {
            "exact": bool(self._episode_exact and self._episode_rng is not None),
            "start_rng": self._episode_rng,
            "now_rng": env_rng_state(self.env),
            "actions": actions,
        }

    def _replay_episode(self, collector: Any, episode: Mapping[str, Any]) -> None:
        """Rebuild the env's episode in progress: reset from its starting generator state, replay its actions."""
        if not episode.get("exact"):
            self._say(
                "resume: the online episode in progress cannot be rebuilt (several episodes began in one collected "
                "batch); the env starts a fresh episode, so the run continues statistically, not bitwise, the same"
            )
            set_env_rng_state(self.env, episode["now_rng"])
            collector._carrier.update(self.env.reset(), inplace=True)
            self._episode_rng = episode["now_rng"]  # the fresh episode is known from here on
            return
        set_env_rng_state(self.env, episode["start_rng"])
        td = self.env.reset()
        for action in episode["actions"]:
            td.set("action", action.to(td.device) if td.device is not None else action)
            _, td = self.env.step_and_maybe_reset(td)
        set_env_rng_state(self.env, episode["now_rng"])
        collector._carrier.update(td.select(*collector._carrier.keys(True, True), strict=False), inplace=True)
        self._episode_rng = episode["start_rng"]
        self._episode_actions = [episode["actions"]]

    # ------------------------------------------------------------------------------------------------------ helpers
    def _store(self, data: TensorDictBase) -> None:
        """Keep the stored keys of fresh transitions; their return-to-go is unknown: mc_return = 0."""
        if self._store_keys is None:
            transitions = data.exclude("collector")
        else:
            present = set(data.keys(True, True))
            transitions = data.select(*[key for key in self._store_keys if key in present])
            if "mc_return" in self._store_keys:
                transitions.set("mc_return", torch.zeros_like(data.get(("next", "reward")), dtype=torch.float32))
        self.online_rb.extend(transitions.to(self.device))

    def _track_episodes(self, data: TensorDictBase) -> None:
        """Log the return of every training episode that ends in ``data`` (raw rewards when the env keeps them)."""
        if self._tracker.reward_key is None:
            raw = ("next", "raw_reward") in data.keys(True, True)
            self._tracker.reward_key = ("next", "raw_reward") if raw else ("next", "reward")
        for episode_return, length in self._tracker.update(data):
            episode = {
                "train/episode_return": episode_return,
                "train/episode_length": length,
                "train/episodes": self._tracker.episodes,
            }
            if getattr(self.offline_rb, "has_reference_scores", False):
                episode["train/normalized_return"] = float(self.offline_rb.normalized_score(episode_return))
            self.record.log(episode, self.step)

    def _stateful(self) -> dict[str, Any]:
        objects = dict(self.checkpoint_objects)
        if self.online_rb is not None:
            objects.update(loop_online_rb=StoredItems(self.online_rb), loop_mixer=self.mixer)
        if self.env is not None:
            objects["loop_env"] = self.env
        if self.offline_rb is not None and callable(getattr(self.offline_rb, "state_dict", None)):
            objects["loop_offline_rb"] = without_contents(self.offline_rb)
        if self.eval_env is not None:
            objects["loop_eval_env"] = self.eval_env
        return objects

    def _resume(self) -> None:
        objects = self._stateful()
        if self.env is not None:
            objects["loop_episode"] = _EpisodeSlot()
        if not self.record.resume(**objects):
            return
        state = self.record.resumed[_LOOP_STATE]
        self.phase, self.step, self.updates = state["phase"], int(state["step"]), int(state["updates"])
        self._credit = float(state["credit"])
        episodes = state["episodes"]
        self._tracker.load_state_dict(episodes if isinstance(episodes, Mapping) else {"episodes": episodes})
        if self._multi_process:
            self._tracker.load_state_dict({"episodes": self._tracker.episodes})  # the workers start fresh episodes
        self.phase_scores = dict(state["phase_scores"])
        self._cpu_seconds, self._cpu_mark = float(state.get("cpu_seconds", 0.0)), time.process_time()
        slot = objects.get("loop_episode")
        if isinstance(slot, _EpisodeSlot) and slot.state is not None and self.phase == "online":
            self._resumed_episode = slot.state
        if self._multi_process and self.phase == "online":
            self._say(
                "resume: several collector workers: each starts a fresh episode, so the online phase continues "
                "statistically, not bitwise, the same as the uninterrupted run"
            )
        self._saved_at = self.step

    def _save_now(self) -> Any:
        """Checkpoint the current step unless that is what the last checkpoint holds."""
        if self._saved_at == self.step:
            latest = getattr(self.record.checkpointer, "latest", None)
            return latest() if callable(latest) else None
        return self.save()

    def _resume_command(self) -> str:
        import sys

        script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "<recipe>.py"
        return f"python {script} resume={self.record.dir}"

    def _say(self, message: str) -> None:
        if self.verbose:
            from tqdm.auto import tqdm

            tqdm.write(message)


class _EpisodeSlot:
    """Receives the saved episode in progress (a plain state dict) when a checkpoint is loaded."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state or {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state) or None


def _crossed(before: int, after: int, every: int | None) -> bool:
    """True when a multiple of ``every`` lies in ``(before, after]``."""
    return bool(every) and every > 0 and after // every > before // every


def _is_env(obj: Any) -> bool:
    from torchrl.envs import EnvBase

    return isinstance(obj, EnvBase)


def _make(env: Any) -> Any:
    return env if _is_env(env) or not callable(env) else env()
