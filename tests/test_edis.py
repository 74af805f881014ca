"""EDIS transform: energy guidance towards online states, dynamics and policy; exact synthetic fraction in a buffer."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.optim.optimizer import register_optimizer_step_post_hook
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from diffrl import registry
from diffrl.data.edis import EDISConfig, EDISTransform
from diffrl.data.edis.training import train_denoiser
from diffrl.diffusion.edm import EDMDenoiser
from diffrl.nn.denoisers import ResidualMLPDenoiser

A, B = 0.9, 0.5  # the known linear system s' = A s + B a of tests (b) and (c)

# small enough for a few seconds per fit on a shared 2-core CPU, large enough to learn 1-3 dimensional toys
SMALL = {
    "diffusion_steps": 800,
    "num_samples": 1000,
    "sampler_steps": 24,
    "denoiser": {"width": 64, "blocks": 2, "embed_dim": 32},
    "energy": {"width": 64, "depth": 2},
    "energy_steps": 150,
    "energy_positives": 256,
    "negative_sampler_steps": 16,
    "seed": 0,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest


def transitions(n, gen, obs_dim=1, state_mean=0.0, offset=0.0, reward_scale=1.0):
    """s ~ N(state_mean, I), a ~ U[-1, 1], s' = A s + B a + offset, r = -reward_scale |s|_1 (TorchRL keys)."""
    s = torch.randn(n, obs_dim, generator=gen) + state_mean
    a = torch.rand(n, 1, generator=gen) * 2 - 1
    return TensorDict(
        {
            "observation": s,
            "action": a,
            "next": {
                "observation": A * s + B * a + offset,
                "reward": -reward_scale * s.abs().sum(-1, keepdim=True),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )


def build(obs_dim=1, **options):
    return registry.build("transform", {"name": "edis", **SMALL, **options}, obs_dim=obs_dim, action_dim=1)


def test_a_state_guidance_moves_samples_to_the_online_states():
    gen = torch.Generator().manual_seed(0)
    offline = transitions(1500, gen, obs_dim=2, state_mean=0.0, reward_scale=10.0)
    online = transitions(500, gen, obs_dim=2, state_mean=2.0, reward_scale=10.0)
    edis = build(obs_dim=2, guidance={"state": 1.0, "policy": 0.0, "transition": 0.0})  # weight 1: the exact target
    metrics = edis.fit(torch.cat([offline, online]), online=online)
    assert set(metrics) == {"diffusion_loss", "energy_loss/state", "time"}
    assert metrics["energy_loss/state"] < torch.log(torch.tensor(11.0)).item()  # better than chance
    plain = edis.sample(1000, guided=False)
    guided = edis.sample(1000, guided=True)
    # the unguided model reproduces the mixture (a quarter online), in raw units (reward column de-normalised too)
    plain_mean = plain["observation"].mean(0)
    assert bool(((plain_mean - 0.5).abs() < 0.3).all()), plain_mean
    assert abs(plain["next", "reward"].mean().item() - torch.cat([offline, online])["next", "reward"].mean()) < 3.0
    guided_mean = guided["observation"].mean(0)
    assert bool(((guided_mean - 2.0).abs() < 0.6).all()), guided_mean
    assert bool(((guided_mean - 2.0).abs() < (plain_mean - 2.0).abs() - 0.8).all()), (plain_mean, guided_mean)
    # the pool was filled with guided samples by fit
    assert edis.pool.shape == (1000,) and edis.pool["observation"].mean() > 1.2


def test_b_transition_energy_lowers_the_dynamics_error():
    gen = torch.Generator().manual_seed(1)
    offline = transitions(1500, gen, offset=1.5)  # the prior learns biased dynamics from most of its data
    online = transitions(500, gen)  # the true system
    edis = build(guidance={"state": 0.0, "policy": 0.0, "transition": 1.0})
    edis.fit(torch.cat([offline, online]), online=online)

    def dynamics_error(td):
        return (td["next", "observation"] - (A * td["observation"] + B * td["action"])).abs().mean().item()

    plain = dynamics_error(edis.sample(1000, guided=False))
    guided = dynamics_error(edis.sample(1000, guided=True))
    assert plain > 0.9  # about 3/4 of 1.5
    assert guided < 0.6 * plain, (plain, guided)


def test_c_policy_energy_moves_actions_to_the_policy():
    gen = torch.Generator().manual_seed(2)
    data = transitions(2000, gen)  # actions independent of the state

    def gain(s):
        return (-0.8 * s).clamp(-1, 1)

    policy = TensorDictModule(gain, in_keys=["observation"], out_keys=["action"])  # as a TorchRL actor is called
    # the default InfoNCE budget: a deterministic policy's log-ratio is sharp, and 150 steps leave it too flat for
    # sigma-scaled guidance (action error 0.43 against 0.28 at 1000 steps; see EDISConfig.guidance_sigma_scale)
    edis = build(guidance={"state": 0.0, "policy": 1.0, "transition": 0.0}, energy_steps=1000)
    metrics = edis.fit(data, online=data[-500:], policy=policy)
    assert "energy_loss/policy" in metrics and not edis.energy_trained["transition"]

    def policy_error(td):
        return (td["action"] - gain(td["observation"])).abs().mean().item()

    plain = policy_error(edis.sample(1000, guided=False))
    guided = policy_error(edis.sample(1000, guided=True))
    assert plain > 0.5
    assert guided < 0.5 * plain, (plain, guided)


@pytest.fixture(scope="module")
def fitted():
    gen = torch.Generator().manual_seed(3)
    edis = build(diffusion_steps=50, num_samples=200, sampler_steps=4, mark_key="synthetic")
    edis.fit(transitions(300, gen))
    return edis


def test_sample_layout_and_dtypes(fitted):
    td = fitted.sample(7, guided=False)
    assert td.batch_size == (7,)
    assert td["observation"].shape == (7, 1) and td["next", "observation"].shape == (7, 1)
    assert td["action"].shape == (7, 1) and td["next", "reward"].shape == (7, 1)
    for key in ["observation", "action", ("next", "reward"), ("next", "observation"), "mc_return"]:
        assert td[key].dtype == torch.float32
    assert not td["next", "done"].any() and not td["next", "terminated"].any() and not td["next", "truncated"].any()
    assert torch.equal(td["mc_return"], torch.zeros(7, 1))
    # generated actions stay inside the range of the fitted data
    assert td["action"].abs().max() <= 1.0


def test_terminal_channel_generates_terminal_flags():
    gen = torch.Generator().manual_seed(6)
    data = transitions(600, gen)
    data["next", "terminated"] = (torch.rand(600, 1, generator=gen) < 0.3) & (data["observation"] > 0)  # ~15%
    edis = build(terminal_channel=True, diffusion_steps=400, num_samples=1000, sampler_steps=16)
    edis.fit(data)
    pool = edis.pool
    assert torch.equal(pool["next", "done"], pool["next", "terminated"]) and not pool["next", "truncated"].any()
    rate = pool["next", "terminated"].float().mean().item()
    assert 0.05 < rate < 0.3, rate
    # terminal samples come from the states that terminate in the data
    assert pool["observation"][pool["next", "terminated"].squeeze(-1)].mean() > 0.3


def test_state_dict_restores_a_usable_transform(fitted):
    restored = build(diffusion_steps=50, num_samples=200, sampler_steps=4, mark_key="synthetic")
    restored.load_state_dict(fitted.state_dict())
    assert restored.energy_trained == fitted.energy_trained and int(restored.num_fits) == 1
    a = fitted.manual_seed(9).sample(6, guided=False)
    b = restored.manual_seed(9).sample(6, guided=False)
    assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["next", "reward"], b["next", "reward"])


@pytest.mark.parametrize(("fraction", "batch"), [(0.25, 10), (0.5, 32), (0.2, 33), (1.0, 8), (0.0, 8)])
def test_d_replay_buffer_synthetic_fraction_is_exact(fitted, fraction, batch):
    fitted.synthetic_fraction = fraction
    real = transitions(100, torch.Generator().manual_seed(4))
    real["observation"] = torch.full((100, 1), 7.0)  # a value the generator never produces exactly
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=batch)
    rb.extend(real)
    rb.append_transform(fitted)
    pool_obs = set(fitted.pool["observation"].flatten().tolist())
    for _ in range(5):
        sample = rb.sample()
        synthetic = sample["observation"].squeeze(-1) != 7.0
        assert int(synthetic.sum()) == round(fraction * batch)
        assert torch.equal(sample["synthetic"], synthetic)  # mark_key flags exactly the replaced rows
        assert set(sample["observation"][synthetic].flatten().tolist()) <= pool_obs
        assert "index" in sample.keys() and "mc_return" not in sample.keys()  # only keys the batch carries
    assert torch.equal(rb.storage[:]["observation"], real["observation"])  # the storage itself is untouched


def test_fit_reads_replay_buffers_and_skips_an_empty_online_buffer():
    gen = torch.Generator().manual_seed(7)
    offline = transitions(64, gen)
    online_rb = TensorDictReplayBuffer(storage=LazyTensorStorage(64), batch_size=8)
    tiny = {"diffusion_steps": 5, "num_samples": 16, "sampler_steps": 2, "energy_steps": 2, "energy_positives": 4}
    edis = build(**tiny)
    metrics = edis.fit([offline, online_rb], online=online_rb, policy=lambda s: s.clamp(-1, 1))
    assert not any(k.startswith("energy_loss") for k in metrics) and not any(edis.energy_trained.values())
    online_rb.extend(transitions(32, gen, state_mean=2.0))
    online_rb.append_transform(edis)  # reading the buffer in fit must bypass this very transform
    metrics = edis.fit([offline, online_rb], online=online_rb, policy=lambda s: s.clamp(-1, 1))
    assert {"energy_loss/state", "energy_loss/policy", "energy_loss/transition"} <= set(metrics)
    assert all(edis.energy_trained.values())
    # the normaliser was fit by the first fit (offline data only) and is frozen since (refit_normalizer=False)
    assert edis.normalizer.mean[0].item() == pytest.approx(offline["observation"].mean().item(), abs=1e-5)


def test_transform_errors_name_the_problem(fitted):
    fitted.synthetic_fraction = 0.5
    batch = transitions(4, torch.Generator().manual_seed(5)).exclude(("next", "reward"))
    with pytest.raises(KeyError, match="next.reward"):
        fitted(batch)
    with pytest.raises(TypeError, match="did you mean 'num_samples'"):
        build(num_sample=3)
    with pytest.raises(RuntimeError, match="call fit"):
        EDISTransform(obs_dim=1, action_dim=1).sample(3)


def test_paper_preset_sizes():
    cfg = EDISTransform(obs_dim=2, action_dim=1, preset="paper", device="cpu").config
    assert (cfg.denoiser["width"], cfg.denoiser["blocks"]) == (1024, 6)
    assert (cfg.sampler_steps, cfg.num_samples, cfg.diffusion_steps, cfg.s_churn) == (128, 100_000, 10_000, 80.0)
    assert cfg.guidance == {"state": 1.0, "policy": 0.2, "transition": 0.2}
    # the official model: ReLU blocks without LayerNorm, AdamW betas (0.9, 0.99), EMA every 10 steps after step 100
    assert (cfg.denoiser["activation"], cfg.denoiser["layer_norm"]) == ("relu", False)
    assert (cfg.betas, cfg.ema, cfg.ema_every, cfg.ema_start) == ((0.9, 0.99), 0.995, 10, 100)
    net = EDISTransform(obs_dim=2, action_dim=1, preset="paper", device="cpu", denoiser={"width": 8}).denoiser.net
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in net.blocks.modules())
    assert isinstance(net.blocks[0].act, torch.nn.ReLU) and len(net.blocks) == 6


def test_ema_schedule_copies_until_start_then_updates_every_k_steps():
    torch.manual_seed(0)
    den = EDMDenoiser(ResidualMLPDenoiser(3, width=8, blocks=1, embed_dim=4))
    ema = copy.deepcopy(den)
    seen = []  # the model's weight after every optimiser step, and the EMA copy's at the same moment

    def record(optimizer, args, kwargs):
        seen.append((den.net.input_proj.weight.detach().clone(), ema.net.input_proj.weight.detach().clone()))

    handle = register_optimizer_step_post_hook(record)
    try:
        cfg = EDISConfig(diffusion_steps=30, batch_size=8, ema_every=10, ema_start=20)
        train_denoiser(den, ema, torch.randn(64, 3), cfg, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    final = ema.net.input_proj.weight.detach()
    # the hook runs before the EMA update of its step: seen[k][1] is the copy after step k - 1
    assert all(torch.equal(seen[k][1], seen[k - 1][0]) for k in range(1, 21))  # a plain copy up to ema_start
    assert all(torch.equal(seen[k][1], seen[19][0]) for k in range(21, 30))  # then untouched for 9 steps
    decay = 10 / 19  # the 10th step after the start: decay min(0.995, warm-up (1 + 9) / (10 + 9))
    torch.testing.assert_close(final, torch.lerp(seen[19][0], seen[29][0], 1 - decay))
