"""TorchRL's losses from the registry: the right classes, the loss_* contract (gradient routing), IQL learning."""

from __future__ import annotations

import pytest
import torch
import torchrl.objectives as tro
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.objectives.torchrl_losses import TorchRLCQLLoss

OBS, ACT, HIDDEN, BATCH = 3, 2, 32, 32
SPEC = Bounded(-1.0, 1.0, (ACT,))
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tanh_normal_actor() -> ProbabilisticActor:
    net = nn.Sequential(MLP(in_features=OBS, out_features=2 * ACT, num_cells=[HIDDEN]), NormalParamExtractor())
    return ProbabilisticActor(
        TensorDictModule(net, ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=SPEC,
    )


def deterministic_actor() -> TensorDictModule:
    net = nn.Sequential(MLP(in_features=OBS, out_features=ACT, num_cells=[HIDDEN]), nn.Tanh())
    return TensorDictModule(net, ["observation"], ["action"])


def q_network() -> ValueOperator:
    return ValueOperator(
        MLP(in_features=OBS + ACT, out_features=1, num_cells=[HIDDEN, HIDDEN]), ["observation", "action"]
    )


def value_network() -> ValueOperator:
    return ValueOperator(MLP(in_features=OBS, out_features=1, num_cells=[HIDDEN, HIDDEN]), ["observation"])


def make_batch(seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(BATCH, OBS, generator=g)
    action = torch.tanh(obs[:, :ACT] + 0.1 * torch.randn(BATCH, ACT, generator=g))
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            ("next", "observation"): torch.randn(BATCH, OBS, generator=g),
            ("next", "reward"): action.sum(-1, keepdim=True),
            ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
            ("next", "terminated"): torch.rand(BATCH, 1, generator=g) < 0.5,
        },
        batch_size=[BATCH],
    )


BUILDERS = {
    "iql": lambda: registry.build(
        "loss",
        {"name": "iql", "expectile": 0.7, "temperature": 3.0, "loss_function": "l2"},
        actor_network=tanh_normal_actor(),
        qvalue_network=q_network(),
        value_network=value_network(),
    ),
    "cql": lambda: registry.build(
        "loss", {"name": "cql", "with_lagrange": True}, actor_network=tanh_normal_actor(), qvalue_network=q_network()
    ),
    "sac": lambda: registry.build("loss", "sac", actor_network=tanh_normal_actor(), qvalue_network=q_network()),
    "td3_bc": lambda: registry.build(
        "loss", "td3_bc", actor_network=deterministic_actor(), qvalue_network=q_network(), action_spec=SPEC
    ),
}

ROUTES = {
    "iql": {
        "loss_actor": {"actor_network_params"},
        "loss_qvalue": {"qvalue_network_params"},
        "loss_value": {"value_network_params"},
    },
    "cql": {
        "loss_actor": {"actor_network_params"},
        "loss_qvalue": {"qvalue_network_params"},
        "loss_cql": {"qvalue_network_params"},
        "loss_alpha": {"log_alpha"},
        "loss_alpha_prime": {"log_alpha_prime"},
    },
    "sac": {
        "loss_actor": {"actor_network_params"},
        "loss_qvalue": {"qvalue_network_params"},
        "loss_alpha": {"log_alpha"},
    },
    "td3_bc": {"loss_actor": {"actor_network_params"}, "loss_qvalue": {"qvalue_network_params"}},
}


def test_registered_names_resolve_to_torchrl_losses():
    assert registry.get("loss", "iql") is tro.IQLLoss
    assert registry.get("loss", "sac") is tro.SACLoss
    assert registry.get("loss", "td3_bc") is tro.TD3BCLoss
    assert registry.get("loss", "cql") is TorchRLCQLLoss and issubclass(TorchRLCQLLoss, tro.CQLLoss)
    assert {"iql", "cql", "sac", "td3_bc"} <= set(registry.names("loss"))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_loss_term_reaches_only_its_parameters(name):
    torch.manual_seed(0)
    loss = BUILDERS[name]()
    SoftUpdate(loss, tau=0.005)
    out = loss(make_batch())
    assert {k for k in out.keys() if k.startswith("loss_")} == set(ROUTES[name])
    for key, params in ROUTES[name].items():
        loss.zero_grad(set_to_none=True)
        out[key].backward(retain_graph=True)
        touched = {n.split(".")[0] for n, p in loss.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert touched == params, key


def test_cql_keeps_bc_term_as_a_diagnostic():
    torch.manual_seed(1)
    loss = BUILDERS["cql"]()
    SoftUpdate(loss, tau=0.005)
    out = loss(make_batch())
    assert "actor_bc" in loss.out_keys and "loss_actor_bc" not in loss.out_keys
    assert not out["actor_bc"].requires_grad and torch.isfinite(out["actor_bc"])
    bc_loss, _ = loss.actor_bc_loss(make_batch())  # still available for a behaviour-cloning warm-up
    bc_loss.backward()
    assert all(p.grad is None for p in loss.qvalue_network_params.values(True, True))
    assert any(p.grad is not None for p in loss.actor_network_params.values(True, True))


def test_iql_loss_falls_on_a_fixed_batch():
    torch.manual_seed(3)
    loss = BUILDERS["iql"]()
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    batch = make_batch(seed=3)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            out = loss(batch.clone())
        return {k: out[k].item() for k in ROUTES["iql"]}

    before = evaluate()
    for _ in range(100):
        out = loss(batch.clone())
        optim.zero_grad()
        sum(out[k] for k in ROUTES["iql"]).backward()
        optim.step()
        updater.step()
    after = evaluate()
    assert after["loss_qvalue"] < 0.1 * before["loss_qvalue"]
    assert after["loss_value"] < max(0.5 * before["loss_value"], 0.01)
    assert after["loss_actor"] < before["loss_actor"] - 2.0  # the advantage-weighted likelihood of data actions rose
