"""EDIS configuration: every knob of the transform, the CPU defaults and the paper preset.

The defaults are sized so that one ``fit`` (diffusion training, energy training, a guided pool) takes about a minute
on two CPU cores with a few thousand low-dimensional transitions. The ``"paper"`` preset holds the sizes of the EDIS
paper and its official code: a 1024-wide, 6-block residual denoiser of ReLU blocks without LayerNorm, AdamW betas
(0.9, 0.99), EMA 0.995 every 10 steps after step 100, 10k diffusion steps, 128 sampler steps with churn 80 inside
sigma in [0.05, 50], 100k samples per retrain, energies 256x3 trained on 20 minibatches of 256. It needs a GPU. Both
keep diffrl's corrections of the official guidance (``mask_guidance``, ``guidance_sigma_scale``: set them to True and
False for the official rule) and the frozen normaliser (``refit_normalizer``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EDISConfig", "PRESETS", "ENERGY_NAMES"]

ENERGY_NAMES: tuple[str, ...] = ("state", "policy", "transition")


def _default_guidance() -> dict[str, float]:
    return {"state": 1.0, "policy": 0.2, "transition": 0.2}


def _default_denoiser() -> dict[str, int]:
    return {"width": 256, "blocks": 3, "embed_dim": 128}


def _default_energy() -> dict[str, int]:
    return {"width": 128, "depth": 3}


@dataclass
class EDISConfig:
    """All options of :class:`~diffrl.data.edis.EDISTransform` (CPU defaults; see ``PRESETS["paper"]``).

    Args:
        guidance: energy weights ``{state, policy, transition}``; 0 turns one off. Default (1, 0.2, 0.2).
        guidance_clip: the summed guidance is clipped to norm ``guidance_clip * sqrt(D)`` per sample. Default 10.
        guidance_sigma_scale: multiply the energy gradients by sigma before adding them to the ODE derivative.
            Default True. That derivative is ``-sigma * score``, so guidance that turns the prior ``q`` into
            ``q * exp(-E)`` must add ``+sigma * grad E``; with exact energies this samples the target at weight 1
            (``q`` = a Gaussian mixture with the exact noised log-ratio: mean shift 98-99% with the right spread,
            against 87-118% and a spread 0.73-0.86 of the target's without the factor). With learned energies on the
            shifted-state toy below (unmasked, 1000 InfoNCE steps, seeds 0 / 1) it covers 93% / 92% of the mean shift
            with spread 1.03 / 1.06, against 88% and a contracted 0.86 unscaled (seed 1). One case goes the other way:
            a deterministic policy (tests/test_edis.py, policy energy alone at weight 1): mean action error 0.28
            scaled, 0.08 unscaled, 0.70 unguided; a delta's log-ratio is too sharp at small sigma for the energy MLP,
            and the unscaled rule's extra weight there compensates. False: the official rule.
        mask_guidance: restrict each energy's gradient to its own block (state: ``s``, transition: ``s'``; the policy
            energy always moves only ``a``). Default False: every energy reads the whole transition, and ``s'`` and
            ``r`` carry the state too, so an energy's evidence is spread over the blocks; moving only one block
            drops the rest. Measured on a toy (online states shifted by 2, prior fit on offline + online, energies
            on online): the official rule (masked, unscaled, 200 InfoNCE steps) covered 36% of the mean shift with
            the CPU denoiser (54% with a small one); unmasking alone 69-72%; with sigma scaling and 1000 InfoNCE steps
            93% (spread 1.03, the online data's 1.0). True: the official rule.
        synthetic_fraction: fraction of every sampled replay batch replaced by synthetic rows. Default 0.5.
        num_samples: size of the synthetic pool refilled by ``fit``/``refresh``. Default 5000 (paper 100k).
        sampler_steps: stochastic-Heun steps of pool sampling. Default 32 (paper 128).
        s_churn, s_tmin, s_tmax, s_noise: EDM stochasticity: noise is injected (churn) only at grid levels
            ``s_tmin <= sigma <= s_tmax``. Defaults 80, 0.05, 50, 1.003: the official EDIS code's values (EDM's generic
            window 0 / inf, which churns at every level, is not what EDIS runs).
        sigma_min, sigma_max, rho: Karras grid. Defaults 0.002, 80, 7.
        sample_batch_size: rows generated per sampler call (memory bound). Default 5000.
        denoiser: ``ResidualMLPDenoiser`` options (width, blocks, embed_dim, activation, layer_norm, ...). Default
            256 x 3, SiLU blocks with LayerNorm (paper: 1024 x 6, ReLU without LayerNorm, as the official model).
            The CPU defaults here (SiLU + LayerNorm, betas (0.9, 0.999), EMA every step from the start) are kept
            because they measured better on a small fit: Pendulum transitions (5000, uniform states and actions),
            2000 steps of the 256 x 3 denoiser, 4000 unguided samples, the mean error of the generated ``s'`` (and
            ``r``) against the env's own step from the generated ``(s, a)``, seeds 0 / 1: these defaults 0.031 / 0.032
            (r 0.079 / 0.081); ReLU without LayerNorm 0.032 / 0.034 (r 0.090 / 0.097); the official optimiser and
            EMA 0.043 (r 0.128, seed 0); both official 0.044 / 0.046 (r 0.142 / 0.144). Held-out EDM loss barely
            differs (0.476-0.488): the official EMA, updated every 10 steps, averages over about 2000 steps, which in
            a 2000-step CPU fit includes weights from early training.
        diffusion_steps: denoiser training steps per fit (retrained from scratch). Default 2000 (paper 10k).
        batch_size: denoiser training batch. Default 256.
        lr, betas, weight_decay, grad_clip: AdamW with a cosine schedule. Defaults 1e-3, (0.9, 0.999), 0, 1 (paper
            lr 3e-4, betas (0.9, 0.99)).
        ema, ema_every, ema_start: EMA decay of the sampling denoiser, applied every ``ema_every`` steps once
            ``ema_start`` steps are done (before, the EMA copy equals the model). Defaults 0.995, 1, 0 (paper 0.995,
            10, 100, as the official code).
        p_mean, p_std, sigma_data: EDM training noise distribution and data scale. Defaults -1.2, 1.2, 1.
        normalize_reward: z-score the reward column too (the official code leaves it raw). Default True: EDM's
            preconditioning assumes unit-scale data in every coordinate, and a raw reward column (e.g. Pendulum's
            [-16, 0]) is denoised badly at small sigma; the normalisation is inverted on output, so it costs nothing.
        refit_normalizer: refit the z-score normaliser at every ``fit``. Default False: it is fit once, by the first
            ``fit``, and frozen. The energies are warm-started across fits (their short per-fit budget accumulates, as
            in the official code) and live in normalised coordinates; a refit normaliser would move every input under
            them between fits, so the warm start would continue from a function of other coordinates. Freezing keeps
            them consistent. The price: the scale is the first fit's data (the offline data when the hook fits at the
            switch), so online data that drift far from it are no longer exactly unit-scale for the denoiser. True
            refits at every fit and, to stay consistent, re-initialises the energies (and their optimisers) each time
            (the official code refits the normaliser and keeps the energies, which mixes the two).
        terminal_channel: generate a terminal flag channel (synthetic transitions may then be terminal). Default False.
        clip_actions: clamp generated actions to the per-dimension range of the fitted data. Default True (keeps
            tanh-squashed actors' log-probabilities finite).
        energy: energy MLP options (width, depth). Default 128 x 3 (paper 256 x 3).
        energy_steps, energy_batch_size, energy_lr: InfoNCE training per fit (Adam). Defaults 1000, 64, 1e-3 (200
            steps left the energies too flat: 81% of the shift on the toy above instead of 93%; a 256-wide energy or
            batch 256 gained nothing further, lr 3e-3 1%).
        num_negatives: diffusion negatives per positive. Default 10.
        energy_positives: online transitions per fit that get conditional negatives (None: energy_steps *
            energy_batch_size, every positive used once as in the official code). Default 512.
        negative_sampler_steps: sampler steps used to draw negatives (None: sampler_steps). Default 16.
        inpaint_resample: RePaint passes per step when inpainting conditional negatives (see ``heun_sample``).
            Default 1 (plain replacement, 0, under-conditions the negatives; see tests/test_edm.py).
        mark_key: if set, the replay transform writes a boolean ``[B]`` entry under this key, True on synthetic rows.
        device: where the models live and sample: "cpu", "cuda", "auto" (cuda when available). Default "cpu".
        seed: seeds network initialisation and every random draw of the transform. Default 0.
    """

    guidance: dict[str, float] = field(default_factory=_default_guidance)
    guidance_clip: float = 10.0
    guidance_sigma_scale: bool = True
    mask_guidance: bool = False
    synthetic_fraction: float = 0.5
    num_samples: int = 5000
    sampler_steps: int = 32
    s_churn: float = 80.0
    s_tmin: float = 0.05
    s_tmax: float = 50.0
    s_noise: float = 1.003
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sample_batch_size: int = 5000
    denoiser: dict[str, Any] = field(default_factory=_default_denoiser)
    diffusion_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.995
    ema_every: int = 1
    ema_start: int = 0
    refit_normalizer: bool = False
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 1.0
    normalize_reward: bool = True
    terminal_channel: bool = False
    clip_actions: bool = True
    energy: dict[str, Any] = field(default_factory=_default_energy)
    energy_steps: int = 1000
    energy_batch_size: int = 64
    energy_lr: float = 1e-3
    num_negatives: int = 10
    energy_positives: int | None = 512
    negative_sampler_steps: int | None = 16
    inpaint_resample: int = 1
    mark_key: str | None = None
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def from_options(cls, preset: str | None = None, **options: Any) -> EDISConfig:
        """Build a config from a preset name (None/"cpu" or "paper") and explicit options (which win).

        Example:
            >>> cfg = EDISConfig.from_options("paper", num_samples=1000)
            >>> cfg.denoiser["width"], cfg.sampler_steps, cfg.num_samples
            (1024, 128, 1000)
        """
        if preset is None:
            preset = "cpu"
        if preset not in PRESETS:
            raise ValueError(f"unknown EDIS preset {preset!r}; accepted presets: {sorted(PRESETS)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hint = "; ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in hints.items())
            raise TypeError(f"unknown EDIS option(s) {hint}. Accepted options: {sorted(known)}.")
        merged = dict(PRESETS[preset])
        for key, value in options.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                value = {**merged[key], **value}  # a partial nested override keeps the preset's other entries
            merged[key] = value
        cfg = cls(**{k: dict(v) if isinstance(v, Mapping) else v for k, v in merged.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` on out-of-range options, naming the option, the value and what is accepted."""
        unknown = sorted(set(self.guidance) - set(ENERGY_NAMES))
        if unknown:
            raise ValueError(f"guidance has unknown energies {unknown}; accepted keys: {list(ENERGY_NAMES)}.")
        for name in ENERGY_NAMES:
            self.guidance.setdefault(name, 0.0)
        if any(float(w) < 0 for w in self.guidance.values()):
            raise ValueError(f"guidance weights must be >= 0 (0 turns an energy off), got {self.guidance}.")
        if not 0.0 <= float(self.synthetic_fraction) <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}.")
        positive = (
            "num_samples", "sampler_steps", "sample_batch_size", "diffusion_steps", "batch_size",
            "energy_batch_size", "num_negatives",
        )  # fmt: skip
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if int(self.energy_steps) < 0:
            raise ValueError(f"energy_steps must be >= 0, got {self.energy_steps}.")
        if not 0.0 <= float(self.ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}.")
        if int(self.ema_every) < 1 or int(self.ema_start) < 0:
            raise ValueError(f"need ema_every >= 1 and ema_start >= 0, got {self.ema_every} and {self.ema_start}.")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (AdamW's), got {self.betas}.")
        self.betas = betas


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": {
        "num_samples": 100_000,
        "sampler_steps": 128,
        "sample_batch_size": 25_000,
        "denoiser": {"width": 1024, "blocks": 6, "embed_dim": 256, "activation": "relu", "layer_norm": False},
        "diffusion_steps": 10_000,
        "batch_size": 256,
        "lr": 3e-4,
        "betas": (0.9, 0.99),
        "ema_every": 10,
        "ema_start": 100,
        "energy": {"width": 256, "depth": 3},
        "energy_steps": 20,
        "energy_batch_size": 256,
        "energy_positives": None,
        "negative_sampler_steps": None,
        "device": "auto",
    },
}
