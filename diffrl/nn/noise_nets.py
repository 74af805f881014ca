"""Noise-prediction networks ``eps = net(x_t, t, condition)`` of the discrete diffusion policies.

* ``DiffusionQLNoiseNet`` (Wang et al., 2023): sinusoidal step embedding (16) -> Linear(16, 32) -> Mish ->
  Linear(32, 16); ``cat[a_t, t_emb, s]`` -> 3 x (Linear 256, Mish) -> Linear(action_dim).
* ``QSMNoiseNet`` (Psenka et al., 2024): learnable Fourier features of t (32 frequencies, std 0.2) -> MLP 128-128
  with Mish in between; ``cat[a_t, s, t_cond]`` -> 2 x (Linear 512, Mish) -> Linear(action_dim).

Both are a time encoder plus a flat stack of ``nn.Linear`` layers whose first layer reads the concatenation of the
noisy action, the condition and the time features. ``bind`` exploits that layout for sampling: the first layer is
linear in each input part, so the condition's and every step's time contribution are computed once per sampling call
instead of once per step, and the per-step work is one matrix product on the noisy action plus the trunk. ``bind`` is
an exact refactoring of ``forward`` (same numbers, same autograd graph through the parameters) and reads the
parameters when called, so it is safe under TorchRL's functional-parameter contexts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrl.nn.activations import mish as fast_mish
from diffrl.nn.embeddings import FourierFeatures, SinusoidalEmbedding
from diffrl.nn.mlp import INITS, MLP, _check_sizes, activation_fn, init_linear_, inplace_activation_fn

__all__ = ["ConditionalNoiseNet", "DiffusionQLNoiseNet", "QSMNoiseNet", "NOISE_NETS"]

_PARTS = ("action", "time", "condition")
_PRECOMPUTE_LIMIT = 1 << 18  # elements (1 MiB of float32) of per-step first-layer biases computed up front


class ConditionalNoiseNet(nn.Module):
    """A time encoder plus an MLP over ``cat`` of (noisy action, time features, condition) in ``input_order``.

    Call: ``eps = net(x_t, t, condition)`` with ``x_t: [*B, action_dim]``, ``t``: integer step index ``[*B]`` (or
    anything broadcastable to ``*B``, e.g. a 0-d tensor or an int) and ``condition: [*B, obs_dim]`` (broadcastable).

    Subclasses only choose the time encoder, widths and input order. See ``DiffusionQLNoiseNet`` for an example.

    ``init`` re-initialises every ``nn.Linear`` (trunk and time encoder), one of ``diffrl.nn.mlp.INITS``:
    ``"xavier_uniform"`` is what the QSM authors' jaxrl5 networks use (Glorot-uniform, biases 0, every Dense layer).
    Default ``"default"`` (``nn.Linear``'s own), as Diffusion-QL's official PyTorch networks.
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        time_encoder: nn.Module,
        time_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        input_order: Sequence[str],
        init: str = "default",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")
        if sorted(input_order) != sorted(_PARTS):
            raise ValueError(f"input_order must be a permutation of {_PARTS}, got {tuple(input_order)}.")
        for label, value in (("action_dim", action_dim), ("obs_dim", obs_dim)):
            if not isinstance(value, int) or value < (1 if label == "action_dim" else 0):
                raise ValueError(
                    f"{label} must be a {'positive' if label == 'action_dim' else 'non-negative'} int, got {value!r}."
                )
        self.action_dim = action_dim
        self.obs_dim = obs_dim
        self.time_dim = time_dim
        self.input_order = tuple(input_order)
        self.time_encoder = time_encoder
        part_dims = {"action": action_dim, "time": time_dim, "condition": obs_dim}
        self._slices: dict[str, slice] = {}
        start = 0
        for part in self.input_order:
            self._slices[part] = slice(start, start + part_dims[part])
            start += part_dims[part]
        sizes = (start, *_check_sizes(hidden_sizes, "hidden_sizes"), action_dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = activation
        # Training runs the trunk with a graph T + 1 times per actor update; aten's Mish is the costliest kernel there
        # on CPU, so the graph path uses diffrl.nn.activations.mish (same values and gradients, about 2x faster).
        self._act = fast_mish if activation == "mish" else activation_fn(activation)
        self._act_inplace = inplace_activation_fn(activation)
        # Every linear layer, the time encoder's included (learnable Fourier frequencies keep their own init).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module.weight, module.bias, init)

    def _trunk(self, h: Tensor) -> Tensor:
        """Everything after the first layer's pre-activation."""
        act = self._act
        h = act(h)
        last = len(self.layers) - 1
        for i in range(1, last):
            h = act(self.layers[i](h))
        return self.layers[last](h)

    def forward(self, x_t: Tensor, t: Tensor | int, condition: Tensor | None = None) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.tensor(t, device=x_t.device)
        cond_batch = condition.shape[:-1] if condition is not None else ()
        batch = torch.broadcast_shapes(x_t.shape[:-1], t.shape, cond_batch)
        parts = {"action": x_t.expand(*batch, self.action_dim), "time": self.time_encoder(t.expand(batch))}
        if self.obs_dim:
            if condition is None:
                raise ValueError(f"{type(self).__name__} was built with obs_dim={self.obs_dim} and needs a condition.")
            parts["condition"] = condition.expand(*batch, self.obs_dim)
        inputs = torch.cat([parts[p] for p in self.input_order if p in parts], dim=-1)
        return self._trunk(self.layers[0](inputs))

    def bind(self, condition: Tensor | None, steps: Sequence[int], batch_shape: Sequence[int]) -> Callable:
        """Precompute the condition's and the time features' share of the first layer for a sampling call.

        Args:
            condition: ``[*Bc, obs_dim]`` broadcastable to ``batch_shape``.
            steps: the step indices the sampler will query.
            batch_shape: the batch shape of the noisy actions.

        Returns:
            ``eps_fn(x_t, step) -> eps`` with ``x_t: [*batch_shape, action_dim]`` and ``step`` one of ``steps``,
            equal to ``self(x_t, step, condition)``.
        """
        batch_shape = torch.Size(batch_shape)
        first = self.layers[0]
        weight = first.weight
        rows = math.prod(batch_shape)
        device = weight.device
        step_index = {int(s): k for k, s in enumerate(steps)}
        t = torch.as_tensor(list(step_index), device=device)
        time_part = F.linear(self.time_encoder(t), weight[:, self._slices["time"]])  # [K, H]
        if self.obs_dim:
            if condition is None:
                raise ValueError(f"{type(self).__name__} was built with obs_dim={self.obs_dim} and needs a condition.")
            cond_part = F.linear(condition, weight[:, self._slices["condition"]], first.bias)
            cond_part = cond_part.expand(*batch_shape, cond_part.shape[-1]).reshape(rows, -1)
        else:
            cond_part = first.bias.expand(rows, -1)
        if len(step_index) * cond_part.numel() <= _PRECOMPUTE_LIMIT:
            # Small sampling calls: every step's first-layer bias in one kernel (fewer launches per step).
            step_bias: Sequence[Tensor] | None = (cond_part.unsqueeze(0) + time_part.unsqueeze(1)).unbind(0)
        else:
            step_bias, time_rows = None, time_part.unbind(0)
        action_weight_t = weight[:, self._slices["action"]].t()
        # Transposed views made once per call: aten::linear would re-transpose every weight at every step.
        layers = [(layer.bias, layer.weight.t()) for layer in self.layers[1:]]
        out_shape = (*batch_shape, self.action_dim)
        act_graph, act_inplace = self._act, self._act_inplace

        def eps_fn(x_t: Tensor, step: int) -> Tensor:
            # Without a graph, activations may overwrite their input (no saved tensors to protect).
            act = act_graph if torch.is_grad_enabled() else act_inplace
            k = step_index[step]
            bias0 = step_bias[k] if step_bias is not None else cond_part + time_rows[k]
            h = torch.addmm(bias0, x_t.reshape(rows, -1), action_weight_t)
            for bias, weight_t in layers:
                h = torch.addmm(bias, act(h), weight_t)
            return h.view(out_shape)

        return eps_fn


class DiffusionQLNoiseNet(ConditionalNoiseNet):
    """Diffusion-QL's noise network (sinusoidal time embedding, ``cat[a_t, t_emb, s]``, 3 x 256 Mish).

    Args:
        obs_dim: observation size (0 for an unconditional model).
        action_dim: action size.
        hidden_sizes: trunk widths. Default ``(256, 256, 256)``.
        time_dim: time-embedding size. Default 16.
        time_hidden: hidden width of the time MLP. Default 32.
        activation: default ``"mish"``.
        init: weight init of every linear layer (``diffrl.nn.mlp.INITS``). Default ``"default"``: the official
            Diffusion-QL code keeps ``nn.Linear``'s init.

    Example:
        >>> import torch
        >>> net = DiffusionQLNoiseNet(obs_dim=3, action_dim=2, hidden_sizes=(32, 32))
        >>> x, s = torch.randn(4, 7, 2), torch.randn(4, 7, 3)
        >>> eps = net(x, torch.full((4, 7), 2), s)
        >>> fn = net.bind(s, steps=[2], batch_shape=(4, 7))
        >>> eps.shape, torch.allclose(fn(x, 2), eps, atol=1e-6)
        (torch.Size([4, 7, 2]), True)
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256, 256),
        time_dim: int = 16,
        time_hidden: int = 32,
        activation: str = "mish",
        init: str = "default",
    ) -> None:
        time_encoder = nn.Sequential(
            SinusoidalEmbedding(time_dim), nn.Linear(time_dim, time_hidden), nn.Mish(), nn.Linear(time_hidden, time_dim)
        )
        super().__init__(
            action_dim, obs_dim, time_encoder, time_dim, hidden_sizes, activation, ("action", "time", "condition"), init
        )


class QSMNoiseNet(ConditionalNoiseNet):
    """QSM's noise network (learnable Fourier time features -> MLP 128-128, ``cat[a_t, s, t]``, 2 x 512 Mish).

    Args:
        obs_dim: observation size (0 for an unconditional model).
        action_dim: action size.
        hidden_sizes: trunk widths. Default ``(512, 512)``.
        time_frequencies: Fourier frequencies (features = 2x). Default 32.
        time_hidden: widths of the time MLP; its last width is the time-feature size. Default ``(128, 128)``.
        fourier_std: initial frequency std. Default 0.2.
        activation: default ``"mish"``.
        init: weight init of every linear layer (``diffrl.nn.mlp.INITS``). ``"xavier_uniform"`` follows the QSM
            authors' jaxrl5 code (the qsm configs set it); the default ``"default"`` (``nn.Linear``'s own) keeps
            this class's behaviour for existing users and checkpoints.

    Example:
        >>> import torch
        >>> net = QSMNoiseNet(obs_dim=3, action_dim=2, hidden_sizes=(32, 32), time_hidden=(16, 16))
        >>> net(torch.randn(5, 2), torch.tensor(1), torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (512, 512),
        time_frequencies: int = 32,
        time_hidden: Sequence[int] = (128, 128),
        fourier_std: float = 0.2,
        activation: str = "mish",
        init: str = "default",
    ) -> None:
        time_hidden = _check_sizes(time_hidden, "time_hidden")
        fourier = FourierFeatures(time_frequencies, std=fourier_std)
        time_encoder = nn.Sequential(
            fourier, MLP(fourier.dim, time_hidden[-1], time_hidden[:-1], activation=activation)
        )
        super().__init__(
            action_dim,
            obs_dim,
            time_encoder,
            time_hidden[-1],
            hidden_sizes,
            activation,
            ("action", "condition", "time"),
            init,
        )


NOISE_NETS = {"diffusion_ql": DiffusionQLNoiseNet, "qsm": QSMNoiseNet}
