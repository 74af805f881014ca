"""The registered diffusion actor: shapes, bounds, exploration modes, loss-facing methods, TorchRL integration."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from diffrl import registry
from diffrl.diffusion import ddpm
from diffrl.modules.diffusion_actor import DiffusionActor, sampling_overrides
from diffrl.objectives.diffusion_bc import DiffusionBCLoss


def small_actor(**kwargs) -> DiffusionActor:
    options = {"obs_dim": 3, "action_dim": 2, "hidden_sizes": (32, 32)}
    options.update(kwargs)
    return DiffusionActor(**options)


def test_registry_builds_the_actor_with_options():
    actor = registry.build(
        "actor",
        {"name": "diffusion", "network": "qsm", "hidden_sizes": [16, 16], "num_steps": 10, "inference_steps": 4},
        obs_dim=5,
        action_dim=3,
    )
    assert isinstance(actor, DiffusionActor)
    assert (actor.obs_dim, actor.action_dim, actor.num_steps, actor.schedule.num_steps) == (5, 3, 10, 10)
    assert actor.sampler == "ddim" and actor.inference_steps == 4  # fewer inference steps -> DDIM
    assert [layer.out_features for layer in actor.network.layers] == [16, 16, 3]
    with pytest.raises(ValueError, match="Use sampler='ddim' for fewer inference steps"):
        DiffusionActor(3, 2, num_steps=10, inference_steps=4, sampler="qsm")
    with pytest.raises(ValueError, match="unknown network 'unet'"):
        DiffusionActor(3, 2, network="unet")


def test_all_parameters_live_in_the_network():
    actor = small_actor()
    assert {id(p) for p in actor.parameters()} == {id(p) for p in actor.network.parameters()}


@pytest.mark.parametrize("batch", [(), (6,), (2, 5)])
def test_forward_and_sample_shapes(batch):
    actor = small_actor()
    td = TensorDict({"observation": torch.randn(*batch, 3)}, batch_size=batch)
    assert actor(td)["action"].shape == (*batch, 2)
    assert actor.sample(td["observation"], num_samples=4).shape == (*batch, 4, 2)
    assert actor.denoising_loss(td["observation"], torch.rand(*batch, 2)).shape == batch


def test_nested_keys():
    actor = small_actor(in_keys=[("agent", "obs")], out_keys=[("agent", "act")])
    td = TensorDict({"agent": {"obs": torch.randn(4, 3)}}, batch_size=[4])
    assert actor(td)["agent", "act"].shape == (4, 2)
    loss = DiffusionBCLoss(actor)
    loss.set_keys(observation=("agent", "obs"), action=("agent", "act"))
    assert loss.in_keys == [("agent", "obs"), ("agent", "act")]
    assert loss(td)["loss_actor"].shape == ()
    with pytest.raises(KeyError, match="DiffusionActor reads 'observation'"):
        small_actor()(td)


def test_per_dimension_bounds_hold_for_every_sampler():
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.1])
    for sampler, extra in (("diffusion_ql", {}), ("qsm", {}), ("ddim", {"num_steps": 20, "inference_steps": 5})):
        actor = small_actor(action_low=low, action_high=high, sampler=sampler, **extra)
        with torch.no_grad():  # scramble the network so the chain runs far out of bounds
            for p in actor.network.parameters():
                p.mul_(20)
        a = actor.sample(torch.randn(500, 3))
        assert bool(((a >= low) & (a <= high)).all())
        assert bool((a[:, 1] == 0.1).any() or (a[:, 1] == 0.0).any())
    with pytest.raises(ValueError, match="action_low must be a scalar or have 2 entries"):
        small_actor(action_low=[-1.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="action_low must be below action_high"):
        small_actor(action_low=1.0, action_high=-1.0)


def test_random_mode_samples_differ_and_deterministic_mode_is_a_fixed_draw():
    torch.manual_seed(0)
    actor = small_actor()
    obs = torch.randn(3)
    td = TensorDict({"observation": torch.stack([obs, torch.randn(3), obs])}, batch_size=[3])
    with set_exploration_type(ExplorationType.RANDOM):
        a1, a2 = actor(td.clone())["action"], actor(td.clone())["action"]
    assert not torch.allclose(a1, a2) and not torch.allclose(a1[0], a1[2])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        d1, d2 = actor(td.clone())["action"], actor(td.clone())["action"]
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(d1[0], d1[2])  # a function of the observation, not of its position in the batch
    assert not torch.allclose(d1[0], d1[1])
    # the deterministic action is one draw of the policy: the sampler fed the seeded noise, not a noise-free chain
    noise_free = actor.sample(td["observation"], noise_scale=0.0, deterministic=True)
    assert not torch.allclose(d1, noise_free)
    generator = torch.Generator().manual_seed(actor.deterministic_seed)
    fixed = torch.randn(actor.num_steps, 2, generator=generator)
    expected = ddpm.sample_diffusion_ql(actor.network, actor.schedule, td["observation"], (3, 2), noise=fixed)
    torch.testing.assert_close(d1, expected)
    # other seeds give other draws: over seeds, deterministic actions keep the policy's spread
    seeds = torch.stack([small_actor(deterministic_seed=s).sample(obs, deterministic=True) for s in range(2)])
    assert not torch.allclose(seeds[0], seeds[1])
    # no context: RANDOM by default, configurable
    assert not torch.allclose(actor(td.clone())["action"], actor(td.clone())["action"])
    det = small_actor(default_interaction_type="deterministic")
    torch.testing.assert_close(det(td.clone())["action"], det(td.clone())["action"])


def test_sample_ignores_the_loss_modules_deterministic_context():
    actor = small_actor()
    obs = torch.randn(8, 3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert not torch.allclose(actor.sample(obs), actor.sample(obs))


def test_gradients_through_sampling_and_the_denoising_loss():
    torch.manual_seed(0)
    actor = small_actor()
    obs = torch.randn(16, 3)
    actions = actor.sample(obs, num_samples=3, grad=True)
    actions.sum().backward()
    first = actor.network.layers[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    actor.zero_grad()
    assert not actor.sample(obs).requires_grad
    loss = actor.denoising_loss(obs, torch.rand(16, 2))
    assert loss.shape == (16,) and loss.std() > 0  # per sample, not reduced
    loss.mean().backward()
    assert all(p.grad is not None for p in actor.network.parameters())


def test_predict_noise_is_the_network_at_given_steps():
    actor = small_actor()
    x, obs = torch.randn(4, 2), torch.randn(4, 3)
    steps = torch.tensor([0, 1, 2, 4])
    torch.testing.assert_close(actor.predict_noise(x, steps, obs), actor.network(x, steps, obs))
    torch.testing.assert_close(actor.predict_noise(x, 3, obs), actor.network(x, torch.full((4,), 3), obs))
    with pytest.raises(ValueError, match="noisy_action must have a last dimension of 2"):
        actor.predict_noise(torch.randn(4, 3), 1, obs)


def test_functional_parameters_are_used_and_not_cached():
    """TorchRL losses swap parameters in with params.to_module(actor): the actor must read them on every call."""
    torch.manual_seed(0)
    actor = small_actor()
    obs = torch.randn(5, 3)
    params = TensorDict.from_module(actor)
    zeros = params.clone().zero_()
    reference = actor.sample(obs, deterministic=True)
    with zeros.to_module(actor):
        assert actor.predict_noise(torch.randn(5, 2), 2, obs).abs().max() == 0
        zeroed = actor.sample(obs, deterministic=True)
    generator = torch.Generator().manual_seed(0)
    fixed = torch.randn(5, 2, generator=generator)
    eps_zero = ddpm.sample_diffusion_ql(lambda x, t, c: torch.zeros_like(x), actor.schedule, obs, (5, 2), noise=fixed)
    torch.testing.assert_close(zeroed, eps_zero)
    torch.testing.assert_close(actor.sample(obs, deterministic=True), reference)


def test_diffusion_bc_loss_learns_a_conditional_policy_and_honours_set_keys():
    """Diffusion BC on a = 0.5 s_0 + noise: the sampled actions follow the observation after a short training."""
    torch.manual_seed(0)
    actor = DiffusionActor(obs_dim=2, action_dim=1, hidden_sizes=(64, 64))
    loss_fn = DiffusionBCLoss(actor)
    loss_fn.set_keys(observation="state", action="act")
    assert loss_fn.in_keys == ["state", "act"]
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-3)

    def batch(n: int = 256) -> TensorDict:
        state = torch.rand(n, 2) * 2 - 1
        return TensorDict({"state": state, "act": 0.5 * state[:, :1] + 0.05 * torch.randn(n, 1)}, batch_size=[n])

    fixed = batch(1024)
    before = loss_fn(fixed)["loss_actor"].item()
    for _ in range(300):
        out = loss_fn(batch())
        optim.zero_grad()
        out["loss_actor"].backward()
        optim.step()
    assert loss_fn(fixed)["loss_actor"].item() < 0.5 * before
    states = torch.tensor([[-0.8, 0.3], [0.0, -0.5], [0.8, 0.0]])
    means = actor.sample(states, num_samples=500).mean(-2).squeeze(-1)
    assert means.tolist() == pytest.approx([-0.4, 0.0, 0.4], abs=0.1)
    with pytest.raises(TypeError, match="needs an actor with a denoising_loss"):
        DiffusionBCLoss(torch.nn.Linear(2, 2))


def test_diffusion_bc_reduction_none_and_loss_mask():
    actor = small_actor()
    batch = TensorDict({"observation": torch.randn(6, 3), "action": torch.rand(6, 2)}, batch_size=[6])
    per_sample = DiffusionBCLoss(actor, reduction="none")(batch)["loss_actor"]
    assert per_sample.shape == (6,)
    assert registry.get("loss", "diffusion_bc") is DiffusionBCLoss


def test_actor_runs_in_a_collector_on_pendulum():
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv

    torch.manual_seed(0)
    env = GymEnv("Pendulum-v1")
    actor = registry.build(
        "actor",
        {"name": "diffusion", "hidden_sizes": [32, 32]},
        obs_dim=3,
        action_dim=1,
        action_low=-2.0,
        action_high=2.0,
    )
    collector = Collector(env, actor, frames_per_batch=40, total_frames=80, auto_register_policy_transforms=False)
    batches = [batch for batch in collector]
    collector.shutdown()
    actions = torch.cat([b["action"] for b in batches])
    assert actions.shape == (80, 1)
    assert bool((actions.abs() <= 2).all()) and actions.std() > 0.1
    assert bool(torch.isfinite(batches[-1]["next", "reward"]).all())
    env.close()


def test_per_call_sampler_override_equals_an_actor_built_with_it():
    """``sample(..., sampler=, inference_steps=)`` (critic targets, evaluation) is the actor built with those options,
    same weights and seed; the actor's own setting is untouched."""
    torch.manual_seed(0)
    actor = small_actor(num_steps=6)
    ddim = small_actor(num_steps=6, inference_steps=3)
    ddim.load_state_dict(actor.state_dict())
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    got = actor.sample(obs, num_samples=4, inference_steps=3)
    torch.manual_seed(1)
    torch.testing.assert_close(got, ddim.sample(obs, num_samples=4))
    torch.manual_seed(1)
    default = actor.sample(obs, num_samples=4)
    assert not torch.allclose(default, got) and actor.sampler == "diffusion_ql"
    fixed = actor.sample(obs, deterministic=True, sampler="ddim", inference_steps=2)
    torch.testing.assert_close(fixed, actor.sample(obs, deterministic=True, sampler="ddim", inference_steps=2))
    with pytest.raises(ValueError, match="sampler='ddim' for fewer steps"):
        actor.sample(obs, sampler="qsm", inference_steps=3)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        actor.sample(obs, sampler="euler")


def test_denoising_loss_reconstruction_is_clamped_and_differentiable():
    torch.manual_seed(2)
    actor = small_actor(action_low=-0.5, action_high=0.5)
    obs, action = torch.randn(64, 3), torch.rand(64, 2) - 0.5
    torch.manual_seed(3)
    loss, a0 = actor.denoising_loss(obs, action, return_reconstruction=True)
    torch.manual_seed(3)
    torch.testing.assert_close(loss, actor.denoising_loss(obs, action))  # same draws, same loss
    assert a0.shape == (64, 2) and bool((a0.abs() <= 0.5).all()) and a0.requires_grad
    (grad,) = torch.autograd.grad(a0.sum(), [actor.network.layers[-1].bias])
    assert grad.abs().sum() > 0


def test_sampling_overrides_are_validated_and_steer_sample():
    actor = DiffusionActor(obs_dim=3, action_dim=1, hidden_sizes=(8,), num_steps=5)
    assert sampling_overrides(actor, None, None) == {}
    with pytest.raises(ValueError):
        sampling_overrides(actor, "nope", None)
    with pytest.raises(ValueError):
        sampling_overrides(actor, "ddim", 9)  # more than T
    kwargs = sampling_overrides(actor, "ddim", 2)
    observation = torch.randn(4, 3)
    torch.manual_seed(0)
    overridden = actor.sample(observation, **kwargs)
    torch.manual_seed(0)
    direct = actor.sample(observation, sampler="ddim", inference_steps=2)
    torch.manual_seed(0)
    own = actor.sample(observation)
    assert torch.equal(overridden, direct) and not torch.equal(overridden, own)
