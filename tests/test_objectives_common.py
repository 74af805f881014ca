"""The loss family: one base (keys, declared out_keys, value estimator, forward, priorities) under every diffrl loss."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

from diffrl import registry
from diffrl.diffusion import ddpm
from diffrl.objectives.common import DiffrlLossBase


def make_batch(n: int = 6, *, terminated: bool = False) -> TensorDict:
    g = torch.Generator().manual_seed(3)
    td = TensorDict(
        {
            "observation": torch.randn(n, 3, generator=g),
            "action": torch.rand(n, 2, generator=g) * 2 - 1,
            "mc_return": torch.randn(n, 1, generator=g),
            ("next", "observation"): torch.randn(n, 3, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.full((n, 1), terminated),
            ("next", "terminated"): torch.full((n, 1), terminated),
        },
        [n],
    )
    return td


def diffusion_actor(network: str = "diffusion_ql"):
    return registry.build(
        "actor", {"name": "diffusion", "network": network, "hidden_sizes": [8], "num_steps": 3}, obs_dim=3, action_dim=2
    )


def twin_q():
    return registry.build("critic", {"name": "twin_q", "hidden_sizes": [8]}, obs_dim=3, action_dim=2)


def tanh_actor():
    net = nn.Sequential(nn.Linear(3, 4), NormalParamExtractor())
    module = TensorDictModule(net, ["observation"], ["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=TanhNormal)


def single_q():
    return ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])


LOSSES = {
    "diffusion_ql": lambda: registry.build(
        "loss", "diffusion_ql", actor_network=diffusion_actor(), qvalue_network=twin_q()
    ),
    "qsm": lambda: registry.build("loss", "qsm", actor_network=diffusion_actor("qsm"), qvalue_network=twin_q()),
    "cal_ql": lambda: registry.build("loss", "cal_ql", actor_network=tanh_actor(), qvalue_network=single_q()),
    "cal_ql_lagrange": lambda: registry.build(
        "loss", {"name": "cal_ql", "cql_lagrange": True}, actor_network=tanh_actor(), qvalue_network=single_q()
    ),
    "diffusion_bc": lambda: registry.build("loss", "diffusion_bc", actor_network=diffusion_actor()),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_derives_from_the_base_and_returns_exactly_its_declared_out_keys(name):
    torch.manual_seed(0)
    loss = LOSSES[name]()
    assert isinstance(loss, DiffrlLossBase)
    out = loss(make_batch())
    assert sorted(out.keys()) == sorted(loss.out_keys)
    if type(loss).forward is DiffrlLossBase.forward:  # the base's forward also keeps the declared order
        assert list(out.keys()) == loss.out_keys
    assert loss.out_keys[0] == "loss_actor"
    for key in loss.out_keys:
        assert key.startswith("loss_") or not out[key].requires_grad, f"diagnostic {key} is not detached"
    assert sorted(k for k in loss.out_keys if k.startswith("loss_")) == sorted(f"loss_{t}" for t in loss.loss_terms)


def test_select_out_keys_narrows_the_output():
    torch.manual_seed(0)
    loss = LOSSES["diffusion_ql"]()
    loss.select_out_keys("loss_actor", "q_term")
    out = loss(make_batch())
    assert sorted(out.keys()) == ["loss_actor", "q_term"]


@pytest.mark.parametrize("name", ["diffusion_ql", "qsm", "cal_ql"])
def test_every_critic_loss_writes_the_squared_td_error_as_priority(name):
    # Zero critics give Q = 0, and terminal transitions give y = r: the priority must be max_i (Q_i - y)^2 = r^2.
    torch.manual_seed(0)
    loss = LOSSES[name]()
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            for value in params.values(True, True):
                value.zero_()
    batch = make_batch(terminated=True)
    loss(batch)
    torch.testing.assert_close(batch["td_error"], batch["next", "reward"].squeeze(-1).pow(2))


def test_cal_ql_shares_the_base_keys_and_keeps_its_own():
    loss = LOSSES["cal_ql"]()
    fields = set(loss._AcceptedKeys.__dataclass_fields__)
    assert set(DiffrlLossBase._AcceptedKeys.__dataclass_fields__) <= fields
    assert {"value", "log_prob", "mc_return"} <= fields
    loss.make_value_estimator(gamma=0.9)
    loss.set_keys(reward="rew", value="v")
    assert loss.value_estimator.tensor_keys.reward == "rew"
    assert loss.value_estimator.tensor_keys.value == "v"
    assert ("next", "rew") in loss.in_keys


def test_set_keys_moves_the_in_keys_of_the_base():
    loss = LOSSES["qsm"]()
    assert loss.in_keys[:2] == ["observation", "action"]
    loss.set_keys(observation="obs")
    assert loss.in_keys[:3] == ["obs", "action", ("next", "obs")]


def test_actor_add_noise_is_the_forward_process():
    actor = diffusion_actor()
    action, step, eps = torch.rand(4, 2), torch.tensor([0, 1, 2, 2]), torch.randn(4, 2)
    noisy, returned = actor.add_noise(action, step, eps)
    assert returned is eps
    torch.testing.assert_close(noisy, ddpm.q_sample(actor.schedule, action, step, eps), rtol=0, atol=0)
    abar = actor.schedule.alphas_cumprod[step].unsqueeze(-1)
    torch.testing.assert_close(noisy, abar.sqrt() * action + (1 - abar).sqrt() * eps)
    torch.manual_seed(1)
    drawn_noisy, drawn = actor.add_noise(action, step)
    torch.manual_seed(1)
    torch.testing.assert_close(drawn, torch.randn(4, 2))
    torch.testing.assert_close(drawn_noisy, ddpm.q_sample(actor.schedule, action, step, drawn))


def test_qsm_noises_actions_through_the_actor():
    torch.manual_seed(0)
    loss = LOSSES["qsm"]()
    calls = []
    original = loss.actor_network.add_noise

    def spy(action, step, noise=None):
        calls.append(step)
        return original(action, step, torch.zeros_like(action))  # a_t = sqrt(abar_t) a: no noise at all

    loss.actor_network.add_noise = spy
    batch = make_batch()
    _, metadata = loss.actor_loss(batch)
    assert len(calls) == 1 and calls[0].shape == (6,)
    abar = loss.actor_network.schedule.alphas_cumprod[calls[0]].unsqueeze(-1)
    target = loss.score_target(batch["observation"], abar.sqrt() * batch["action"])
    torch.testing.assert_close(metadata["score_norm"], target.norm(dim=-1).mean())
