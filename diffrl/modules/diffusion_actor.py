"""The diffusion policy shared by Diffusion-QL, QSM and EDIS, as a TensorDict module registered as actor "diffusion".

It owns a noise network (all its parameters live in ``actor.network``), a fixed ``DiffusionSchedule`` and the action
bounds, and exposes the three operations losses need: the behaviour-cloning epsilon loss on given actions, the noise
prediction at given noisy actions and steps, and sampling (with or without graph, with N samples per observation).
Nothing derived from the parameters is cached, so TorchRL's ``params.to_module(actor)`` contexts see the swapped
parameters on every call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, exploration_type

from diffrl import registry
from diffrl.diffusion import ddpm
from diffrl.diffusion.schedules import DiffusionSchedule
from diffrl.nn.noise_nets import NOISE_NETS

__all__ = [
    "DiffusionActor",
    "action_bounds",
    "check_precision",
    "native_bf16",
    "precision_context",
    "sampling_overrides",
]

_PRECISIONS = ("fp32", "bf16")


def action_bounds(low: Any, high: Any, action_dim: int) -> tuple[Tensor, Tensor]:
    """Per-dimension float32 ``(low, high)`` of shape ``[action_dim]`` from scalars, sequences or tensors.

    Example:
        >>> low, high = action_bounds(-2.0, [1.0, 2.0], 2)
        >>> low.tolist(), high.tolist()
        ([-2.0, -2.0], [1.0, 2.0])
    """
    bounds = []
    for name, value in (("action_low", low), ("action_high", high)):
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        if tensor.ndim > 1 or (tensor.ndim == 1 and tensor.numel() not in (1, action_dim)):
            raise ValueError(
                f"{name} must be a scalar or have {action_dim} entries (one per action dimension), "
                f"got shape {tuple(tensor.shape)}."
            )
        bounds.append(tensor.expand(action_dim).clone())
    if not bool((bounds[0] < bounds[1]).all()):
        raise ValueError(f"action_low must be below action_high everywhere, got {bounds[0]} and {bounds[1]}.")
    return bounds[0], bounds[1]


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively: AMX or AVX512_BF16 on CPU, bf16 support on CUDA.

    Elsewhere bf16 matrix products are emulated and slower than float32.

    Example:
        >>> isinstance(native_bf16("cpu"), bool)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def sampling_overrides(actor: Any, sampler: str | None, inference_steps: int | None) -> dict[str, Any]:
    """Keyword arguments that make ``actor.sample`` use ``sampler`` / ``inference_steps`` instead of its own.

    Empty when both are None (the actor's own choice). Otherwise both are validated now, by the actor's
    ``_sampling_choice`` when it has one (unknown sampler, steps out of range, fewer steps without DDIM), so a bad
    option fails at construction rather than at the first sample.

    Example:
        >>> actor = DiffusionActor(obs_dim=3, action_dim=1, hidden_sizes=(8,))
        >>> sampling_overrides(actor, None, None)
        {}
        >>> sampling_overrides(actor, "ddim", 2)
        {'sampler': 'ddim', 'inference_steps': 2}
        >>> try:
        ...     sampling_overrides(actor, "nope", None)
        ... except ValueError:
        ...     print("rejected")
        rejected
    """
    if sampler is None and inference_steps is None:
        return {}
    choose = getattr(actor, "_sampling_choice", None)
    if choose is not None:
        choose(sampler, inference_steps)
    return {"sampler": sampler, "inference_steps": inference_steps}


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise a one-line ValueError unless ``precision`` is ``"fp32"``, or ``"bf16"`` on a device with native bf16.

    Example:
        >>> check_precision("fp32", "cpu")
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}.")
    if precision == "bf16" and not native_bf16(device):
        raise ValueError(
            f"precision='bf16' needs native bf16 matrix units (AMX or AVX512_BF16 on CPU, a bf16-capable CUDA GPU), "
            f"which device {str(device)!r} lacks (bf16 would run slower than fp32 there); use precision='fp32'."
        )


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device, bfloat16)`` for ``"bf16"``, a no-op for ``"fp32"``; compiles with ``torch.compile``.

    Example:
        >>> import torch
        >>> with precision_context("fp32", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def deterministic_mode(default_interaction_type: str) -> bool:
    """Whether a module acts deterministically: TorchRL's exploration context if one is set (anything but RANDOM is
    deterministic), else the module's ``default_interaction_type``."""
    mode = exploration_type()
    if mode is None:
        return default_interaction_type == "deterministic"
    return mode != ExplorationType.RANDOM


def _single_key(keys: Sequence[NestedKey] | NestedKey, what: str) -> list[NestedKey]:
    if isinstance(keys, (str, tuple)):
        keys = [keys]
    keys = list(keys)
    if len(keys) != 1:
        raise ValueError(f"DiffusionActor reads and writes exactly one key; {what} got {keys}.")
    return keys


@registry.register("actor", "diffusion")
class DiffusionActor(TensorDictModuleBase):
    """Diffusion policy ``observation -> action`` (Diffusion-QL, Wang et al. 2023; QSM, Psenka et al. 2024).

    Sampling: ``x_T ~ N(0, I)``, then ``T`` reverse steps of the chosen sampler (``diffrl.diffusion.ddpm``), each
    calling ``eps = network(x_t, t, observation)``; the result lies in ``[action_low, action_high]``.

    Exploration modes (TorchRL's ``set_exploration_type``), in ``forward``:

    * ``RANDOM`` (and no context, unless ``default_interaction_type="deterministic"``): fresh Gaussian draws, i.e. a
      sample from the policy.
    * ``DETERMINISTIC`` (and MODE/MEAN/MEDIAN): the same sampler driven by one fixed noise sequence (seeded with
      ``deterministic_seed``) shared by every observation - common random numbers. The action is then a deterministic
      function of the observation and still a genuine draw of the policy, so it varies with the observation and keeps
      the policy's support. A noise-free chain (``noise_scale=0``) is *not* used: it maps every ``x_T`` through the
      mean updates only and collapses a multimodal policy onto points that are often between modes, i.e. a different,
      degenerate policy. Use ``sample(..., noise_scale=0)`` explicitly if that is what you want.

    ``sample`` ignores the exploration mode: it is stochastic unless ``deterministic=True``, so losses (which TorchRL
    runs in DETERMINISTIC mode) get real policy samples.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        action_low, action_high: bounds, scalars or per-dimension. Default -1 and 1.
        network: ``"diffusion_ql"`` (sinusoidal time, 3 x 256 Mish), ``"qsm"`` (Fourier time, 2 x 512 Mish) or an
            ``nn.Module`` called as ``network(x_t, t, observation)``. Default ``"diffusion_ql"``.
        hidden_sizes: trunk widths of a named network (None: the network's default).
        network_kwargs: further options of a named network (``time_dim``, ``time_hidden``, ``activation``, ...).
        schedule: ``"vp"``, ``"linear"`` or ``"cosine"``. Default ``"vp"``.
        schedule_kwargs: options of the schedule (``b_min``, ``b_max``, ...).
        num_steps: training diffusion steps T. Default 5.
        inference_steps: steps used when sampling (None: T). Fewer than T requires DDIM.
        sampler: ``"diffusion_ql"`` (x0 clipped, posterior variance), ``"qsm"`` (x_t clipped, beta variance) or
            ``"ddim"``. Default: ``"diffusion_ql"``, or ``"ddim"`` when ``inference_steps < num_steps``.
        ddim_eta: DDIM's eta. Default 0.
        temperature: multiplies the per-step sampling noise (QSM's temperature). Default 1.
        in_keys, out_keys: the observation key read and the action key written. Defaults ``["observation"]`` and
            ``["action"]``.
        default_interaction_type: behaviour of ``forward`` outside any exploration context, ``"random"`` (default)
            or ``"deterministic"``.
        deterministic_seed: seed of the fixed noise of DETERMINISTIC mode. Default 0.

    Reads ``in_keys[0]`` (``[*B, obs_dim]``) and writes ``out_keys[0]`` (``[*B, action_dim]``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> _ = torch.manual_seed(0)
        >>> actor = DiffusionActor(obs_dim=3, action_dim=2, hidden_sizes=(32, 32), action_high=0.5)
        >>> td = TensorDict({"observation": torch.randn(4, 3)}, batch_size=[4])
        >>> action = actor(td)["action"]
        >>> action.shape, bool(((action >= -1) & (action <= 0.5)).all())
        (torch.Size([4, 2]), True)
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     a1, a2 = actor(td.clone())["action"], actor(td.clone())["action"]
        >>> torch.equal(a1, a2)
        True
        >>> actor.sample(torch.randn(3), num_samples=10).shape
        torch.Size([10, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        action_low: float | Sequence[float] | Tensor = -1.0,
        action_high: float | Sequence[float] | Tensor = 1.0,
        network: str | nn.Module = "diffusion_ql",
        hidden_sizes: Sequence[int] | None = None,
        network_kwargs: Mapping[str, Any] | None = None,
        schedule: str = "vp",
        schedule_kwargs: Mapping[str, float] | None = None,
        num_steps: int = 5,
        inference_steps: int | None = None,
        sampler: str | None = None,
        ddim_eta: float = 0.0,
        temperature: float = 1.0,
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] = ("action",),
        default_interaction_type: str = "random",
        deterministic_seed: int = 0,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.in_keys = _single_key(in_keys, "in_keys")
        self.out_keys = _single_key(out_keys, "out_keys")
        if isinstance(network, nn.Module):
            if hidden_sizes is not None or network_kwargs:
                raise ValueError("hidden_sizes/network_kwargs configure a named network; a module was passed.")
            self.network = network
        elif network in NOISE_NETS:
            options = dict(network_kwargs or {})
            if hidden_sizes is not None:
                options["hidden_sizes"] = tuple(hidden_sizes)
            self.network = NOISE_NETS[network](obs_dim=obs_dim, action_dim=action_dim, **options)
        else:
            raise ValueError(f"unknown network {network!r}; accepted: {sorted(NOISE_NETS)} or an nn.Module.")
        self.schedule = DiffusionSchedule.from_name(schedule, num_steps, **dict(schedule_kwargs or {}))
        self.num_steps = num_steps
        steps = ddpm.inference_timesteps(num_steps, inference_steps)  # validates inference_steps
        self.inference_steps = len(steps)
        if sampler is None:
            sampler = "ddim" if self.inference_steps < num_steps else "diffusion_ql"
        if sampler not in ddpm.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(ddpm.SAMPLERS)}.")
        if sampler != "ddim" and self.inference_steps < num_steps:
            raise ValueError(
                f"sampler {sampler!r} visits all {num_steps} training steps, but inference_steps="
                f"{inference_steps}. Use sampler='ddim' for fewer inference steps, or drop inference_steps."
            )
        self.sampler = sampler
        self.ddim_eta = float(ddim_eta)
        self.temperature = float(temperature)
        if default_interaction_type not in ("random", "deterministic"):
            raise ValueError(
                f"default_interaction_type must be 'random' or 'deterministic', got {default_interaction_type!r}."
            )
        self.default_interaction_type = default_interaction_type
        self.deterministic_seed = int(deterministic_seed)
        low, high = action_bounds(action_low, action_high, action_dim)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        # Uniform bounds clamp with Python floats (cheaper than tensor bounds); bounds are fixed at construction.
        uniform = bool((low == low[0]).all() and (high == high[0]).all())
        self._float_bounds = (float(low[0]), float(high[0])) if uniform else None
        self._num_draws = self.inference_steps

    # ------------------------------------------------------------------ operations used by losses
    def _check_last_dim(self, tensor: Tensor, size: int, name: str) -> None:
        if tensor.shape[-1:] != (size,):
            raise ValueError(f"{name} must have a last dimension of {size}, got shape {tuple(tensor.shape)}.")

    def denoising_loss(
        self, observation: Tensor, action: Tensor, *, return_reconstruction: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Per-sample epsilon-prediction loss on clean ``action`` ``[*B, A]`` given ``observation`` ``[*B, S]``.

        Draws ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` per sample and returns ``mean_d (eps_theta(a_t, t, s) - eps)^2``
        with shape ``[*B]`` (unreduced, so the loss can mask, weight or average). With ``return_reconstruction``
        returns ``(loss, a0_hat)``, where ``a0_hat [*B, A]`` is the action reconstructed in one step from the same
        noised action and network call, clamped to the bounds and differentiable (EDP's action approximation;
        :func:`diffrl.diffusion.ddpm.epsilon_loss_and_x0`).
        """
        self._check_last_dim(action, self.action_dim, "action")
        self._check_last_dim(observation, self.obs_dim, "observation")
        if not return_reconstruction:
            return ddpm.epsilon_loss(self.network, self.schedule, action, observation)
        low, high = self._float_bounds if self._float_bounds is not None else (self.action_low, self.action_high)
        return ddpm.epsilon_loss_and_x0(self.network, self.schedule, action, observation, low=low, high=high)

    def predict_noise(self, noisy_action: Tensor, step: Tensor | int, observation: Tensor) -> Tensor:
        """``eps_theta(noisy_action, step, observation)``; ``step`` is an int or an integer tensor broadcastable to
        the batch shape of ``noisy_action``."""
        self._check_last_dim(noisy_action, self.action_dim, "noisy_action")
        step = torch.as_tensor(step, device=noisy_action.device)
        # The network convention is an integer step tensor with the batch shape (a view, no copy).
        batch = torch.broadcast_shapes(noisy_action.shape[:-1], observation.shape[:-1], step.shape)
        return self.network(noisy_action, step.expand(batch), observation)

    def add_noise(self, action: Tensor, step: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The forward process: ``(a_t, eps)`` with ``a_t = sqrt(abar_t) action + sqrt(1 - abar_t) eps``.

        ``step`` holds integer steps with the batch shape of ``action``; ``eps ~ N(0, I)`` is drawn unless ``noise``
        is given. The same noising as :meth:`denoising_loss` (:func:`diffrl.diffusion.ddpm.q_sample`); named as
        TorchRL's ``DiffusionActor.add_noise``.

        Example:
            >>> actor = DiffusionActor(obs_dim=1, action_dim=2, hidden_sizes=(8,), num_steps=5)
            >>> noisy, eps = actor.add_noise(torch.ones(3, 2), torch.tensor([0, 2, 4]), torch.zeros(3, 2))
            >>> bool((noisy[0] > noisy[1]).all() and (noisy[1] > noisy[2]).all()), bool((eps == 0).all())
            (True, True)
        """
        self._check_last_dim(action, self.action_dim, "action")
        if noise is None:
            noise = torch.randn_like(action)
        return ddpm.q_sample(self.schedule, action, step, noise), noise

    def _fixed_noise(self, observation: Tensor, num_samples: int | None, draws: int | None = None) -> Tensor:
        # One seeded draw per candidate index, broadcast over observations: the same observation always gets the same
        # action, wherever it sits in a batch.
        generator = torch.Generator().manual_seed(self.deterministic_seed)
        per_obs = (num_samples, self.action_dim) if num_samples is not None else (self.action_dim,)
        noise = torch.randn(draws or self._num_draws, *per_obs, generator=generator)
        return noise.to(device=observation.device, dtype=observation.dtype)

    def _sampling_choice(self, sampler: str | None, inference_steps: int | None) -> tuple[str, int]:
        """(sampler, steps) of one sampling call: the actor's own unless overridden (validated like the constructor's).

        Example:
            >>> actor = DiffusionActor(obs_dim=1, action_dim=1, hidden_sizes=(8,), num_steps=5)
            >>> choose = actor._sampling_choice
            >>> choose(None, None), choose(None, 2), choose("ddim", None)
            (('diffusion_ql', 5), ('ddim', 2), ('ddim', 5))
        """
        if sampler is None and inference_steps is None:
            return self.sampler, self.inference_steps
        if inference_steps is None:
            steps = self.num_steps
        else:
            steps = len(ddpm.inference_timesteps(self.num_steps, inference_steps))
        if sampler is None:
            sampler = "ddim" if steps < self.num_steps else self.sampler
        if sampler not in ddpm.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(ddpm.SAMPLERS)}.")
        if sampler != "ddim" and steps < self.num_steps:
            raise ValueError(
                f"sampler {sampler!r} visits all {self.num_steps} training steps, but inference_steps={steps}. Use "
                "sampler='ddim' for fewer steps, or drop inference_steps."
            )
        return sampler, steps

    def sample(
        self,
        observation: Tensor,
        num_samples: int | None = None,
        grad: bool = False,
        noise_scale: float = 1.0,
        *,
        deterministic: bool = False,
        sampler: str | None = None,
        inference_steps: int | None = None,
    ) -> Tensor:
        """Sample actions for ``observation`` ``[*B, obs_dim]``.

        Args:
            observation: the conditioning observations.
            num_samples: None for one action per observation (``[*B, A]``), or N for ``[*B, N, A]``.
            grad: keep the graph through the whole chain (Diffusion-QL's Q term). Default False (no graph).
            noise_scale: multiplies the per-step noise (on top of ``temperature``). Default 1.
            deterministic: use the fixed seeded noise of DETERMINISTIC mode. Default False.
            sampler: this call's sampler instead of the actor's (e.g. ``"ddim"`` for a cheaper critic target).
                Default None: the actor's.
            inference_steps: this call's number of steps (fewer than ``num_steps`` needs DDIM, which is then the
                default sampler). Default None: the actor's.
        """
        self._check_last_dim(observation, self.obs_dim, "observation")
        sampler, steps = self._sampling_choice(sampler, inference_steps)
        batch = observation.shape[:-1]
        condition = observation
        if num_samples is not None:
            if not isinstance(num_samples, int) or num_samples < 1:
                raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}.")
            batch = (*batch, num_samples)
            condition = observation.unsqueeze(-2)
        if self._float_bounds is not None:
            low, high = self._float_bounds
        else:
            low, high = self.action_low, self.action_high
        kwargs: dict[str, Any] = {}
        if sampler == "ddim":
            kwargs = {"num_inference_steps": steps, "eta": self.ddim_eta}
        return ddpm.sample(
            self.network,
            self.schedule,
            condition,
            (*batch, self.action_dim),
            sampler=sampler,
            low=low,
            high=high,
            noise_scale=noise_scale * self.temperature,
            grad=grad,
            noise=self._fixed_noise(observation, num_samples, steps) if deterministic else None,
            **kwargs,
        )

    # ------------------------------------------------------------------ TensorDict interface
    def is_deterministic_mode(self) -> bool:
        """Whether ``forward`` uses the fixed noise under the current exploration context."""
        return deterministic_mode(self.default_interaction_type)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get(self.in_keys[0], None)
        if observation is None:
            raise KeyError(
                f"DiffusionActor reads {self.in_keys[0]!r}, which is missing from the input (keys: "
                f"{list(tensordict.keys(True, True))}). Pass in_keys=[...] to read another key."
            )
        action = self.sample(observation, grad=torch.is_grad_enabled(), deterministic=self.is_deterministic_mode())
        tensordict.set(self.out_keys[0], action)
        return tensordict

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, num_steps={self.num_steps}, "
            f"inference_steps={self.inference_steps}, sampler={self.sampler!r}"
        )
