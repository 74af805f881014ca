"""EDIS transform: energy guidance towards online states, dynamics and policy; exact synthetic fraction in a buffer."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from diffrl import registry
from diffrl.data.edis import EDISTransform

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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny networks on a shared 2-core machine: one intra-op thread is several times faster than two
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    edis = build(obs_dim=2, guidance={"state": 3.0, "policy": 0.0, "transition": 0.0})
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
    edis = build(guidance={"state": 0.0, "policy": 1.0, "transition": 0.0})
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


def test_normalizer_is_frozen_after_the_first_fit_and_energies_warm_start_in_its_coordinates():
    gen = torch.Generator().manual_seed(8)
    first, later = transitions(64, gen), transitions(64, gen, state_mean=3.0)
    tiny = {"diffusion_steps": 5, "num_samples": 16, "sampler_steps": 2, "energy_steps": 3, "energy_positives": 8}
    edis = build(**tiny, guidance={"state": 1.0, "policy": 0.0, "transition": 0.0})
    edis.fit(first, online=first)
    mean, std = edis.normalizer.mean.clone(), edis.normalizer.std.clone()
    energy = {k: v.clone() for k, v in edis.energies["state"].state_dict().items()}
    edis.fit(torch.cat([first, later]), online=later)  # shifted data: a refit would move the coordinates
    assert torch.equal(edis.normalizer.mean, mean) and torch.equal(edis.normalizer.std, std)
    # the energy continued from its first-fit weights (its optimiser state too) instead of a fresh start
    assert edis.energy_trained["state"] and len(edis._energy_optimizers["state"].state) > 0
    moved = max((edis.energies["state"].state_dict()[k] - v).abs().max().item() for k, v in energy.items())
    assert 0 < moved < 0.1, moved

    # refit_normalizer=True: new coordinates every fit, and the energies start over in them
    edis = build(**tiny, refit_normalizer=True, guidance={"state": 1.0, "policy": 0.0, "transition": 0.0})
    edis.fit(first, online=first)
    edis.fit(torch.cat([first, later]))  # no online data: the reset energies stay untrained
    assert edis.normalizer.mean[0].item() == pytest.approx(1.5, abs=0.3)
    assert not edis.energy_trained["state"]


@pytest.mark.parametrize(("key", "field", "where"), [
    (("next", "reward"), "next.reward", "data"), ("observation", "observation", "online"),
])  # fmt: skip
def test_fit_refuses_non_finite_data_in_one_line(key, field, where):
    gen = torch.Generator().manual_seed(9)
    data, online = transitions(32, gen), transitions(16, gen)
    bad = data if where == "data" else online
    value = bad.get(key).clone()
    value[5, 0], value[7, 0] = float("nan"), float("inf")
    bad.set(key, value)
    edis = build(diffusion_steps=5, num_samples=8, sampler_steps=2)
    with pytest.raises(ValueError) as err:
        edis.fit(data, online=online)
    message = str(err.value)
    assert "\n" not in message
    assert f"{where} has 2 non-finite value(s) in {field!r}, first at transition 5 of {bad.shape[0]}" in message
    assert int(edis.num_fits) == 0 and edis.pool is None  # nothing trained, no NaN pool


def test_resample_replaces_the_pool_without_retraining_and_refresh_is_its_alias(fitted):
    weights = fitted.ema_denoiser.net.input_proj.weight.clone()
    old = fitted.pool
    pool = fitted.resample(50, guided=False)
    assert fitted.pool is pool and pool.shape == (50,) and not torch.equal(pool["observation"], old["observation"][:50])
    assert fitted.refresh().shape == (fitted.config.num_samples,)
    assert torch.equal(fitted.ema_denoiser.net.input_proj.weight, weights)
    assert not hasattr(fitted, "regenerate")


def test_default_sampler_churns_only_inside_sigma_window(fitted):
    cfg = fitted.config
    assert (cfg.s_tmin, cfg.s_tmax) == (0.05, 50.0)
    calls = []
    hook = fitted.ema_denoiser.register_forward_pre_hook(lambda module, args: calls.append(float(args[1])))
    try:
        fitted._generate((4, fitted.layout.dim), 32)
    finally:
        hook.remove()
    grid = fitted._sigmas(32)[:-1].tolist()
    churned = [i for i, (s, s_hat) in enumerate(zip(grid, calls[::2])) if s_hat > s * (1 + 1e-6)]
    assert churned == [i for i, s in enumerate(grid) if 0.05 <= s <= 50.0]
    assert 0 < len(churned) < 30
