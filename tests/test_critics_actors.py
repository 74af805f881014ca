"""Critic builders, the tanh-Gaussian actor and the Q-selection wrapper, alone and inside TorchRL's losses."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type

from diffrl import registry
from diffrl.modules.critics import twin_q
from diffrl.modules.diffusion_actor import DiffusionActor
from diffrl.modules.q_selection import QSelectionActor

OBS, ACT = 4, 2


def batch_td(*batch: int) -> TensorDict:
    return TensorDict(
        {"observation": torch.randn(*batch, OBS), "action": torch.rand(*batch, ACT) * 2 - 1}, batch_size=batch
    )


@pytest.mark.parametrize(
    "kind, name, out_key, width",
    [
        ("actor", "diffusion", "action", ACT),
        ("actor", "tanh_normal", "action", ACT),
        ("actor", "gaussian", "action", ACT),
        ("critic", "twin_q", "state_action_value", 2),
        ("critic", "q", "state_action_value", 1),
        ("critic", "value", "state_value", 1),
    ],
)
def test_registry_builds_each_name_from_obs_and_action_dims(kind, name, out_key, width):
    module = registry.build(kind, {"name": name, "hidden_sizes": [16, 16]}, obs_dim=OBS, action_dim=ACT)
    for batch in [(), (3,), (2, 5)]:
        td = batch_td(*batch)
        if kind == "actor":
            del td["action"]
        assert module(td)[out_key].shape == (*batch, width)


def test_twin_q_members_match_separate_networks_and_are_independent():
    torch.manual_seed(0)
    critic = twin_q(obs_dim=OBS, action_dim=ACT, num_nets=3, hidden_sizes=(32, 32))
    td = batch_td(7)
    q = critic(td)["state_action_value"]
    assert q.shape == (7, 3) and critic.module.num_nets == 3
    ensemble = critic.module.ensemble
    x = torch.cat([td["observation"], td["action"]], -1)
    for n in range(3):
        torch.testing.assert_close(q[:, n : n + 1], ensemble.member(n)(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(q[:, 0], q[:, 1])
    # observation [*B, 1, S] broadcasts against candidate actions [*B, N, A]
    cands = critic.module(td["observation"].unsqueeze(-2), torch.rand(7, 5, ACT))
    assert cands.shape == (7, 5, 3)
    with pytest.raises(ValueError, match="num_nets must be a positive int"):
        twin_q(obs_dim=OBS, action_dim=ACT, num_nets=0)


def test_single_q_trains_inside_torchrl_iql_with_tanh_normal_and_value():
    """TorchRL's IQLLoss duplicates a single Q network itself: `q` (or twin_q with num_nets=1) is what it needs."""
    from torchrl.objectives import IQLLoss, SoftUpdate

    torch.manual_seed(0)
    actor = registry.build("actor", {"name": "tanh_normal", "hidden_sizes": [32]}, obs_dim=OBS, action_dim=ACT)
    qnet = registry.build(
        "critic", {"name": "twin_q", "num_nets": 1, "hidden_sizes": [32]}, obs_dim=OBS, action_dim=ACT
    )
    vnet = registry.build("critic", {"name": "value", "hidden_sizes": [32]}, obs_dim=OBS, action_dim=ACT)
    loss = IQLLoss(actor_network=actor, qvalue_network=qnet, value_network=vnet, num_qvalue_nets=2)
    SoftUpdate(loss, tau=0.005)
    td = batch_td(16)
    td["action"] = td["action"] * 0.9  # inside the open interval where TanhNormal's log-prob is finite
    td["next"] = TensorDict(
        {
            "observation": torch.randn(16, OBS),
            "reward": torch.randn(16, 1),
            "done": torch.zeros(16, 1, dtype=bool),
            "terminated": torch.zeros(16, 1, dtype=bool),
        },
        batch_size=[16],
    )
    out = loss(td)
    total = out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]
    assert torch.isfinite(total)
    total.backward()
    assert loss.qvalue_network_params.shape == (2,)  # TorchRL made its two copies
    grads = [p.grad for p in loss.qvalue_network_params.values(True, True)]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_tanh_normal_bounds_modes_and_log_prob():
    torch.manual_seed(0)
    actor = registry.build(
        "actor",
        {"name": "tanh_normal", "return_log_prob": True},
        obs_dim=OBS,
        action_dim=ACT,
        action_low=[-2.0, 0.0],
        action_high=[2.0, 0.5],
    )
    td = TensorDict({"observation": torch.randn(200, OBS)}, batch_size=[200])
    with set_exploration_type(ExplorationType.RANDOM):
        a1 = actor(td.clone())
        a2 = actor(td.clone())
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.5])
    assert bool(((a1["action"] >= low) & (a1["action"] <= high)).all())
    assert not torch.allclose(a1["action"], a2["action"])
    log_prob_key = actor.log_prob_keys[0] if hasattr(actor, "log_prob_keys") else actor.log_prob_key
    torch.testing.assert_close(a1[log_prob_key], actor.get_dist(td).log_prob(a1["action"]), atol=1e-4, rtol=1e-4)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        d1, d2 = actor(td.clone())["action"], actor(td.clone())["action"]
    torch.testing.assert_close(d1, d2)


class FixedCandidates(torch.nn.Module):
    """A stand-in actor whose candidates are known: candidate n of every observation is values[n]."""

    in_keys = ["observation"]
    out_keys = ["action"]

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def sample(self, observation, num_samples=None, grad=False, noise_scale=1.0, *, deterministic=False):
        return self.values.expand(*observation.shape[:-1], *self.values.shape)


def distance_critic(target: float) -> TensorDictModule:
    """Q(s, a) = -|a - target|^2 for two "members" (the second offset by a constant, so min picks the first)."""
    return TensorDictModule(
        lambda obs, act: torch.cat([-(act - target).pow(2).sum(-1, keepdim=True)] * 2, -1) - torch.tensor([0.0, 1.0]),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )


@pytest.mark.parametrize("batch", [(), (3,)])
def test_q_selection_argmax_picks_the_best_candidate(batch):
    torch.manual_seed(0)
    actor = DiffusionActor(obs_dim=OBS, action_dim=ACT, hidden_sizes=(16, 16))
    policy = QSelectionActor(actor, distance_critic(0.3), num_candidates=20, selection="argmax")
    obs = torch.randn(*batch, OBS)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        chosen = policy(TensorDict({"observation": obs}, batch_size=batch))["action"]
    candidates = actor.sample(obs, num_samples=20, deterministic=True)
    best = (candidates - 0.3).pow(2).sum(-1).argmin(-1)
    expected = candidates.gather(-2, best[..., None, None].expand(*batch, 1, ACT)).squeeze(-2)
    assert chosen.shape == (*batch, ACT)
    torch.testing.assert_close(chosen, expected)
    # RANDOM mode: fresh candidates, still the best of its own set: closer to 0.3 than a typical candidate
    random_choice = policy.select(obs)
    assert (random_choice - 0.3).pow(2).sum(-1).mean() < (candidates - 0.3).pow(2).sum(-1).mean()


def test_q_selection_softmax_frequencies_follow_the_temperature():
    values = torch.tensor([[0.0], [0.5], [1.0]])
    scores = -(values.squeeze(-1) - 1.0).pow(2)  # critic target 1.0: Q = [-1, -0.25, 0]
    obs = torch.zeros(20000, 1)
    for temperature in (0.25, 1.0):
        policy = QSelectionActor(
            FixedCandidates(values), distance_critic(1.0), num_candidates=3, temperature=temperature
        )
        torch.manual_seed(0)
        chosen = policy.select(obs).squeeze(-1)
        freq = torch.stack([(chosen == v).float().mean() for v in values.squeeze(-1)])
        torch.testing.assert_close(freq, torch.softmax(scores / temperature, 0), atol=0.015, rtol=0)
    with pytest.raises(ValueError, match="selection must be one of"):
        QSelectionActor(FixedCandidates(values), distance_critic(1.0), selection="best")


def test_q_selection_reduces_over_members_with_min_by_default():
    values = torch.tensor([[0.0], [1.0]])
    # member 0 prefers candidate 1, member 1 prefers candidate 0 strongly: min picks candidate 0
    critic = TensorDictModule(
        lambda obs, act: torch.cat([act, -5 * act], -1),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )
    obs = torch.zeros(5, 1)
    assert (
        QSelectionActor(FixedCandidates(values), critic, num_candidates=2, selection="argmax").select(obs).eq(0.0).all()
    )
    mean_policy = QSelectionActor(FixedCandidates(values), critic, num_candidates=2, selection="argmax", reduce="max")
    assert mean_policy.select(obs).eq(1.0).all()


@pytest.mark.slow
def test_compiled_q_selection_and_sampling_match_eager():
    """``torch.compile(policy.select)`` / ``torch.compile(actor.sample)`` (bench_sampling.py --compile) capture the
    whole stochastic chain in one graph and draw the eager actions (inductor's random numbers follow eager mode under
    ``fallback_random``); deterministic mode (fixed noise, argmax) compiles too and gives the eager action."""
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    actor = DiffusionActor(obs_dim=5, action_dim=3, hidden_sizes=(32, 32))
    policy = QSelectionActor(actor, twin_q(obs_dim=5, action_dim=3, hidden_sizes=(32,)), num_candidates=16)
    obs = torch.randn(4, 5)
    with torch.no_grad(), inductor_config.patch(fallback_random=True):
        for fn, kwargs in ((policy.select, {}), (actor.sample, {"num_samples": 7})):
            compiled = torch.compile(fn, fullgraph=True)
            for seed in (3, 4):
                torch.manual_seed(seed)
                eager = fn(obs, **kwargs)
                torch.manual_seed(seed)
                torch.testing.assert_close(compiled(obs, **kwargs), eager)
        # the fixed noise is made outside the graph (a torch.Generator cannot be created inside one)
        torch.testing.assert_close(
            torch.compile(policy.select)(obs, deterministic=True), policy.select(obs, deterministic=True)
        )
