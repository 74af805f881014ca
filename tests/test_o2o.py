"""The offline-to-online loop and its replay: exact batch mixing, online storage, the switch, hooks, UTD, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import pendulum_transitions
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from diffrl import registry
from diffrl.data import OfflineReplayBuffer
from diffrl.envs import make_env
from diffrl.train import read_metrics, start_run
from diffrl.train.replay import BatchMixer, StoredItems, make_online_buffer
from diffrl.train.trainer import Hook, Trainer, TrainerSettings

OFFLINE_MC = 7.0  # every offline transition carries this mc_return: a batch's online items are those with mc_return 0
EPISODE = 5  # env episode length in these tests (fast)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def marked_buffer(value: float, n: int, extra: dict | None = None) -> TensorDictReplayBuffer:
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(n))
    rb.extend(TensorDict({"x": torch.full((n, 1), value), **(extra or {})}, [n]))
    return rb


def offline_buffer(n: int = 64) -> OfflineReplayBuffer:
    """Pendulum-shaped transitions with mc_return = OFFLINE_MC and an "episode" index, as load_dataset returns."""
    return OfflineReplayBuffer(
        pendulum_transitions(n, OFFLINE_MC, episode_length=8),
        batch_size=10,
        dataset_id="test/pendulum-v0",
        env_id="Pendulum-v1",
        ref_min_score=-1000.0,
        ref_max_score=0.0,
    )


def settings(**overrides) -> TrainerSettings:
    values = {
        "offline_steps": 6,
        "online_steps": 6,
        "batch_size": 10,
        "mixing_ratio": 0.5,
        "eval_every": 3,
        "eval_episodes": 1,
        "log_every": 3,
    }
    values.update(overrides)
    return TrainerSettings(**values)


class Recorder:
    """An ``update`` that trains nothing and records what each batch held."""

    def __init__(self) -> None:
        self.batches: list[TensorDict] = []
        self.net = torch.nn.Linear(1, 1)  # something stateful to checkpoint

    def __call__(self, batch):
        self.batches.append(batch.clone())
        online = (batch["mc_return"] == 0).sum()
        return {"loss_fake": torch.tensor(float(len(self.batches))), "online_items": online}


def make_loop(tmp_path, name="run", resume=None, hooks=(), update=None, **overrides):
    cfg = OmegaConf.create(
        {
            "logger": {"dir": str(tmp_path / name), "backend": "csv", "keep": 10},
            "resume": str(resume) if resume else None,
        }
    )
    rb = offline_buffer()
    actor = registry.build(
        "actor",
        {"name": "tanh_normal", "hidden_sizes": [8], "action_low": -2.0, "action_high": 2.0},
        obs_dim=3,
        action_dim=1,
    )
    update = update or Recorder()
    run = start_run(cfg)
    loop = Trainer(
        settings(**overrides),
        update=update,
        offline_rb=rb,
        policy=actor,
        run=run,
        env=lambda: make_env("Pendulum-v1", seed=0, max_episode_steps=EPISODE),
        eval_env=make_env("Pendulum-v1", seed=1, max_episode_steps=EPISODE),
        checkpoint={"net": update.net, "actor": actor},
        hooks=hooks,
        progress_keys=None,
    )
    return loop, update, run


# ---------------------------------------------------------------------------------------------------- BatchMixer
@pytest.mark.parametrize(
    "batch_size, fraction, expected", [(256, 0.5, 128), (10, 0.3, 3), (7, 0.5, 4), (9, 0.0, 0), (9, 1.0, 9)]
)
def test_mixer_gives_exact_counts_in_every_batch(batch_size, fraction, expected):
    mixer = BatchMixer(
        {"offline": marked_buffer(1.0, 50), "online": marked_buffer(-1.0, 20)},
        {"offline": fraction, "online": 1.0 - fraction},
    )
    for _ in range(5):
        batch = mixer.sample(batch_size)
        assert batch.batch_size == (batch_size,)
        assert int((batch["x"] > 0).sum()) == expected


def test_mixer_hands_the_share_of_an_empty_source_to_the_others():
    empty = TensorDictReplayBuffer(storage=LazyTensorStorage(5))
    mixer = BatchMixer({"offline": marked_buffer(1.0, 50), "online": empty}, {"offline": 0.5, "online": 0.5})
    assert mixer.counts(8) == {"offline": 8}
    assert bool((mixer.sample(8)["x"] > 0).all())


def test_uniform_mixing_draws_in_proportion_to_the_sizes():
    torch.manual_seed(0)
    mixer = BatchMixer({"offline": marked_buffer(1.0, 300), "online": marked_buffer(-1.0, 100)}, None)
    share = torch.stack([(mixer.sample(64)["x"] < 0).float().mean() for _ in range(200)]).mean()
    assert abs(share.item() - 0.25) < 0.02  # 100 of 400 stored items are online


def test_set_source_rescales_the_others_and_batches_keep_only_common_keys():
    offline = marked_buffer(1.0, 50, {"episode": torch.zeros(50, dtype=torch.long)})
    mixer = BatchMixer({"offline": offline, "online": marked_buffer(-1.0, 20)}, {"offline": 0.5, "online": 0.5})
    mixer.set_source("synthetic", marked_buffer(5.0, 20), fraction=0.2)
    assert mixer.fractions == pytest.approx({"offline": 0.4, "online": 0.4, "synthetic": 0.2})
    batch = mixer.sample(10)
    assert int((batch["x"] == 5.0).sum()) == 2 and "episode" not in batch.keys()
    mixer.set_fractions({"synthetic": 0.3, "online": 0.7})  # EDIS: offline data no longer replayed directly
    assert int((mixer.sample(10)["x"] > 0).sum()) == 3 and int((mixer.sample(10)["x"] == 1.0).sum()) == 0
    with pytest.raises(ValueError, match="sum to 1"):
        mixer.set_fractions({"online": 0.5})


def test_stored_items_checkpoint_only_what_is_stored_and_load_into_a_bigger_buffer():
    rb = make_online_buffer(4)
    rb.extend(TensorDict({"x": torch.arange(6.0)}, [6]))  # wraps: storage [4, 5, 2, 3], next write at 2
    state = StoredItems(rb).state_dict()
    same = make_online_buffer(4)
    StoredItems(same).load_state_dict(state)
    same.extend(TensorDict({"x": torch.tensor([9.0])}, [1]))
    assert same.storage[0:4]["x"].tolist() == [4.0, 5.0, 9.0, 3.0]  # the cursor survived
    bigger = make_online_buffer(10)
    StoredItems(bigger).load_state_dict(state)
    bigger.extend(TensorDict({"x": torch.tensor([9.0])}, [1]))
    assert bigger.storage[0:5]["x"].tolist() == [4.0, 5.0, 2.0, 3.0, 9.0]
    with pytest.raises(ValueError, match="buffer_size"):
        StoredItems(make_online_buffer(2)).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------- the loop
def test_online_transitions_are_stored_with_zero_mc_return_and_batches_mix_exactly(tmp_path):
    loop, rec, run = make_loop(tmp_path, online_steps=8, mixing_ratio=0.3)
    result = loop.run()
    run.close()
    offline_batches, online_batches = rec.batches[:6], rec.batches[6:]
    assert all(bool((b["mc_return"] == OFFLINE_MC).all()) for b in offline_batches)
    # 0.3 * 10 = 3 offline items in every online batch, exactly.
    assert [int((b["mc_return"] == 0).sum()) for b in online_batches] == [7] * 8
    stored = loop.online_rb.storage[0 : len(loop.online_rb)]
    assert len(loop.online_rb) == 8 and bool((stored["mc_return"] == 0).all())
    assert set(stored.keys(True, True)) - {"index"} == {
        "observation",
        "action",
        "mc_return",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
        ("next", "truncated"),
    }
    # The stored transitions are the env's: consecutive within an episode, rewards of Pendulum's cost.
    assert torch.equal(stored["next", "observation"][0], stored["observation"][1])
    assert bool((stored["next", "reward"] <= 0).all()) and bool(stored["next", "truncated"][EPISODE - 1])
    assert result["steps"] == 14 and result["updates"] == 14
    steps, returns = read_metrics(run.dir)["train/episode_return"]  # one episode of EPISODE steps ended online
    assert steps.tolist() == [6 + EPISODE] and returns[0] == pytest.approx(stored["next", "reward"][:EPISODE].sum())
    assert set(result) >= {"offline", "online"} and "eval/normalized_score" in result["online"]


def test_the_collector_acts_with_the_live_policy(tmp_path):
    class PushRight(Recorder):
        """At the first online update, move the actor's mean far right: later online actions sit at the bound."""

        def __call__(self, batch):
            if len(self.batches) == 6:
                last = [m for m in loop.policy.modules() if isinstance(m, torch.nn.Linear)][-1]
                with torch.no_grad():
                    last.bias[0] = 100.0
            return super().__call__(batch)

    loop, _, run = make_loop(tmp_path, update=PushRight(), online_steps=5)
    loop.run()
    run.close()
    actions = loop.online_rb.storage[0:5]["action"].squeeze(-1)
    assert actions[0] < 1.99 and bool((actions[1:] > 1.99).all())  # the first was collected before the change


def test_switch_hook_runs_between_the_phases_and_changes_what_cal_ql_computes(tmp_path):
    critic = registry.build("critic", {"name": "q", "hidden_sizes": [8], "activation": "relu"}, obs_dim=3, action_dim=1)
    actor = registry.build(
        "actor",
        {"name": "tanh_normal", "hidden_sizes": [8], "action_low": -2.0, "action_high": 2.0},
        obs_dim=3,
        action_dim=1,
    )
    loss = registry.build(
        "loss", {"name": "cal_ql", "cql_alpha": 5.0, "cql_n_actions": 2}, actor_network=actor, qvalue_network=critic
    )
    seen = []

    class CalQLRecorder(Recorder):
        def __call__(self, batch):
            out = loss(batch)
            seen.append((loss.calibration, float(out["cql_alpha"])))
            return super().__call__(batch)

    switch = Hook(on_switch=lambda loop: loss.switch_to_online(cql_alpha_online=0.5))
    loop, _, run = make_loop(tmp_path, hooks=[switch], update=CalQLRecorder(), online_steps=3)
    loop.run()
    run.close()
    assert seen == [(True, 5.0)] * 6 + [(False, 0.5)] * 3


def test_interval_hooks_and_update_to_data_ratio(tmp_path):
    calls = []
    hook = Hook(on_interval=lambda loop: calls.append((loop.step, len(loop.online_rb))), every=4)
    loop, rec, run = make_loop(
        tmp_path, hooks=[hook], offline_steps=2, online_steps=12, frames_per_batch=2, utd_ratio=1.5
    )
    result = loop.run()
    run.close()
    assert calls == [(6, 4), (10, 8), (14, 12)]  # every 4 online env steps, after storing them
    assert result["updates"] == 2 + 18 and len(rec.batches) == 20  # 12 env steps * 1.5 updates


def test_evaluations_land_in_one_csv_on_the_global_step(tmp_path):
    loop, _, run = make_loop(tmp_path, offline_steps=5, online_steps=4, eval_every=3)
    loop.run()
    run.close()
    steps, _ = read_metrics(run.dir)["eval/normalized_score"]
    assert steps.tolist() == [3, 5, 6, 9]  # every 3 global steps, plus the end of each phase
    assert read_metrics(run.dir)["train/loss_fake"][0].tolist() == [3, 6, 9]
    assert [p.name for p in run.checkpointer.checkpoints()] == [f"step_{s:09d}.pt" for s in (3, 5, 6, 9)]


def test_checkpoints_can_be_rarer_than_evaluations(tmp_path):
    loop, _, run = make_loop(tmp_path, offline_steps=5, online_steps=6, eval_every=2, checkpoint_every=4)
    loop.run()
    run.close()
    assert read_metrics(run.dir)["eval/normalized_score"][0].tolist() == [2, 4, 5, 6, 8, 10, 11]
    assert [p.name for p in run.checkpointer.checkpoints()] == [f"step_{s:09d}.pt" for s in (4, 5, 8, 11)]


def test_resume_in_the_online_phase_continues_from_phase_and_step(tmp_path):
    loop, rec, run = make_loop(tmp_path, online_steps=6)
    loop.run()
    run.close()
    checkpoint = run.checkpointer.path_for(9)  # offline 6 + 3 online steps
    switches = []
    hook = Hook(on_switch=lambda loop: switches.append(loop.step))
    again, rec2, run2 = make_loop(tmp_path, resume=checkpoint, hooks=[hook], online_steps=6)
    result = again.run()
    run2.close()
    assert run2.dir == run.dir
    assert switches == [9]  # the switch is re-applied when a run resumes in the online phase
    assert len(rec2.batches) == 3 and result["steps"] == 12 and result["updates"] == 12
    assert len(again.online_rb) == 6  # 3 restored + 3 new
    restored = again.online_rb.storage[0:3]
    assert torch.equal(restored["observation"], loop.online_rb.storage[0:3]["observation"])
    assert "offline" in result  # the end-of-offline score survived the restart
    steps, _ = read_metrics(run.dir)["eval/normalized_score"]
    assert steps.tolist() == [3, 6, 9, 12]  # no duplicated rows


def test_resume_at_the_phase_boundary_starts_the_online_phase(tmp_path):
    loop, _, run = make_loop(tmp_path, online_steps=0)
    result = loop.run()
    run.close()
    assert result["steps"] == 6 and len(loop.online_rb) == 0
    again, rec, run2 = make_loop(tmp_path, resume=run.dir, online_steps=3)
    assert again.run()["steps"] == 9 and len(rec.batches) == 3
    run2.close()


def test_settings_read_the_recipe_keys_and_reject_bad_values():
    cfg = {
        "offline": {"steps": 10},
        "online": {"steps": 4, "mixing_ratio": 0.25, "utd_ratio": 2, "frames_per_batch": 2, "buffer_size": None},
        "data": {"batch_size": 8},
        "eval": {"every": 5, "episodes": 2},
        "logger": {"log_every": 7},
    }
    s = TrainerSettings.from_config(cfg)
    assert (s.total_steps, s.mixing_ratio, s.utd_ratio, s.buffer_size, s.log_every) == (14, 0.25, 2.0, 4, 7)
    with pytest.raises(ValueError, match="mixing_ratio"):
        settings(mixing_ratio=1.5)
    with pytest.raises(ValueError, match="utd_ratio"):
        settings(utd_ratio=0)
