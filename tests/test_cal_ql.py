"""CalQLLoss: the CORL formulas recomputed by hand, calibration, gradient routing, keys, run-time switches, Lagrange."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.objectives.cal_ql import CalQLLoss

OBS, ACT, HIDDEN, BATCH = 3, 2, 32, 32

pytestmark = [pytest.mark.filterwarnings("ignore:No target network updater"), pytest.mark.usefixtures("one_thread")]


def make_actor(obs_dim: int = OBS, action_dim: int = ACT) -> ProbabilisticActor:
    net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=[HIDDEN]), NormalParamExtractor()
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=True)


def make_critic(obs_dim: int = OBS, action_dim: int = ACT) -> ValueOperator:
    return ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=[HIDDEN, HIDDEN]),
        in_keys=["observation", "action"],
    )


def make_batch(batch_shape=(BATCH,), mc_return: float | torch.Tensor = 0.0, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    shape = tuple(batch_shape)
    mc = mc_return if isinstance(mc_return, torch.Tensor) else torch.full((*shape, 1), float(mc_return))
    return TensorDict(
        {
            "observation": torch.randn(*shape, OBS, generator=g),
            "action": torch.rand(*shape, ACT, generator=g) * 1.8 - 0.9,
            "mc_return": mc,
            ("next", "observation"): torch.randn(*shape, OBS, generator=g),
            ("next", "reward"): torch.randn(*shape, 1, generator=g),
            ("next", "done"): torch.zeros(*shape, 1, dtype=torch.bool),
            ("next", "terminated"): torch.rand(*shape, 1, generator=g) < 0.2,
        },
        batch_size=shape,
    )


class LinearTwinQ(nn.Module):
    """Q_k(s, a) = s_0 + w_k . a for k = 1, 2: values a test can recompute, and a record of every call."""

    num_nets = 2

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.5, -0.5], [0.5, 1.0]]))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        self.calls.append((observation.detach().clone(), action.detach().clone()))
        return observation[..., :1] + action @ self.weight.T

    @staticmethod
    def value(weight: torch.Tensor, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[2, *batch] values for explicit weights."""
        return (observation[..., :1] + action @ weight.T).movedim(-1, 0)


def make_linear_critic() -> tuple[TensorDictModule, LinearTwinQ]:
    inner = LinearTwinQ()
    module = TensorDictModule(inner, in_keys=["observation", "action"], out_keys=["state_action_value"])
    module.num_nets = 2  # read by the loss: a native ensemble is used as is
    return module, inner


def direct_cql(loss, inner, actor, td, *, importance_sample=True, temp=1.0, calibrate=True, clip=(-math.inf, math.inf)):
    """CORL's conservative term written out from the formula, on the actions the loss actually drew."""
    n = loss.cql_n_actions
    ((obs, actions),) = [c for c in inner.calls if c[1].ndim == 3]  # the one critic call over [B, 1 + 3N] actions
    weight = inner.weight.detach()
    q = LinearTwinQ.value(weight, obs, actions)  # [2, B, 1 + 3N]
    q_data, q_rand, q_curr, q_next = q.split([1, n, n, n], dim=-1)
    a_curr, a_next = actions[:, 1 + n : 1 + 2 * n], actions[:, 1 + 2 * n :]
    assert torch.all(a_curr.abs() < 1) and torch.all(actions[:, 1 : 1 + n].abs() <= 1)
    with torch.no_grad():
        dist_s = actor.get_dist(td.select("observation"))
        dist_next = actor.get_dist(td["next"].select("observation"))
        logp_curr = dist_s.log_prob(a_curr.transpose(0, 1)).transpose(0, 1)  # [B, N]
        logp_next = dist_next.log_prob(a_next.transpose(0, 1)).transpose(0, 1)
    if calibrate:
        bound = td["mc_return"].reshape(1, -1, 1)
        q_curr, q_next = torch.maximum(q_curr, bound), torch.maximum(q_next, bound)
    if importance_sample:
        cat = torch.cat([q_rand + ACT * math.log(2.0), q_next - logp_next, q_curr - logp_curr], -1)
    else:
        cat = torch.cat([q_rand, q_data, q_next, q_curr], -1)
    ood = temp * torch.logsumexp(cat / temp, -1)
    diff = (ood - q_data[..., 0]).clamp(*clip)
    return loss.cql_alpha * diff.mean(-1).sum()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cql_importance_sample": False, "cql_temp": 2.0},
        {"cql_clip_diff_min": 5.0, "cql_clip_diff_max": 8.0, "cql_alpha": 3.0},
    ],
)
def test_cql_term_matches_direct_computation(options):
    torch.manual_seed(0)
    critic, inner = make_linear_critic()
    actor = make_actor()
    loss = CalQLLoss(actor, critic, **options)
    td = make_batch(mc_return=torch.linspace(-4, 4, BATCH).unsqueeze(-1))
    with torch.no_grad():
        got, meta = loss.cql_loss(td)
    want = direct_cql(
        loss,
        inner,
        actor,
        td,
        importance_sample=options.get("cql_importance_sample", True),
        temp=options.get("cql_temp", 1.0),
        clip=(options.get("cql_clip_diff_min", -math.inf), options.get("cql_clip_diff_max", math.inf)),
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    uncalibrated = direct_cql(
        loss,
        inner,
        actor,
        td,
        calibrate=False,
        importance_sample=options.get("cql_importance_sample", True),
        temp=options.get("cql_temp", 1.0),
        clip=(options.get("cql_clip_diff_min", -math.inf), options.get("cql_clip_diff_max", math.inf)),
    )
    assert (got - uncalibrated).abs() > 1e-3  # the batch really exercises calibration


def test_calibration_lifts_exactly_the_policy_values_below_mc_return():
    torch.manual_seed(1)
    critic, inner = make_linear_critic()
    actor = make_actor()
    loss = CalQLLoss(actor, critic, cql_n_actions=4)
    # Rows far above every Q (all lifted), far below (none lifted) and in between (some lifted).
    mc = torch.cat([torch.full((8, 1), 50.0), torch.full((8, 1), -50.0), torch.linspace(-1, 1, 16).unsqueeze(-1)])
    td = make_batch(mc_return=mc)
    td["observation"][..., 0] = 0.0  # Q = w_k . a in [-2, 2]: the middle rows straddle it
    with torch.no_grad():
        got, meta = loss.cql_loss(td)
    ((obs, actions),) = [c for c in inner.calls if c[1].ndim == 3]
    q_policy = LinearTwinQ.value(inner.weight.detach(), obs, actions)[..., 1 + 4 :]  # current- and next-policy values
    below = q_policy < mc.reshape(1, -1, 1)
    assert below[:, :8].all() and not below[:, 8:16].any() and 0 < below[:, 16:].float().mean() < 1
    assert meta["calibration_fraction"] == pytest.approx(below.float().mean().item())
    torch.testing.assert_close(got, direct_cql(loss, inner, actor, td), rtol=1e-4, atol=1e-4)
    # Lifting everything to mc (a wrong implementation) or nothing gives different losses.
    inner.calls.clear()
    loss.calibration = False
    torch.manual_seed(1)
    with torch.no_grad():
        off, _ = loss.cql_loss(td)
    torch.testing.assert_close(off, direct_cql(loss, inner, actor, td, calibrate=False), rtol=1e-4, atol=1e-4)
    assert got > off + 1.0


@pytest.mark.parametrize("max_backup,backup_entropy", [(False, False), (True, False), (False, True)])
def test_td_target_matches_direct_computation(max_backup, backup_entropy):
    torch.manual_seed(2)
    critic, inner = make_linear_critic()
    actor = make_actor()
    loss = CalQLLoss(actor, critic, cql_max_target_backup=max_backup, backup_entropy=backup_entropy, alpha_init=0.3)
    loss.make_value_estimator(gamma=0.9)
    with torch.no_grad():
        loss.target_qvalue_network_params["module", "weight"].copy_(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]))
    td = make_batch()
    with torch.no_grad():
        got, meta = loss.qvalue_loss(td)
    (next_obs, next_actions), (obs, actions) = inner.calls
    assert torch.equal(next_obs[:, 0], td["next", "observation"])
    assert next_actions.shape[-2] == (loss.cql_n_actions if max_backup else 1)
    q_target = LinearTwinQ.value(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]), next_obs, next_actions).min(0).values
    value, index = q_target.max(-1)
    if backup_entropy:
        dist = actor.get_dist(td["next"].select("observation"))
        log_prob = dist.log_prob(next_actions.transpose(0, 1)).transpose(0, 1)
        value = value - 0.3 * log_prob.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    y = td["next", "reward"][:, 0] + 0.9 * (~td["next", "terminated"][:, 0]).float() * value
    q = LinearTwinQ.value(inner.weight.detach(), td["observation"], td["action"])
    torch.testing.assert_close(got, ((q - y) ** 2).mean(-1).sum(), rtol=1e-4, atol=1e-4)


def _touched(loss: CalQLLoss) -> set[str]:
    return {name.split(".")[0] for name, p in loss.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("lagrange,native", [(False, False), (True, False), (True, True)])
def test_each_loss_term_reaches_only_its_parameters(lagrange, native):
    torch.manual_seed(3)
    critic = make_linear_critic()[0] if native else make_critic()  # native ensemble or a vmapped single Q network
    loss = CalQLLoss(make_actor(), critic, cql_lagrange=lagrange, backup_entropy=True)
    out = loss(make_batch(mc_return=0.5))
    expected = {
        "loss_actor": {"actor_network_params"},
        "loss_qvalue": {"qvalue_network_params"},
        "loss_cql": {"qvalue_network_params"},
        "loss_alpha": {"log_alpha"},
    }
    if lagrange:
        expected["loss_alpha_prime"] = {"log_alpha_prime"}
    assert {k for k in out.keys() if k.startswith("loss_")} == set(expected)
    for key, params in expected.items():
        loss.zero_grad(set_to_none=True)
        out[key].backward(retain_graph=True)
        assert _touched(loss) == params, key
    # Diagnostics carry no graph; target parameters never receive gradients.
    assert not any(out[k].requires_grad for k in out.keys() if not k.startswith("loss_"))
    loss.zero_grad(set_to_none=True)
    sum(out[k] for k in expected).backward()
    assert all(p.grad is None for p in loss.target_qvalue_network_params.values(True, True))


def test_set_keys_changes_what_forward_reads():
    torch.manual_seed(4)
    loss = CalQLLoss(make_actor(), make_critic())
    td = make_batch(mc_return=-1e3)
    td["rtg"] = torch.full((BATCH, 1), 1e3)
    assert loss(td)["calibration_fraction"] == 0.0
    loss.set_keys(mc_return="rtg")
    assert "rtg" in loss.in_keys and "mc_return" not in loss.in_keys
    assert loss(td)["calibration_fraction"] == 1.0
    with pytest.raises(KeyError, match="rtg"):
        loss(td.exclude("rtg"))
    loss.set_keys(mc_return=("extras", "rtg"))  # nested keys work too
    td["extras", "rtg"] = td["rtg"]
    assert loss(td.exclude("rtg"))["calibration_fraction"] == 1.0
    loss.set_keys(reward="scaled_reward")
    td["next", "scaled_reward"] = td["next", "reward"] * 0 + 1e4
    assert loss(td)["target_value"] > 1e3


def test_run_time_switches():
    torch.manual_seed(5)
    loss = CalQLLoss(make_actor(), make_critic(), cql_alpha=2.0)
    td = make_batch(mc_return=100.0)

    def run():
        torch.manual_seed(0)
        return loss(td.clone())

    on = run()
    loss.calibration = False
    off = run()
    assert on["loss_cql"] > off["loss_cql"] + 10  # lifting to a return of 100 dominates the logsumexp
    torch.testing.assert_close(on["loss_qvalue"], off["loss_qvalue"])
    torch.testing.assert_close(on["loss_actor"], off["loss_actor"])
    loss.cql_alpha = 4.0
    torch.testing.assert_close(run()["loss_cql"], 2 * off["loss_cql"])
    loss.calibration = True
    loss.switch_to_online(cql_alpha_online=0.0)
    online = run()
    assert not loss.calibration and online["loss_cql"] == 0 and online["cql_alpha"] == 0
    # Without calibration the mc_return entry is optional (online transitions may lack it).
    assert torch.isfinite(loss(td.exclude("mc_return"))["loss_qvalue"])


def test_lagrange_alpha_prime():
    torch.manual_seed(6)
    loss = CalQLLoss(make_actor(), make_critic(), cql_lagrange=True, cql_target_action_gap=0.8, cql_alpha=5.0)
    out = loss(make_batch())
    alpha_prime = math.e  # CORL's initial log alpha' = 1
    assert out["alpha_prime"] == pytest.approx(alpha_prime)
    gap_sum = 2 * (out["cql_diff"] - 0.8)  # two critics
    torch.testing.assert_close(out["loss_cql"], alpha_prime * 5.0 * gap_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_alpha_prime"], -0.5 * alpha_prime * 5.0 * gap_sum, rtol=1e-5, atol=1e-5)
    # Dual ascent: alpha' grows while the conservative gap exceeds the target and shrinks below it.
    for gap, sign in [(-1e3, -1.0), (1e3, 1.0)]:
        loss.cql_target_action_gap = gap
        loss.zero_grad(set_to_none=True)
        loss(make_batch())["loss_alpha_prime"].backward()
        assert torch.sign(loss.log_alpha_prime.grad) == sign


@pytest.mark.parametrize("batch_shape", [(), (BATCH,), (4, 8)])
def test_batch_layouts(batch_shape):
    torch.manual_seed(7)
    loss = CalQLLoss(make_actor(), make_critic(), reduction="none")
    out = loss(make_batch(batch_shape, mc_return=1.0))
    for key in ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"):
        assert out[key].shape == torch.Size(batch_shape), key
        assert torch.isfinite(out[key]).all()
    mean_loss = CalQLLoss(make_actor(), make_critic())
    assert mean_loss(make_batch(batch_shape, mc_return=1.0))["loss_qvalue"].shape == torch.Size([])


def test_critic_becomes_conservative_on_a_fixed_batch():
    torch.manual_seed(8)
    loss = CalQLLoss(make_actor(), make_critic(), cql_alpha=5.0, calibration=False)
    td = make_batch()
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)

    def gap() -> float:
        with torch.no_grad():
            q_data = loss._qvalues(td, loss.qvalue_network_params).mean()
            rand = td.clone().set("action", torch.rand(BATCH, ACT) * 2 - 1)
            return (q_data - loss._qvalues(rand, loss.qvalue_network_params).mean()).item()

    before = gap()
    for _ in range(60):
        out = loss(td.clone())
        optim.zero_grad()
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        optim.step()
    assert gap() > before + 1.0  # data actions valued well above random ones (cql_alpha=0 stays within +-0.2)


def test_soft_update_moves_targets_by_tau():
    torch.manual_seed(9)
    loss = CalQLLoss(make_actor(), make_critic())
    updater = SoftUpdate(loss, tau=0.1)
    before = loss.target_qvalue_network_params.clone()
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    source = loss.qvalue_network_params.detach().clone()
    updater.step()
    expected = before.apply(lambda t, s: t + 0.1 * (s - t), source)
    for key, value in expected.items(True, True):
        torch.testing.assert_close(loss.target_qvalue_network_params[key], value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an associated updater silences TorchRL's target warning
        loss(make_batch())


def test_registered_and_built_from_config():
    loss = registry.build(
        "loss", {"name": "cal_ql", "cql_alpha": 7.0}, actor_network=make_actor(), qvalue_network=make_critic()
    )
    assert isinstance(loss, CalQLLoss) and loss.cql_alpha == 7.0 and loss.num_qvalue_nets == 2


def test_user_errors_name_the_fix():
    with pytest.raises(ValueError, match="loss_function"):
        CalQLLoss(make_actor(), make_critic(), loss_function="huber")
    loss = CalQLLoss(make_actor(), make_critic())
    with pytest.raises(KeyError, match="mc_return"):
        loss(make_batch().exclude("mc_return"))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of the single-network critic
@pytest.mark.parametrize("critic_name", ["twin_q", "q"])
@pytest.mark.parametrize("options", [{}, {"cql_max_target_backup": True, "backup_entropy": True, "cql_lagrange": True}])
def test_forward_equals_the_separate_terms_with_fewer_network_calls(critic_name, options):
    # forward shares the policy evaluations and the stacked critic call between the terms; with the same seed its
    # values and gradients must equal those of actor_loss, qvalue_loss and cql_loss called one after the other.
    dims = {"obs_dim": OBS, "action_dim": ACT}
    torch.manual_seed(0)
    actor = registry.build("actor", {"name": "tanh_normal", "hidden_sizes": [16]}, **dims)
    critic = registry.build("critic", {"name": critic_name, "hidden_sizes": [16]}, **dims)
    loss = CalQLLoss(actor, critic, cql_n_actions=3, **options)
    loss.make_value_estimator(gamma=0.99)
    batch = make_batch(mc_return=torch.randn(BATCH, 1))
    calls = []
    critic.register_forward_hook(lambda module, args, output: calls.append(output.get("state_action_value").shape))
    actor_calls = []
    actor.module[0].register_forward_hook(lambda module, args, output: actor_calls.append(1))

    torch.manual_seed(1)
    out = loss(batch.clone())
    params = [p for p in loss.parameters() if p.requires_grad]
    fused = torch.autograd.grad(sum(v for k, v in out.items() if k.startswith("loss_")), params, allow_unused=True)
    assert len(actor_calls) == 2  # the policy at s and at s'
    if critic_name == "twin_q":  # the actor's Q(s, a_pi), the target, one stacked call of 1 + 3 N actions per state
        assert len(calls) == 3 and calls[-1] == torch.Size([BATCH, 1 + 3 * 3, 2])

    torch.manual_seed(1)
    loss_actor, actor_meta = loss.actor_loss(batch.clone())
    loss_alpha, _ = loss.alpha_loss(actor_meta["_log_prob"], batch)
    loss_qvalue, q_meta = loss.qvalue_loss(batch.clone())
    loss_cql, cql_meta = loss.cql_loss(batch.clone())
    terms = [loss_actor, loss_qvalue, loss_cql, loss_alpha]
    separate = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, "loss_cql": loss_cql, "loss_alpha": loss_alpha}
    if loss.cql_lagrange:
        separate["loss_alpha_prime"], _ = loss.alpha_prime_loss(cql_meta["_diff_per_sample"], batch)
        terms.append(separate["loss_alpha_prime"])
    for key, value in {**separate, **q_meta, **cql_meta}.items():
        if key in out.keys():
            torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-6, msg=key)
    grads = torch.autograd.grad(sum(terms), params, allow_unused=True)
    for a, b in zip(fused, grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
