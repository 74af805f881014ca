"""build_actor_critic and loss_optimizers: the same networks as building by hand, the groups each optimizer steps."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded

from diffrl import registry
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state

DIMS = {"obs_dim": 3, "action_dim": 2}
IQL = {
    "actor": {"name": "gaussian", "hidden_sizes": [16]},
    "critic": {"name": "q", "hidden_sizes": [16]},
    "value": {"name": "value", "hidden_sizes": [16]},
    "loss": {"name": "iql", "num_qvalue_nets": 2},
}


def _batch(n: int = 8) -> TensorDict:
    g = torch.Generator().manual_seed(1)
    obs, next_obs = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.rand(n, 2, generator=g) * 1.8 - 0.9,
            "next": {
                "observation": next_obs,
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def test_same_weights_as_building_by_hand_in_recipe_order():
    """Recipes rely on the builder drawing weights in the order actor, critic, value: same seed, same networks."""
    torch.manual_seed(0)
    actor, critic, loss = build_actor_critic(IQL, DIMS, value=True, gamma=0.5)
    torch.manual_seed(0)
    hand_actor = registry.build("actor", IQL["actor"], **DIMS)
    hand_critic = registry.build("critic", IQL["critic"], **DIMS)
    hand_value = registry.build("critic", IQL["value"], **DIMS)
    for built, hand in ((actor, hand_actor), (critic, hand_critic), (loss.value_network, hand_value)):
        for (name, a), b in zip(built.state_dict().items(), hand.state_dict().values()):
            assert torch.equal(a, b), name
    assert float(loss.value_estimator.gamma) == 0.5


def test_action_spec_bounds_reach_the_actor():
    spec = Bounded(low=torch.tensor([-3.0, 0.0]), high=torch.tensor([3.0, 0.5]), shape=(2,))
    cfg = {**IQL, "actor": {"name": "tanh_normal", "hidden_sizes": [16]}, "loss": {"name": "sac"}}
    torch.manual_seed(0)
    actor, _, _ = build_actor_critic(cfg, DIMS, action_spec=spec)
    dist = actor.get_dist(TensorDict({"observation": torch.randn(4, 3)}, batch_size=[4]))
    assert dist.low.tolist() == [-3.0, 0.0] and dist.high.tolist() == [3.0, 0.5]
    actions = dist.sample((256,))
    assert actions[..., 0].abs().max() <= 3.0 and actions[..., 1].min() >= 0.0 and actions[..., 1].max() <= 0.5


def test_without_value_flag_the_value_group_is_not_built():
    with pytest.raises(registry.RegistryError):
        build_actor_critic({**IQL, "value": {"name": "no_such_critic"}}, DIMS, value=True)
    # value=False never reads cfg["value"], so a broken value group does not matter
    cfg = {**IQL, "value": {"name": "no_such_critic"}, "loss": {"name": "sac"}}
    assert build_actor_critic(cfg, DIMS).loss is not None


def test_each_optimizer_steps_only_its_group_and_skips_buffers():
    torch.manual_seed(0)
    _, _, loss = build_actor_critic(IQL, DIMS, value=True, gamma=0.99)
    optims = loss_optimizers(loss, value=1e-2)
    # the Gaussian actor's parameter TensorDict holds buffers that never get a gradient: none is optimized
    actor_params = list(loss.actor_network_params.values(True, True))
    assert any(not p.requires_grad for p in actor_params)
    actor_opt = loss_optimizers(loss, actor=1e-3)["actor"]
    assert all(p.requires_grad for p in actor_opt.param_groups[0]["params"])
    assert len(actor_opt.param_groups[0]["params"]) == sum(p.requires_grad for p in actor_params)

    before = {k: v.detach().clone() for k, v in loss.named_parameters()}
    out = loss(_batch())
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    optims["value"].step()
    moved = {k for k, v in loss.named_parameters() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("value_network_params") for k in moved), moved


def test_unknown_group_is_a_one_line_error_naming_the_accepted_ones():
    _, _, loss = build_actor_critic({**IQL, "loss": {"name": "sac"}}, DIMS)
    with pytest.raises(ValueError, match=r"got the group 'policy'; accepted: actor, critic, value, alpha, alpha_prime"):
        loss_optimizers(loss, policy=1e-3)


def test_training_state_names_optimizers_and_schedules_and_drops_switched_off_parts():
    net = torch.nn.Linear(2, 1)
    optims = {"actor": torch.optim.Adam(net.parameters()), "critic": torch.optim.SGD(net.parameters(), lr=0.1)}
    schedule = torch.optim.lr_scheduler.StepLR(optims["actor"], step_size=3)
    state = training_state(optims, {"actor": schedule}, loss=net, updater=None, edis=None)
    expected = {"loss": net, "optim_actor": optims["actor"], "optim_critic": optims["critic"]}
    assert state == {**expected, "schedule_actor": schedule}
    assert list(training_state({}, edis=net)) == ["edis"]
