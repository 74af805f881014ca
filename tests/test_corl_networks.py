"""CORL's IQL actor (``gaussian``), CORL's Cal-QL initialisation and scale mapping, QSM's xavier init, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Normal
from torchrl.envs.utils import ExplorationType, set_exploration_type

from diffrl import registry
from diffrl.modules.critics import q, twin_q, value
from diffrl.modules.gaussian_actor import CORLScaleExtractor, gaussian, tanh_normal
from diffrl.nn.noise_nets import DiffusionQLNoiseNet, QSMNoiseNet


def _obs(n: int, dim: int = 3, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(n, dim, generator=g)}, batch_size=[n])


# ---------------------------------------------------------------------------------------------------- gaussian actor


def test_gaussian_is_corl_normal_scaled_to_the_bounds():
    torch.manual_seed(0)
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0])
    actor = gaussian(obs_dim=3, action_dim=2, hidden_sizes=(16,), action_low=low, action_high=high)
    net = actor.module[0].module  # GaussianMeanStd
    td = _obs(6)
    with torch.no_grad():
        net.log_std.copy_(torch.tensor([-0.5, 0.3]))
        mean = torch.tanh(net.mlp(td["observation"]))  # CORL's mean, in [-1, 1]
        center, half = (high + low) / 2, (high - low) / 2
        out = actor(td.clone())  # no exploration context: the deterministic action
        torch.testing.assert_close(out["action"], center + half * mean)
        dist = actor.get_dist(td)
        # log-probabilities of the plain Normal (no tanh correction), summed over action dims, finite at the bounds
        acts = torch.stack([low, high, (low + high) / 2]).repeat(2, 1)
        expected = Normal(center + half * mean, half * torch.tensor([-0.5, 0.3]).exp()).log_prob(acts).sum(-1)
        torch.testing.assert_close(dist.log_prob(acts), expected)
        assert torch.isfinite(dist.log_prob(acts)).all()
        # On [-1, 1] bounds the scaled Normal is CORL's Normal(tanh(MLP(s)), exp(log_std)) exactly.
        corl = Normal(mean, torch.tensor([-0.5, 0.3]).exp()).log_prob((acts - center) / half).sum(-1)
        torch.testing.assert_close(dist.log_prob(acts), corl - half.log().sum())


def test_gaussian_log_std_is_clamped_and_samples_stay_in_bounds():
    torch.manual_seed(0)
    actor = gaussian(obs_dim=3, action_dim=2, hidden_sizes=(8,), action_low=-2.0, action_high=2.0)
    net = actor.module[0].module
    td = _obs(500)
    with torch.no_grad():
        net.log_std.fill_(10.0)  # clamped to 2: scale = 2 * e^2
        assert torch.allclose(actor.get_dist(td).base_dist.scale, torch.tensor(2 * math.exp(2.0)))
        with set_exploration_type(ExplorationType.RANDOM):
            sampled = actor(td.clone())["action"]
        assert sampled.abs().max() <= 2.0 and (sampled.abs() == 2.0).any()  # clamped, and the clamp is reached
        net.log_std.fill_(-50.0)  # clamped to -20
        assert torch.allclose(actor.get_dist(td).base_dist.scale, torch.tensor(2 * math.exp(-20.0)))
    # a state-independent learned vector, initially 0 (std 1 before the half-width), as CORL's
    assert net.log_std.shape == (2,) and isinstance(net.log_std, torch.nn.Parameter)


def _iql_action_error(actor_name: str, steps: int = 300, seed: int = 0) -> float:
    """Train TorchRL's IQLLoss on a 1-D toy and return the deterministic policy's mean abs error to f(s).

    Dataset: s ~ U(-1, 1), a = f(s) = 0.6 sin(3 s), and 10% of the actions replaced by 0.99 * sign(f(s)) (near-bound
    actions on the side the policy leans to, like clipped exploration noise). Rewards 0, every transition terminal.
    """
    from torchrl.objectives import IQLLoss, SoftUpdate

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = 2000
    s = torch.rand(n, 1, generator=g) * 2 - 1
    a = 0.6 * torch.sin(3.0 * s)
    idx = torch.randperm(n, generator=g)[: n // 10]
    a[idx] = 0.99 * torch.sign(a[idx])
    actor = registry.build("actor", {"name": actor_name, "hidden_sizes": [64, 64]}, obs_dim=1, action_dim=1)
    qnet = registry.build("critic", {"name": "q", "hidden_sizes": [32], "activation": "relu"}, obs_dim=1, action_dim=1)
    vnet = registry.build("critic", {"name": "value", "hidden_sizes": [32]}, obs_dim=1, action_dim=1)
    loss = IQLLoss(
        actor_network=actor,
        qvalue_network=qnet,
        value_network=vnet,
        num_qvalue_nets=2,
        temperature=3.0,
        expectile=0.7,
        loss_function="l2",
    )
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(0, n, (256,), generator=g)
        done = torch.ones(256, 1, dtype=torch.bool)
        batch = {"observation": s[i], "reward": torch.zeros(256, 1), "done": done, "terminated": done}
        td = TensorDict({"observation": s[i], "action": a[i], "next": batch}, batch_size=[256])
        out = loss(td)
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]
        optim.zero_grad()
        total.backward()
        optim.step()
        updater.step()
    grid = torch.linspace(-1, 1, 201).unsqueeze(-1)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        pred = actor(TensorDict({"observation": grid}, batch_size=[201]))["action"]
    return float((pred - 0.6 * torch.sin(3.0 * grid)).abs().mean())


def test_iql_with_the_gaussian_actor_recovers_the_action_function():
    """Learning check inside TorchRL's IQLLoss (it scores dataset actions with ``get_dist(td).log_prob``).

    Measured mean abs errors (seeds 0 / 1 / 2; the advantage-weighted mean itself sits about 0.06 from f where 10% of
    the actions are at 0.99): 300 updates: gaussian 0.055 / 0.066 / 0.069, tanh_normal 0.140 / 0.142, the gaussian
    actor scored with a tanh-corrected log-probability (broken) 0.151; 500 updates: gaussian 0.067 / 0.055 / 0.053,
    tanh_normal 0.129 / 0.167, broken 0.183. TanhNormal's near-bound actions sit atanh(0.99) = 2.65 away in pre-tanh
    space and pull its mean harder. Margin 0.1.
    """
    error = _iql_action_error("gaussian")
    assert error < 0.1, f"IQL with the gaussian actor: mean abs action error {error:.3f} (measured 0.055)"


# ------------------------------------------------------------------------------------------ Cal-QL (CORL) networks


def _assert_orthogonal(weight: torch.Tensor, gain: float) -> None:
    """``weight`` is ``[out, in]``: rows orthonormal (out <= in) or columns (out > in), scaled by ``gain``."""
    w = weight.detach()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-4, rtol=0)


def test_corl_scale_mapping_starts_near_037_and_is_clamped():
    extractor = CORLScaleExtractor()
    raw = torch.zeros(4, 2 * 3)
    _, scale = extractor(raw)
    torch.testing.assert_close(scale.detach(), torch.full((4, 3), math.exp(-1.0)))  # 0.3679
    _, scale = extractor(torch.cat([torch.zeros(1, 3), torch.full((1, 3), 50.0)], -1))
    torch.testing.assert_close(scale.detach(), torch.full((1, 3), math.exp(2.0)))
    _, scale = extractor(torch.cat([torch.zeros(1, 3), torch.full((1, 3), -50.0)], -1))
    torch.testing.assert_close(scale.detach(), torch.full((1, 3), math.exp(-20.0)))
    # multiplier and offset are learned scalars (CORL's TanhGaussianPolicy), initially 1 and -1
    assert {n: float(p.detach()) for n, p in extractor.named_parameters()} == {"multiplier": 1.0, "offset": -1.0}

    torch.manual_seed(0)
    actor = tanh_normal(obs_dim=3, action_dim=2, hidden_sizes=(32, 32), scale_mapping="corl", init="orthogonal")
    with torch.no_grad():
        actor.module[0].module[0].layers[-1].weight.zero_()  # raw output = bias = 0 under the orthogonal init
        assert torch.allclose(actor(_obs(5))["scale"], torch.tensor(math.exp(-1.0)))
    default_scale = tanh_normal(obs_dim=3, action_dim=2, hidden_sizes=(32,))(_obs(200))["scale"]
    corl_scale = tanh_normal(obs_dim=3, action_dim=2, hidden_sizes=(32,), scale_mapping="corl")(_obs(200))["scale"]
    assert 0.8 < float(default_scale.detach().median()) < 1.3  # TorchRL's biased softplus starts near 1
    assert 0.25 < float(corl_scale.detach().median()) < 0.5  # CORL's raw - 1 starts near 0.37


@pytest.mark.parametrize("init, check", [("orthogonal", "orth"), ("xavier_uniform", "xavier")])
def test_init_options_reach_every_linear_layer(init, check):
    torch.manual_seed(0)

    def check_layer(weight: torch.Tensor, bias: torch.Tensor) -> None:
        assert bias.abs().max() == 0
        if check == "orth":
            _assert_orthogonal(weight, math.sqrt(2.0))
        else:
            fan_out, fan_in = weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert weight.abs().max() <= bound + 1e-6
            if weight.numel() >= 1000:  # enough entries for the uniform's std sqrt(2 / (fan_in + fan_out))
                assert abs(float(weight.std()) / math.sqrt(2.0 / (fan_in + fan_out)) - 1) < 0.1

    actor = tanh_normal(obs_dim=5, action_dim=2, hidden_sizes=(64, 64), init=init)
    for layer in actor.module[0].module[0].layers:
        check_layer(layer.weight, layer.bias)
    for layer in q(obs_dim=5, action_dim=2, hidden_sizes=(64, 8), init=init).module.mlp.layers:  # 8 < in: columns
        check_layer(layer.weight, layer.bias)
    for layer in value(obs_dim=5, hidden_sizes=(64,), init=init).module.layers:
        check_layer(layer.weight, layer.bias)
    ensemble = twin_q(obs_dim=5, action_dim=2, num_nets=2, hidden_sizes=(64, 64), activation="relu", init=init)
    stacked = ensemble.module.ensemble
    for weight, bias in zip(stacked.weights, stacked.biases):
        for member in range(2):
            check_layer(weight[member].T, bias[member, 0])
        assert not torch.allclose(weight[0], weight[1])  # members drawn independently
    if init == "xavier_uniform":
        net = QSMNoiseNet(obs_dim=5, action_dim=2, hidden_sizes=(64, 64), time_hidden=(32, 32), init=init)
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 5  # 2 in the time MLP, 3 in the trunk
        for layer in linears:
            check_layer(layer.weight, layer.bias)
        assert float(net.time_encoder[0].weight.std()) == pytest.approx(0.2, rel=0.3)  # Fourier kernel: N(0, 0.2)


def test_default_init_is_unchanged():
    torch.manual_seed(0)
    a = DiffusionQLNoiseNet(obs_dim=3, action_dim=2, hidden_sizes=(16,))
    torch.manual_seed(0)
    b = DiffusionQLNoiseNet(obs_dim=3, action_dim=2, hidden_sizes=(16,), init="default")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert a.layers[0].bias.abs().max() > 0  # nn.Linear's own init: non-zero biases


def test_cal_ql_keeps_the_orthogonal_init_of_a_native_ensemble():
    from diffrl.objectives.cal_ql import CalQLLoss

    torch.manual_seed(0)
    actor = tanh_normal(obs_dim=3, action_dim=2, hidden_sizes=(32, 32), init="orthogonal", scale_mapping="corl")
    critic = twin_q(obs_dim=3, action_dim=2, num_nets=2, hidden_sizes=(32, 32), activation="relu", init="orthogonal")
    loss = CalQLLoss(actor_network=actor, qvalue_network=critic)
    weights = [v for k, v in loss.qvalue_network_params.items(True, True) if "weights" in str(k)]
    assert len(weights) == 3
    for weight in weights:
        for member in range(2):
            _assert_orthogonal(weight[member].T, math.sqrt(2.0))


# ----------------------------------------------------------------------------------------------- input checks


BUILDERS = [("actor", "tanh_normal"), ("actor", "gaussian"), ("critic", "twin_q"), ("critic", "q"), ("critic", "value")]


@pytest.mark.parametrize("kind, name", BUILDERS)
@pytest.mark.parametrize(
    "dims, options, argument",
    [
        ({"obs_dim": 0, "action_dim": 2}, {}, "obs_dim"),
        ({"obs_dim": -3, "action_dim": 2}, {}, "obs_dim"),
        ({"obs_dim": 3, "action_dim": 0}, {}, "action_dim"),
        ({"obs_dim": 3.0, "action_dim": 2}, {}, "obs_dim"),
        ({"obs_dim": 3, "action_dim": 2}, {"hidden_sizes": []}, "hidden_sizes"),
        ({"obs_dim": 3, "action_dim": 2}, {"hidden_sizes": [64, 0]}, "hidden_sizes"),
        ({"obs_dim": 3, "action_dim": 2}, {"hidden_sizes": [-1]}, "hidden_sizes"),
        ({"obs_dim": 3, "action_dim": 2}, {"init": "he"}, "init"),
    ],
)
def test_builders_refuse_bad_sizes_with_one_line(kind, name, dims, options, argument):
    if name == "value" and argument == "action_dim":
        pytest.skip("value ignores action_dim")
    with pytest.raises(ValueError) as info:
        registry.build(kind, {"name": name, **options}, **dims)
    message = str(info.value)
    assert "\n" not in message and message.startswith(argument)
    bad = dims.get(argument, options.get(argument))
    assert repr(bad) in message  # names the value it received


def test_tanh_normal_refuses_an_unknown_scale_mapping():
    with pytest.raises(ValueError, match="unknown scale_mapping 'corl2'; accepted"):
        tanh_normal(obs_dim=3, action_dim=2, scale_mapping="corl2")


def test_q_refuses_an_ensemble_size_and_points_to_twin_q():
    with pytest.raises(ValueError, match="use name: twin_q"):
        registry.build("critic", {"name": "q", "num_nets": 2}, obs_dim=3, action_dim=2)
    assert registry.build("critic", {"name": "q", "num_nets": 1}, obs_dim=3, action_dim=2).module.num_nets == 1
