"""Q-Score Matching end to end: the loss against hand computations and a known critic, the collector factory, the
recipe (run, resume, multi-process and Ray collection) and online learning on Pendulum.

The central check is a fixed critic ``Q(s, a) = -c ||a - a*(s)||^2`` with ``M_q c = 1``: training only the actor
with ``actor_loss`` must move the policy's samples onto ``a*(s)`` (right sign and right matching), and the same
training against ``-Q`` must push them away.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import transition_batch
from recipe_runner import run_recipe
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.modules import MLP, ValueOperator

from diffrl import registry
from diffrl.objectives.qsm import QScoreMatchingLoss
from diffrl.train import load_config, read_metrics
from diffrl.train.collectors import EpisodeTracker, make_collector, make_env_fn

OBS, ACT = 3, 2
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "qsm.py"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class QuadraticCritic(TensorDictModuleBase):
    """A native ensemble of known critics ``Q_k(s, a) = -c_k ||a - a*(s)||^2 + b_k``, ``a*(s) = 0.5 tanh(W s)``.

    ``W`` and ``c`` are buffers (fixed); the biases are the only parameters, so gradient routing can be checked.
    """

    def __init__(self, c: list[float], seed: int = 0) -> None:
        super().__init__()
        self.in_keys, self.out_keys = ["observation", "action"], ["state_action_value"]
        self.register_buffer("W", torch.randn(ACT, OBS, generator=torch.Generator().manual_seed(seed)))
        self.register_buffer("c", torch.tensor(c))
        self.bias = nn.Parameter(torch.zeros(len(c)))
        self.num_nets = len(c)

    def optimum(self, observation: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(observation @ self.W.T)

    def forward(self, td):
        distance = (td["action"] - self.optimum(td["observation"])).pow(2).sum(-1, keepdim=True)
        return td.set("state_action_value", -self.c * distance + self.bias)


class FirstActionCritic(TensorDictModuleBase):
    """``Q_k(s, a) = w_k a_0`` for every member k (a native ensemble); records the actions it scores."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.in_keys, self.out_keys = ["observation", "action"], ["state_action_value"]
        self.weight = nn.Parameter(torch.tensor(weights))
        self.num_nets = len(weights)
        self.seen: list[torch.Tensor] = []

    def forward(self, td):
        self.seen.append(td["action"].detach().clone())
        return td.set("state_action_value", td["action"][..., :1] * self.weight)


def make_actor(hidden: int = 32):
    return registry.build(
        "actor",
        {
            "name": "diffusion",
            "network": "qsm",
            "sampler": "qsm",
            "hidden_sizes": [hidden, hidden],
            "network_kwargs": {"time_hidden": [16, 16]},
        },
        obs_dim=OBS,
        action_dim=ACT,
    )


def single_critic():
    """TorchRL's convention: one Q network that the loss duplicates (vmap path)."""
    return ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[16, 16]), ["observation", "action"])


make_batch = functools.partial(transition_batch, obs_dim=OBS, action_dim=ACT)  # tests/conftest.py


# ----------------------------------------------------------------------------------------------------- the loss
def test_score_target_is_minus_mq_grad_q_on_a_hand_example():
    critic = QuadraticCritic([0.02, 0.06])
    obs, action = torch.randn(5, OBS), torch.rand(5, ACT) * 2 - 1
    offset = action - critic.optimum(obs)  # grad_a Q_k = -2 c_k offset
    mean = QScoreMatchingLoss(make_actor(), critic, score_scale=50.0)
    torch.testing.assert_close(mean.score_target(obs, action), 2 * 50.0 * 0.04 * offset)
    low = QScoreMatchingLoss(make_actor(), critic, score_scale=50.0, critic_reduction="min")
    torch.testing.assert_close(low.score_target(obs, action), 2 * 50.0 * 0.06 * offset)  # the lower Q: larger c


def test_score_target_with_a_duplicated_single_critic():
    # A linear Q network duplicated (and re-initialised) by the loss: grad_a Q_k is member k's action weights.
    linear = ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[]), ["observation", "action"])
    loss = QScoreMatchingLoss(make_actor(), linear, score_scale=7.0, num_qvalue_nets=3)
    weights = loss.qvalue_network_params["module", "0", "weight"]  # [3, 1, OBS + ACT], input cat[s, a]
    assert not torch.allclose(weights[0], weights[1])  # independent members
    expected = -7.0 * weights[:, 0, OBS:].mean(0)
    target = loss.score_target(torch.randn(4, OBS), torch.randn(4, ACT))
    torch.testing.assert_close(target, expected.expand(4, ACT))


def _distance_after_training(sign: float, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    critic = QuadraticCritic([sign * 0.02, sign * 0.02])  # M_q c = 1
    actor = make_actor(hidden=64)
    loss = QScoreMatchingLoss(actor, critic, score_scale=50.0)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    probe = torch.randn(512, OBS)

    def distance() -> float:
        with torch.no_grad():
            return (actor.sample(probe) - critic.optimum(probe)).norm(dim=-1).mean().item()

    before = distance()
    for _ in range(steps):
        # Replay actions are uniform: the matching target alone must carry the policy to a*(s).
        batch = TensorDict({"observation": torch.randn(256, OBS), "action": torch.rand(256, ACT) * 2 - 1}, [256])
        actor_loss, _ = loss.actor_loss(batch)
        optim.zero_grad()
        actor_loss.backward()
        optim.step()
    return before, distance()


def test_actor_samples_move_onto_the_maximiser_of_a_known_critic():
    before, after = _distance_after_training(+1.0, steps=150)
    assert before > 0.8  # the untrained policy's samples are spread over the action box
    assert after < 0.3 * before, (before, after)


def test_sign_flipped_objective_drives_samples_away():
    before, after = _distance_after_training(-1.0, steps=60)
    assert after > 1.15 * before, (before, after)  # the samples flee a*(s) towards the corners of the box


@pytest.mark.parametrize("critic", ["single", "twin_q"])
def test_gradient_routing(critic):
    torch.manual_seed(0)
    qnet = (
        single_critic()
        if critic == "single"
        else registry.build(
            "critic", {"name": "twin_q", "hidden_sizes": [16, 16], "activation": "relu"}, obs_dim=OBS, action_dim=ACT
        )
    )
    loss = QScoreMatchingLoss(make_actor(), qnet)
    out = loss(make_batch(16))
    actor_params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]  # not buffers
    critic_params = [p for p in loss.qvalue_network_params.values(True, True) if p.requires_grad]
    target_params = list(loss.target_qvalue_network_params.values(True, True))
    # The actor term reaches only the actor; the critic term only the online critics (targets come from no_grad).
    actor_grads = torch.autograd.grad(
        out["loss_actor"], actor_params + critic_params, allow_unused=True, retain_graph=True
    )
    assert all(g is not None and g.abs().sum() > 0 for g in actor_grads[: len(actor_params)])
    assert all(g is None or not g.any() for g in actor_grads[len(actor_params) :])
    critic_grads = torch.autograd.grad(out["loss_qvalue"], actor_params + critic_params, allow_unused=True)
    assert all(g is None or not g.any() for g in critic_grads[: len(actor_params)])
    assert all(g is not None and g.abs().sum() > 0 for g in critic_grads[len(actor_params) :])
    assert not any(p.requires_grad for p in target_params)
    assert all(not out[k].requires_grad for k in out.keys() if not k.startswith("loss_"))


def test_target_actions_get_clipped_gaussian_noise_and_min_backup():
    torch.manual_seed(0)
    actor, critic = make_actor(), FirstActionCritic([1.0, 2.0])
    n = 4000
    policy_action = torch.zeros(n, ACT)
    policy_action[n // 2 :] = 0.95  # near the upper bound: noise gets clipped
    actor.sample = lambda observation, *args, **kwargs: policy_action.clone()
    loss = QScoreMatchingLoss(actor, critic, target_noise=0.1, gamma=0.5)
    batch = make_batch(n)
    critic.seen.clear()
    loss.qvalue_loss(batch)
    target_action = critic.seen[0]  # first call: the target critics at (s', a')
    centre, edge = target_action[: n // 2], target_action[n // 2 :]
    assert abs(centre.mean().item()) < 0.01 and abs(centre.std().item() - 0.1) < 0.005
    assert edge.max().item() == 1.0 and target_action.min().item() >= -1.0
    assert abs((edge == 1.0).float().mean().item() - 0.3085) < 0.03  # P(N(0, 0.1^2) > 0.05)

    # Without noise: y = r + gamma (1 - terminated) min_k w_k a'_0, exactly.
    loss = QScoreMatchingLoss(actor, critic, target_noise=0.0, gamma=0.5)
    critic.seen.clear()
    batch = make_batch(n)
    batch["action"].zero_()  # current Q = 0, so td_error = (Q - y)^2 = y^2 (squared, as TorchRL's TD3/IQL/CQL)
    _, info = loss.qvalue_loss(batch)
    next_q = torch.minimum(1.0 * policy_action[:, 0], 2.0 * policy_action[:, 0])
    expected = batch["next", "reward"][:, 0] + 0.5 * (~batch["next", "terminated"][:, 0]).float() * next_q
    torch.testing.assert_close(info["td_error"], expected.pow(2))


def test_set_keys_changes_what_the_loss_reads():
    names = {"observation": "obs", "action": "act", "reward": "rew", "done": "end", "terminated": "term"}
    torch.manual_seed(0)
    loss = QScoreMatchingLoss(make_actor(), single_critic())
    batch = make_batch(8)
    torch.manual_seed(1)
    reference = loss(batch.clone())
    renamed = TensorDict(
        {
            names.get(k, k) if isinstance(k, str) else ("next", names.get(k[1], k[1])): v
            for k, v in batch.items(True, True)
        },
        [8],
    )
    loss.set_keys(**names)
    assert set(loss.in_keys) == {"obs", "act", ("next", "obs"), ("next", "rew"), ("next", "end"), ("next", "term")}
    torch.manual_seed(1)
    out = loss(renamed)
    for key in ("loss_actor", "loss_qvalue", "q_data", "target_value"):
        torch.testing.assert_close(out[key], reference[key])
    with pytest.raises(KeyError, match="obs.*which is missing from the batch"):
        loss(batch)  # the default names are no longer read


def test_batch_layouts_agree():
    torch.manual_seed(0)
    loss = QScoreMatchingLoss(make_actor(), single_critic())
    batch = make_batch(4, 3)
    torch.manual_seed(1)
    nested = loss(batch.clone())
    torch.manual_seed(1)
    flat = loss(batch.reshape(-1))
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(nested[key], flat[key])
    one = make_batch(1)[0]  # a single transition, batch shape []
    assert loss(one)["loss_actor"].shape == torch.Size([])


def test_constructor_errors_name_the_fix():
    critic = single_critic()
    gaussian = TensorDictModule(nn.Linear(OBS, ACT), ["observation"], ["action"])
    with pytest.raises(TypeError, match="diffusion actor with a predict_noise"):
        QScoreMatchingLoss(gaussian, critic)
    with pytest.raises(ValueError, match="critic_reduction must be 'mean' or 'min'"):
        QScoreMatchingLoss(make_actor(), critic, critic_reduction="max")


# ------------------------------------------------------------------------------------------------ the collector
def _constant_policy() -> TensorDictModule:
    """``action = b`` (a zero-weight linear layer): tells policy actions (== b) from uniformly random ones.

    Built from torch modules only, so Ray workers (which cannot import this test file) can unpickle it.
    """
    linear = nn.Linear(3, 1)  # Pendulum-v1: 3 observations, 1 action
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    return TensorDictModule(linear, ["observation"], ["action"])


def _collect_actions(cfg: dict, updates: bool = True) -> list[torch.Tensor]:
    policy = _constant_policy()
    collector = make_collector(cfg, make_env_fn("Pendulum-v1"), policy, total_frames=24, init_random_frames=8, seed=0)
    actions = []
    try:
        for i, batch in enumerate(collector):
            actions.append(batch["action"].reshape(-1))
            if updates:
                with torch.no_grad():
                    policy.module.bias.fill_(0.1 * (i + 1))
                collector.update_policy_weights_()
    finally:
        collector.shutdown()
    return actions


def test_direct_collector_warms_up_randomly_then_acts_with_the_trained_policy():
    actions = _collect_actions({"frames_per_batch": 4})
    assert len(actions) == 6
    assert all(bool((a != 0).all()) for a in actions[:2])  # 8 uniformly random frames
    for i, a in enumerate(actions[2:], start=2):
        torch.testing.assert_close(a, torch.full((4,), 0.1 * i))  # the policy as it is after i updates


@pytest.mark.slow  # starting worker processes takes 10-40 s
def test_process_collector_syncs_weights_and_counts_the_warm_up_in_total():
    actions = _collect_actions({"frames_per_batch": 4, "num_workers": 2})
    assert sum(int((a != 0).sum()) for a in actions[:2]) == 8 and all(a.numel() == 4 for a in actions)
    for i, a in enumerate(actions[2:], start=2):
        torch.testing.assert_close(a, torch.full((4,), 0.1 * i))


@pytest.mark.slow  # a local Ray instance takes 30-60 s to start
def test_ray_collector_syncs_weights():
    pytest.importorskip("ray")
    cfg = {
        "frames_per_batch": 4,
        "num_workers": 2,
        "backend": "ray",
        "ray_init": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
        "ray_remote": {"num_cpus": 1, "memory": 5e8},
    }
    actions = _collect_actions(cfg)
    assert sum(int((a != 0).sum()) for a in actions[:2]) == 8 and all(a.numel() == 4 for a in actions)
    for i, a in enumerate(actions[2:], start=2):
        torch.testing.assert_close(a, torch.full((4,), 0.1 * i))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"backend": "direct", "num_workers": 2}, "use backend=process"),
        ({"num_workers": 2, "frames_per_batch": 3}, "multiple of num_workers"),
        ({"frames": 3}, r"unknown collector option\(s\) \['frames'\]"),
        ({"backend": "slurm"}, "collector.backend must be one of"),
    ],
)
def test_collector_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_collector(cfg, make_env_fn("Pendulum-v1"), None)


def test_ray_resource_options_written_in_yaml_exponent_notation_become_numbers():
    from diffrl.train.collectors import _resource_numbers

    # OmegaConf (YAML 1.1) reads `memory: 5.0e8` as the string "5.0e8"; Ray would reject it.
    assert _resource_numbers({"memory": "5.0e8", "num_cpus": 1, "name": "x"}) == {
        "memory": 5e8,
        "num_cpus": 1,
        "name": "x",
    }
    with pytest.raises(ValueError, match="memory must be a number, got 'lots'"):
        _resource_numbers({"memory": "lots"})


def test_episode_tracker_follows_each_worker():
    tracker = EpisodeTracker()
    reward = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]).unsqueeze(-1)
    done = torch.tensor([[False, True, False], [False, False, False]]).unsqueeze(-1)
    batch = TensorDict({"next": {"reward": reward, "done": done}}, [2, 3])
    assert tracker.update(batch) == [(2.0, 2)]
    done = torch.tensor([[True, False, False], [True, False, False]]).unsqueeze(-1)
    assert tracker.update(TensorDict({"next": {"reward": reward, "done": done}}, [2, 3])) == [(2.0, 2), (8.0, 4)]
    assert tracker.episodes == 3


# ---------------------------------------------------------------------------------------------------- the recipe
TINY = [
    "online.steps=60",
    "online.random_steps=20",
    "online.batch_size=16",
    "eval.every=30",
    "eval.episodes=1",
    "logger.log_every=10",
    "env.max_episode_steps=25",
    "actor.hidden_sizes=[16,16]",
    "actor.network_kwargs.time_hidden=[8,8]",
    "critic.hidden_sizes=[16,16]",
]


def test_recipe_runs_logs_checkpoints_and_resumes(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_recipe(RECIPE, [*TINY, f"logger.dir={run_dir}"], elsewhere)
    assert proc.stdout.strip().splitlines()[-1].startswith("qsm: 60 steps")
    metrics = read_metrics(run_dir)
    assert metrics["eval/return"][0].tolist() == [30, 60]
    assert metrics["train/updates"][0].tolist() == [30, 40, 50, 60]  # updates start after the 20 random steps
    assert metrics["train/updates"][1].tolist() == [10, 20, 30, 40]  # one update per env step
    assert metrics["train/episode_length"][1].tolist() == [25, 25]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt")) == [
        "step_000000030.pt",
        "step_000000060.pt",
    ]
    assert not any(elsewhere.iterdir())

    proc = run_recipe(RECIPE, [f"resume={run_dir}", "online.steps=90"], tmp_path)  # the saved config, more steps
    assert proc.stdout.strip().splitlines()[-1].startswith("qsm: 30 steps")
    metrics = read_metrics(run_dir)
    assert metrics["eval/return"][0].tolist() == [30, 60, 90]
    assert metrics["train/updates"][1].tolist()[-1] == 70  # counters carried over: 40 + 30


def test_recipe_config_files_are_valid():
    for extra in ([], ["config=hopper"], ["config=halfcheetah"]):
        cfg = load_config(RECIPE, extra)
        assert cfg.loss.score_scale == 50.0 and cfg.online.batch_size == 256
        if extra:  # the paper's settings
            assert cfg.online.steps == 1_000_000 and cfg.online.random_steps == 10_000
            assert list(cfg.actor.hidden_sizes) == [512, 512] and list(cfg.critic.hidden_sizes) == [512, 512]
            assert list(cfg.actor.network_kwargs.time_hidden) == [128, 128]


@pytest.mark.slow  # worker processes take 10-40 s to start
def test_recipe_with_two_worker_processes(tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(
        RECIPE, [*TINY, "collector.num_workers=2", "collector.frames_per_batch=2", f"logger.dir={run_dir}"], tmp_path
    )
    metrics = read_metrics(run_dir)
    assert metrics["eval/return"][0].tolist() == [30, 60]
    assert metrics["train/updates"][1].tolist()[-1] == 40


@pytest.mark.slow  # a local Ray instance takes 30-60 s to start
def test_recipe_with_the_ray_collector(tmp_path):
    pytest.importorskip("ray")
    run_dir = tmp_path / "run"
    run_recipe(
        RECIPE,
        [
            *TINY,
            "collector.backend=ray",
            "collector.num_workers=2",
            "collector.frames_per_batch=2",
            "collector.ray_init={num_cpus: 2, include_dashboard: false, log_to_driver: false}",
            "collector.ray_remote={num_cpus: 1, memory: 5.0e8}",
            f"logger.dir={run_dir}",
        ],
        tmp_path,
    )
    metrics = read_metrics(run_dir)
    assert metrics["eval/return"][0].tolist() == [30, 60]
    assert metrics["train/updates"][1].tolist()[-1] == 40


# -------------------------------------------------------------------------------------------------- learning
# 5000 env steps (4500 updates) with 128-wide networks: about 3 min on one idle core, 6 min on a loaded 2-core
# machine. Measured curve of this budget (eval every 1000 steps): -1586, -1541, -895, -427, -159.
SHORT = [
    "online.steps=5000",
    "online.random_steps=500",
    "eval.every=5000",
    "eval.episodes=5",
    "actor.hidden_sizes=[128,128]",
    "critic.hidden_sizes=[128,128]",
    "logger.log_every=1000",
]


@pytest.mark.slow  # minutes of training
def test_short_online_run_beats_the_random_policy(tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(RECIPE, [*SHORT, f"logger.dir={run_dir}"], tmp_path)
    metrics = read_metrics(run_dir)
    steps, returns = metrics["eval/return"]
    assert steps.tolist() == [5000]
    # Uniformly random actions score about -1200 on Pendulum-v1 (the first training episodes here agree).
    random_returns = metrics["train/episode_return"][1][:2]
    assert random_returns.mean() < -900, random_returns
    assert returns[-1] > -600, returns  # a margin of about 600 over the random policy
