"""EDIS in the offline-to-online loop: the generator refitted at the switch and every K online env steps.

The schedule of the EDIS paper (docs/algorithms.md, "EDIS"), on :class:`~diffrl.train.trainer.Trainer`:

1. at the switch, the EDIS transform becomes the loop's batch transform (``loop.mixer.transform``): from then on every
   online batch of B has exactly ``round(synthetic_fraction * B)`` synthetic rows, the other rows drawn as the loop
   draws them (``online.mixing_ratio``: 0 for Cal-QL+EDIS, whose offline data is never replayed directly; uniform over
   offline + online data for IQL+EDIS). The diffusion model is fitted on the offline data; there is no online data
   yet, hence no energies, so the first pool is unguided;
2. every ``every`` online env steps the diffusion model is retrained from scratch on offline + online data, the
   energies (kept across retrains) on the online data with the current policy, and the pool is regenerated, guided;
3. optionally ``extra_updates`` updates on purely synthetic batches right after each regeneration: the official
   IQL+EDIS code's only use of synthetic data (20 per retrain; docs/algorithms.md explains why the default mixes
   synthetic rows into every online batch instead).

A regeneration at the very last online step is skipped: no update would use it.

Resuming: put the hook among the trainer's ``checkpoint`` objects. It saves the transform's models (denoiser, EMA,
normaliser, energies), the current pool and the transform's generator, so a resumed online phase draws exactly the
synthetic rows the uninterrupted run would have drawn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from diffrl.train.config import ConfigError
from diffrl.train.trainer import Hook

__all__ = ["EDISHook", "build_edis", "edis_hook"]


def build_edis(cfg: Mapping[str, Any], *, obs_dim: int, action_dim: int, device: Any, seed: int) -> Any:
    """Build the registered transform ``edis`` from a recipe's ``edis`` config group; bad options raise ConfigError.

    Args:
        cfg: ``{"name": "edis", "preset": None | "paper", **EDISConfig options}`` (a mapping or OmegaConf node).
        obs_dim, action_dim: sizes of the dataset's observations and actions.
        device: where the generator trains and samples (the recipe's resolved device).
        seed: seeds the transform's networks and random draws (the recipe's ``seed``).

    Example:
        >>> edis = build_edis({"name": "edis", "num_samples": 10}, obs_dim=3, action_dim=1, device="cpu", seed=0)
        >>> edis.config.num_samples, edis.synthetic_fraction
        (10, 0.5)
        >>> try:
        ...     build_edis({"name": "edis", "synthetic_fraction": 2.0}, obs_dim=3, action_dim=1, device="cpu", seed=0)
        ... except ConfigError as err:
        ...     print(err)
        invalid edis config: synthetic_fraction must be in [0, 1], got 2.0.
    """
    from diffrl import registry

    try:
        return registry.build(
            "transform", cfg, obs_dim=obs_dim, action_dim=action_dim, device=str(device), seed=int(seed)
        )
    except (TypeError, ValueError) as err:  # option names and values come from the config: a user error
        raise ConfigError(f"invalid edis config: {err}") from err


class EDISHook(Hook):
    """Fit EDIS at the switch and every ``every`` online env steps, and feed its pool to every online batch.

    See the module docstring for the schedule. Pass the hook to the loop twice: in ``hooks`` and in ``checkpoint``.

    Args:
        edis: an :class:`~diffrl.data.edis.EDISTransform` (``build_edis``).
        policy: the current policy for the policy energy (the loop's actor: ``obs -> action`` or a TensorDictModule).
        every: online env steps between regenerations (paper: 10k). 0: only the one at the switch.
        extra_updates: updates on purely synthetic batches after each regeneration (official IQL+EDIS: 20). Default 0.
        verbose: print one line per regeneration (time, losses).

    Attributes:
        regenerations: fits so far. ``seconds``: time spent fitting and sampling. ``last``: the last fit's metrics.

    Example:
        >>> edis = build_edis({"name": "edis"}, obs_dim=3, action_dim=1, device="cpu", seed=0)
        >>> hook = EDISHook(edis, policy=lambda obs: obs[:, :1], every=1000)
        >>> hook.every, hook.regenerations
        (1000, 0)
    """

    def __init__(self, edis: Any, policy: Any, *, every: int, extra_updates: int = 0, verbose: bool = True) -> None:
        if int(every) < 0 or int(extra_updates) < 0:
            raise ConfigError(
                f"EDIS retrain interval and extra updates must be >= 0, got every={every}, "
                f"extra_updates={extra_updates}"
            )
        super().__init__(on_switch=self.start, on_interval=self.refit, every=int(every))
        self.edis = edis
        self.policy = policy
        self.extra_updates = int(extra_updates)
        self.verbose = verbose
        self.regenerations = 0
        self.seconds = 0.0
        self.last: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"EDISHook(every={self.every}, extra_updates={self.extra_updates}, regenerations={self.regenerations})"

    # ------------------------------------------------------------------------------------------------- the schedule
    def start(self, loop: Any) -> None:
        """The switch (also re-run by a resumed online phase): install the transform, make sure there is a pool."""
        loop.mixer.transform = self.edis
        if int(self.edis.num_fits) == 0:
            self._fit(loop)
        elif self.edis.pool is None:  # resumed from a checkpoint without a pool: draw one from the restored models
            start = time.perf_counter()
            self.edis.refresh()
            self._say(
                f"EDIS: drew a pool of {self.edis.pool.shape[0]} samples from the restored generator in "
                f"{time.perf_counter() - start:.1f} s"
            )

    def refit(self, loop: Any) -> None:
        """Every ``every`` online env steps: retrain on offline + online data, draw a new pool."""
        if loop.step >= loop.settings.total_steps:
            return  # the run ends here: nobody would sample this pool
        self._fit(loop)

    def _fit(self, loop: Any) -> None:
        online = loop.online_rb if len(loop.online_rb) > 0 else None
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = self.edis.fit(
            [loop.offline_rb, loop.online_rb], online=online, policy=self.policy if online is not None else None
        )
        seconds = time.perf_counter() - start
        self.regenerations += 1
        self.seconds += seconds
        self.last = {f"edis/{key}": float(value) for key, value in metrics.items()}
        # process CPU time does not grow with the machine's other load: the regeneration's share of the online phase
        # is edis/fit_cpu_seconds over the growth of train/cpu_seconds (benchmarks/edis_share.py)
        self.last["edis/fit_cpu_seconds"] = time.process_time() - cpu_start
        loop.record.log({**self.last, "edis/regenerations": self.regenerations}, loop.step)
        guided = any(name.startswith("energy_loss/") for name in metrics)
        energies = " ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in metrics.items() if k.startswith("energy_loss/"))
        chance = torch.log(torch.tensor(self.edis.config.num_negatives + 1.0)).item()
        self._say(
            f"EDIS: {'guided' if guided else 'unguided'} pool of {self.edis.pool.shape[0]} samples at online step "
            f"{loop.step - loop.settings.offline_steps} in {seconds:.1f} s (diffusion loss "
            f"{metrics['diffusion_loss']:.3f}"
            + (f"; energy InfoNCE {energies}, chance {chance:.2f})" if guided else "; no online data yet: no energies)")
        )
        for _ in range(self.extra_updates):
            pool = self.edis.pool
            loop.update(pool[torch.randint(pool.shape[0], (loop.settings.batch_size,), device=pool.device)])
            loop.updates += 1

    def _say(self, message: str) -> None:
        if self.verbose:
            from tqdm.auto import tqdm

            tqdm.write(message)  # above the progress bar, if one is drawn

    # ------------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The transform's state (models, pool, generator) and the hook's counters."""
        return {"transform": self.edis.state_dict(), "regenerations": self.regenerations, "seconds": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.edis.load_state_dict(state["transform"])
        self.regenerations = int(state["regenerations"])
        self.seconds = float(state["seconds"])


def edis_hook(cfg: Mapping[str, Any], policy: Any, *, obs_dim: int, action_dim: int, device: Any) -> EDISHook | None:
    """The EDIS hook a recipe config asks for, or ``None`` when it has no ``edis`` group.

    Reads the ``edis`` group (the transform's options), ``online.retrain_every``, ``online.extra_updates`` and
    ``seed``. Pass the hook to the trainer both as a hook and among its checkpoint objects.

    Example:
        >>> edis_hook({"seed": 0}, policy=None, obs_dim=3, action_dim=1, device="cpu") is None
        True
    """
    if "edis" not in cfg or cfg["edis"] is None:
        return None
    edis = build_edis(cfg["edis"], obs_dim=obs_dim, action_dim=action_dim, device=device, seed=int(cfg["seed"]))
    online = cfg["online"]
    return EDISHook(edis, policy, every=int(online["retrain_every"]), extra_updates=int(online["extra_updates"]))
