"""The EDIS transform: a transition diffusion model with energy guidance that feeds synthetic data to a replay buffer.

Reference: Liu et al., "Energy-Guided Diffusion Sampling for Offline-to-Online Reinforcement Learning" (EDIS), ICML
2024, and its official code (liuxhym/EDIS). ``fit`` trains the pieces (a self-contained trainer, like SynthER's
generator); the math is in :mod:`diffrl.diffusion.edm`, the networks in :mod:`diffrl.nn.denoisers` and
:mod:`diffrl.data.edis.energy`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.envs.transforms import Transform

from diffrl import registry
from diffrl.data.edis.config import ENERGY_NAMES, EDISConfig
from diffrl.data.edis.energy import EnergyGuidance, EnergyNet
from diffrl.data.edis.layout import REQUIRED_KEYS, TransitionLayout, ZScoreNormalizer, _key_name
from diffrl.data.edis.training import (
    Policy,
    as_transitions,
    fused_adam_option,
    policy_actions,
    train_denoiser,
    train_energy,
)
from diffrl.diffusion.edm import EDMDenoiser, churn_sigmas, heun_sample, karras_sigmas
from diffrl.nn.denoisers import ResidualMLPDenoiser

__all__ = ["EDISTransform"]

# the feature block each energy's guidance gradient moves with mask_guidance=True (the official rule)
_GUIDED_BLOCK = {"state": "state", "policy": "action", "transition": "next_state"}
# the feature blocks held to the positive's values when drawing that energy's negatives (none: unconditional)
_INPAINT_BLOCKS = {"state": (), "policy": ("state",), "transition": ("state", "action")}


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@registry.register("transform", "edis")
class EDISTransform(Transform):
    """Energy-guided diffusion sampling (EDIS) as a TorchRL replay-buffer transform.

    What ``fit(data, online, policy)`` does:

    1. flatten transitions to ``x = [s, a, r, s'(, terminal)]``, refusing non-finite values; the first fit sets a
       per-dimension z-score normaliser, frozen afterwards (``refit_normalizer`` refits it and resets the energies);
    2. train a fresh EDM denoiser (residual MLP, AdamW + cosine schedule, grad clip, EMA) on the normalised data;
    3. if ``online`` is given, train the energies kept from earlier fits (warm start) by InfoNCE, each positive against
       ``num_negatives`` diffusion negatives, both noised to one sigma drawn from the levels the pool sampler visits:
       state energy: positives = online transitions, negatives = unconditional samples;
       policy energy (only with ``policy``): positives = online ``s`` with ``a ~ policy(s)`` and the real ``r, s'``,
       negatives = samples inpainted on the positive's ``s``;
       transition energy: positives = online ``(s, a, r, s')``, negatives = samples inpainted on ``(s, a)``.
       The inpainting mask is over features (the official code's batch-sized mask is defect a). Energies with
       guidance weight 0 are not trained.
    4. refill the synthetic pool with ``num_samples`` guided samples (``resample``; ``refresh`` is its alias).

    Guided sampling adds ``clip(sigma (w_s grad E_s + w_pi m_a grad E_pi + w_T grad E_T), guidance_clip sqrt(D))``
    to the Heun sampler's ODE derivative in normalised coordinates, so samples descend the energies (``m_a`` keeps the
    action block). With ``mask_guidance=True`` and ``guidance_sigma_scale=False`` it is the official rule
    ``w_s m_s grad E_s + w_pi m_a grad E_pi + w_T m_s' grad E_T``, which covers about a third to half of the way to
    the online states on a shifted toy (tests/test_edis_guidance.py; see ``EDISConfig``).

    As a replay-buffer transform it replaces exactly ``round(synthetic_fraction * B)`` rows (random positions) of every
    sampled batch ``[B]`` by rows drawn with replacement from the pool; only keys present in the batch are overwritten
    (other batch keys, e.g. "index", keep the real row's value; set ``mark_key`` to flag synthetic rows).

    Args:
        obs_dim, action_dim: sizes of observations and actions.
        preset: None (CPU defaults) or "paper" (the paper's sizes; needs a GPU).
        **options: any :class:`~diffrl.data.edis.config.EDISConfig` field (they override the preset).

    Keys: reads "observation", "action", ("next", "reward"), ("next", "observation") (and ("next", "terminated") with
    ``terminal_channel``); writes those plus ("next", "done"/"terminated"/"truncated") and "mc_return" (zeros).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl import registry
        >>> edis = registry.build("transform", {"name": "edis", "diffusion_steps": 5, "num_samples": 8,
        ...                       "sampler_steps": 2, "denoiser": {"width": 8, "blocks": 1}}, obs_dim=1, action_dim=1)
        >>> _ = torch.manual_seed(0)
        >>> s, a = torch.randn(32, 1), torch.randn(32, 1)
        >>> data = TensorDict({"observation": s, "action": a,
        ...                    "next": {"observation": s + a, "reward": -s.abs()}}, [32])
        >>> _ = edis.fit(data)
        >>> batch = edis(data[:4].clone())  # as inside rb.sample(): 2 of the 4 rows become synthetic
        >>> int((batch["observation"] != data[:4]["observation"]).sum())
        2
    """

    def __init__(self, obs_dim: int, action_dim: int, *, preset: str | None = None, **options: Any) -> None:
        super().__init__(in_keys=[], out_keys=[])
        self.config = EDISConfig.from_options(preset, **options)
        cfg = self.config
        self._device = _resolve_device(cfg.device)
        self.layout = TransitionLayout(obs_dim, action_dim, cfg.terminal_channel)
        dim = self.layout.dim
        self.normalizer = ZScoreNormalizer(dim).to(self._device)
        # No bounds until the first fit learns them from the data. The largest float, not infinity: a checkpoint holds
        # only finite values, so that a damaged one (NaN, inf) is told apart from a good one.
        unbounded = torch.finfo(torch.float32).max
        self.register_buffer("action_low", torch.full((self.layout.action_dim,), -unbounded, device=self._device))
        self.register_buffer("action_high", torch.full((self.layout.action_dim,), unbounded, device=self._device))
        # training state kept in buffers so that a state_dict (e.g. a recipe checkpoint) restores a usable transform
        self.register_buffer("num_fits", torch.zeros((), dtype=torch.long, device=self._device))
        self.register_buffer("trained_energies", torch.zeros(len(ENERGY_NAMES), dtype=torch.bool, device=self._device))
        self.denoiser = self._new_denoiser()
        self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)
        self._reset_energies()
        self._generator = torch.Generator(device=self._device).manual_seed(cfg.seed)
        self._pool: TensorDictBase | None = None

    # ---------------------------------------------------------------- properties
    @property
    def synthetic_fraction(self) -> float:
        """Fraction of each sampled batch replaced by synthetic rows (settable, e.g. to anneal it)."""
        return float(self.config.synthetic_fraction)

    @synthetic_fraction.setter
    def synthetic_fraction(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {value}.")
        self.config.synthetic_fraction = float(value)

    @property
    def guidance(self) -> dict[str, float]:
        """The energy weights ``{state, policy, transition}`` used by guided sampling (edit in place to change)."""
        return self.config.guidance

    @property
    def energy_trained(self) -> dict[str, bool]:
        """Which energies have been trained (by any ``fit`` so far)."""
        return {name: bool(flag) for name, flag in zip(ENERGY_NAMES, self.trained_energies.tolist())}

    @property
    def pool(self) -> TensorDictBase | None:
        """The current synthetic pool (None before the first ``fit``)."""
        return self._pool

    def get_extra_state(self) -> dict[str, Any]:
        """The pool and the generator behind every random draw, kept in ``state_dict`` so that a restored transform
        samples exactly the rows the saved one would have (a resumed run stays bit-identical)."""
        return {"pool": self._pool, "generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._pool = state["pool"]
        self._generator.set_state(state["generator"])

    def manual_seed(self, seed: int) -> EDISTransform:
        """Reseed the generator behind every random draw of the transform (training batches, sampling, row picks)."""
        self._generator.manual_seed(int(seed))
        return self

    # ---------------------------------------------------------------- fitting
    def _reset_energies(self) -> None:
        """Fresh energies (seeded by the config and the fit count) and optimisers; marks them untrained."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1 + 7919 * int(self.num_fits))
            self.energies = nn.ModuleDict(
                {name: EnergyNet(self.layout.dim, sigma_data=cfg.sigma_data, **cfg.energy) for name in ENERGY_NAMES}
            ).to(self._device)
        self._energy_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.trained_energies.zero_()

    def _new_denoiser(self) -> EDMDenoiser:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 7919 * int(self.num_fits))  # a different initialisation on every retrain
            net = ResidualMLPDenoiser(self.layout.dim, seed=cfg.seed, **cfg.denoiser)
        return EDMDenoiser(net, sigma_data=cfg.sigma_data).to(self._device)

    def fit(self, data: Any, online: Any = None, policy: Policy | None = None) -> dict[str, float]:
        """Train the diffusion model on ``data`` (offline + online), the energies on ``online``, refill the pool.

        Args:
            data: transitions (TensorDict of any batch shape, a list of TensorDicts, or a replay buffer).
            online: online transitions for the energies (same forms); None or empty skips energy training.
            policy: the current policy, ``obs -> action`` (a callable on tensors or a TensorDictModule reading
                "observation" and writing "action"), for the policy energy; None skips it.

        Returns:
            diagnostics: ``diffusion_loss`` (mean of the last 10% of steps), ``energy_loss/<name>`` (InfoNCE; chance
            level is ``log(num_negatives + 1)``), and ``time`` in seconds.

        Raises:
            ValueError: ``data`` or ``online`` holds NaN or inf (the message names the field, the count and the first
                transition); nothing is trained and the pool is left as it was.
        """
        start = time.perf_counter()
        cfg = self.config
        x = self.layout.flatten(as_transitions(data, "data")).to(self._device)
        if x.shape[0] < 2:
            raise ValueError(f"EDIS needs at least 2 transitions to fit, got {x.shape[0]}.")
        self.layout.check_finite(x, "data")
        online_td = None if online is None else as_transitions(online, "online")
        # an empty online buffer (the start of fine-tuning) trains no energy
        online_x = None
        if online_td is not None and online_td.batch_size.numel() > 0:
            online_x = self.layout.flatten(online_td).to(self._device)
            self.layout.check_finite(online_x, "online")
        if cfg.refit_normalizer or int(self.num_fits) == 0:
            skip = None if cfg.normalize_reward else self.layout.mask("reward")
            self.normalizer.fit(x, skip)
            if int(self.num_fits) > 0:
                self._reset_energies()  # their inputs changed coordinates: a warm start would be meaningless
        actions = x[:, self.layout.blocks["action"]]
        self.action_low.copy_(actions.min(0).values)
        self.action_high.copy_(actions.max(0).values)
        metrics = {"diffusion_loss": self._train_diffusion(self.normalizer.normalize(x))}
        self.num_fits += 1
        if online_x is not None:
            metrics.update(self._train_energies(self.normalizer.normalize(online_x), policy))
        self.resample()
        metrics["time"] = time.perf_counter() - start
        return metrics

    def _train_diffusion(self, x: Tensor) -> float:
        self.denoiser = self._new_denoiser()  # retrained from scratch on every fit, as in the paper
        self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)
        return train_denoiser(self.denoiser, self.ema_denoiser, x, self.config, self._generator)

    def _sampler_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {"s_churn": cfg.s_churn, "s_tmin": cfg.s_tmin, "s_tmax": cfg.s_tmax, "s_noise": cfg.s_noise}

    def _sigmas(self, steps: int) -> Tensor:
        cfg = self.config
        return karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, device=self._device)

    def _generate(
        self, shape: Sequence[int], steps: int, guidance=None, known: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Normalised samples from the EMA denoiser, in chunks of ``sample_batch_size`` rows along dim 0."""
        cfg = self.config
        shape = tuple(shape)
        rows_per_item = math.prod(shape[1:-1])
        chunk = max(1, cfg.sample_batch_size // max(rows_per_item, 1))
        sigmas = self._sigmas(steps)
        out = []
        for begin in range(0, shape[0], chunk):
            end = min(begin + chunk, shape[0])
            out.append(
                heun_sample(
                    self.ema_denoiser, (end - begin, *shape[1:]), sigmas, guidance=guidance,
                    inpaint_mask=mask, inpaint_values=None if known is None else known[begin:end],
                    inpaint_resample=cfg.inpaint_resample,
                    generator=self._generator, device=self._device, **self._sampler_kwargs(),
                )
            )  # fmt: skip
        return torch.cat(out)

    def _train_energies(self, online_x: Tensor, policy: Policy | None) -> dict[str, float]:
        cfg = self.config
        names = [
            n for n in ENERGY_NAMES if float(cfg.guidance.get(n, 0.0)) > 0 and (n != "policy" or policy is not None)
        ]
        if not names or cfg.energy_steps == 0:
            return {}
        num_pos = cfg.energy_positives or cfg.energy_steps * cfg.energy_batch_size
        num_pos = min(num_pos, online_x.shape[0])
        perm = torch.randperm(online_x.shape[0], generator=self._generator, device=self._device)
        positives = online_x[perm[:num_pos]]
        levels = churn_sigmas(
            self._sigmas(cfg.sampler_steps), s_churn=cfg.s_churn, s_tmin=cfg.s_tmin, s_tmax=cfg.s_tmax
        )  # the levels guided sampling queries the energies at
        neg_steps = cfg.negative_sampler_steps or cfg.sampler_steps
        k, dim = cfg.num_negatives, self.layout.dim
        metrics = {}
        for name in names:
            pos = positives
            if name == "policy":
                obs = self.normalizer.denormalize(positives)[:, self.layout.blocks["state"]]
                actions = policy_actions(policy, obs)
                block = self.layout.blocks["action"]
                if actions.shape[-1] != self.layout.action_dim:
                    raise ValueError(
                        f"the policy returned actions of size {actions.shape[-1]}, expected {self.layout.action_dim}."
                    )
                pos = positives.clone()
                pos[:, block] = (actions - self.normalizer.mean[block]) / self.normalizer.std[block]
            blocks = _INPAINT_BLOCKS[name]
            mask = self.layout.mask(*blocks).to(self._device) if blocks else None
            known = pos.unsqueeze(1).expand(num_pos, k, dim) if blocks else None
            negatives = self._generate((num_pos, k, dim), neg_steps, known=known, mask=mask)
            energy = self.energies[name]
            if name not in self._energy_optimizers:  # kept across fits with the energy (warm start)
                self._energy_optimizers[name] = torch.optim.Adam(
                    energy.parameters(), lr=cfg.energy_lr, **fused_adam_option(self._device)
                )
            loss = train_energy(
                energy, self._energy_optimizers[name], pos, negatives, levels, cfg.energy_steps,
                cfg.energy_batch_size, self._generator,
            )  # fmt: skip
            self.trained_energies[ENERGY_NAMES.index(name)] = True
            metrics[f"energy_loss/{name}"] = loss
        return metrics

    # ---------------------------------------------------------------- sampling
    def _guidance(self) -> EnergyGuidance | None:
        terms, untrained = [], []
        for name in ENERGY_NAMES:
            weight = float(self.config.guidance.get(name, 0.0))
            if weight == 0.0:
                continue
            if not self.energy_trained[name]:
                untrained.append(name)
                continue
            if self.config.mask_guidance or name == "policy":
                # the policy energy's positives pair policy actions with the dataset's (r, s'): its gradient on those
                # blocks would pull them away from the dynamics, so it only ever moves the action
                mask = self.layout.mask(_GUIDED_BLOCK[name])
            else:
                mask = torch.ones(self.layout.dim, dtype=torch.bool)
            terms.append((self.energies[name], weight, mask.to(self._device)))
        if untrained:
            warnings.warn(
                f"EDIS guided sampling skips the untrained energies {untrained} (their guidance weights are > 0): "
                "call fit(data, online=..., policy=...) to train them, or set their guidance weight to 0.",
                stacklevel=3,
            )
        if not terms:
            return None
        return EnergyGuidance(
            terms,
            clip_norm=self.config.guidance_clip * math.sqrt(self.layout.dim),
            sigma_scale=self.config.guidance_sigma_scale,
        )

    def sample(self, n: int, guided: bool = True) -> TensorDict:
        """``n`` synthetic transitions (TensorDict ``[n]``, float32, TorchRL keys, ``mc_return`` zeros).

        Args:
            n: number of transitions.
            guided: use the trained energies with the configured weights (untrained ones are skipped with a warning).
        """
        if int(self.num_fits) == 0:
            raise RuntimeError("EDISTransform.sample() needs a fitted diffusion model: call fit(data) first.")
        guidance = self._guidance() if guided else None
        x = self._generate((int(n), self.layout.dim), self.config.sampler_steps, guidance=guidance)
        x = self.normalizer.denormalize(x)
        if self.config.clip_actions:
            block = self.layout.blocks["action"]
            x[:, block] = torch.maximum(torch.minimum(x[:, block], self.action_high), self.action_low)
        return self.layout.unflatten(x)

    def resample(self, n: int | None = None, guided: bool | None = None) -> TensorDict:
        """Replace the pool by ``n`` (default ``num_samples``) fresh samples from the current models, without
        retraining them; guided when any weighted energy is trained (or as ``guided`` says). Returns the new pool.

        Example:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> edis = EDISTransform(1, 1, diffusion_steps=2, num_samples=4, sampler_steps=2,
            ...                      denoiser={"width": 8, "blocks": 1})
            >>> s = torch.randn(8, 1)
            >>> _ = edis.fit(TensorDict({"observation": s, "action": s, "next": {"observation": s, "reward": s}}, [8]))
            >>> edis.resample(6).shape, edis.pool.shape
            (torch.Size([6]), torch.Size([6]))
        """
        if guided is None:
            guided = any(self.energy_trained[k] and float(w) > 0 for k, w in self.config.guidance.items())
        self._pool = self.sample(int(n or self.config.num_samples), guided=guided)
        return self._pool

    def refresh(self) -> TensorDict:
        """Refill the pool with ``num_samples`` samples from the current models: ``resample()`` with its defaults
        (the name the replay-buffer contract uses; kept as an alias)."""
        return self.resample()

    # ---------------------------------------------------------------- replay-buffer transform
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Replace ``round(synthetic_fraction * B)`` random rows of a ``[B]`` batch by pool transitions."""
        batch_size = tensordict.batch_size
        if len(batch_size) != 1:
            raise ValueError(
                f"EDIS replaces rows of flat transition batches [B]; got batch_size {tuple(batch_size)}. Synthetic "
                "transitions have no time structure: use it on buffers sampled without trajectory slices."
            )
        b = batch_size[0]
        k = round(self.synthetic_fraction * b)
        if k == 0:
            if self.config.mark_key is None:
                return tensordict
            out = tensordict.clone(recurse=False)  # the flag is written on every batch, so batches stay stackable
            out.set(self.config.mark_key, torch.zeros(b, dtype=torch.bool, device=tensordict.device))
            return out
        keys = set(tensordict.keys(include_nested=True, leaves_only=True))
        missing = [_key_name(key) for key in REQUIRED_KEYS if key not in keys]
        if missing:
            raise KeyError(
                f"EDIS can only replace rows of transition batches with keys {[_key_name(x) for x in REQUIRED_KEYS]};"
                f" the sampled batch lacks {missing} (it has {sorted(_key_name(x) for x in keys)})."
            )
        if self._pool is None:
            raise RuntimeError("the EDIS pool is empty: call fit(data) (or resample()) before sampling the buffer.")
        rows = torch.randperm(b, generator=self._generator, device=self._device)[:k]
        picks = torch.randint(self._pool.shape[0], (k,), generator=self._generator, device=self._device)
        synthetic = self._pool[picks]
        out = tensordict.clone(recurse=False)
        for key in synthetic.keys(include_nested=True, leaves_only=True):
            if key not in keys:
                continue  # fill only what the batch carries (e.g. no "mc_return" in plain online batches)
            real = tensordict.get(key)
            rows_ = rows.to(real.device)
            value = synthetic.get(key).to(device=real.device, dtype=real.dtype)
            target_shape = real[rows_].shape
            if value.numel() != math.prod(target_shape):
                raise ValueError(
                    f"cannot write synthetic {_key_name(key)!r} of shape {tuple(value.shape)} into batch rows of "
                    f"shape {tuple(target_shape)}; check obs_dim/action_dim of the EDIS transform."
                )
            new = real.clone()
            new[rows_] = value.reshape(target_shape)
            out.set(key, new)
        if self.config.mark_key is not None:
            flag = torch.zeros(b, dtype=torch.bool, device=tensordict.device)
            flag[rows.to(flag.device)] = True
            out.set(self.config.mark_key, flag)
        return out

    def inv(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writing to the buffer is left untouched (only sampled batches are augmented)."""
        return tensordict

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"{type(self).__name__}(obs_dim={self.layout.obs_dim}, action_dim={self.layout.action_dim}, "
            f"synthetic_fraction={cfg.synthetic_fraction}, guidance={cfg.guidance}, num_samples={cfg.num_samples}, "
            f"pool={0 if self._pool is None else self._pool.shape[0]})"
        )
