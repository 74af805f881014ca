"""Checkpoints: exact resume of a seeded training loop, atomic writes, strict loading, run-level resume."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import LazyTensorStorage, RandomSampler, ReplayBuffer, TensorDictReplayBuffer
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import DDPGLoss, SoftUpdate

from diffrl.train import (
    Checkpointer,
    CheckpointError,
    latest_checkpoint,
    read_metrics,
    seed_everything,
    start_run,
    without_contents,
)

OBS, ACT = 3, 1


def _transitions(n: int) -> TensorDict:
    # Drawn from the global torch generator: new data depends on the RNG state, as data from a collector would.
    return TensorDict(
        {
            "observation": torch.randn(n, OBS),
            "action": torch.rand(n, ACT) * 2 - 1,
            "next": {
                "observation": torch.randn(n, OBS),
                "reward": torch.randn(n, 1),
                "done": torch.rand(n, 1) < 0.1,
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def _build(seed: int) -> SimpleNamespace:
    seed_everything(seed)
    actor = TensorDictModule(
        MLP(in_features=OBS, out_features=ACT, num_cells=[16], activation_class=torch.nn.Tanh),
        in_keys=["observation"],
        out_keys=["action"],
    )
    value = ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[16]), in_keys=["observation", "action"])
    loss = DDPGLoss(actor, value, delay_actor=True, delay_value=True)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=3, gamma=0.9)
    updater = SoftUpdate(loss, tau=0.2)
    # Capacity below what the loop writes: the writer cursor wraps, so the buffer's writer state matters.
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(40), sampler=RandomSampler(), batch_size=8)
    rb.extend(_transitions(24))
    return SimpleNamespace(loss=loss, optim=optim, sched=sched, updater=updater, rb=rb)


def _train(o: SimpleNamespace, steps: int) -> None:
    for _ in range(steps):
        o.rb.extend(_transitions(3))
        out = o.loss(o.rb.sample())
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        o.optim.zero_grad()
        total.backward()
        o.optim.step()
        o.sched.step()
        o.updater.step()


def _objects(o: SimpleNamespace) -> dict:
    return {"loss": o.loss, "optim": o.optim, "sched": o.sched, "updater": o.updater, "rb": o.rb}


def _assert_same_state(a: SimpleNamespace, b: SimpleNamespace) -> None:
    sa, sb = a.loss.state_dict(), b.loss.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


N, K = 12, 5


def test_resume_reaches_exactly_the_uninterrupted_parameters(tmp_path):
    straight = _build(seed=0)
    _train(straight, N)

    first = _build(seed=0)
    _train(first, K)
    path = Checkpointer(tmp_path, keep=1).save(K, **_objects(first), episodes=7)
    del first  # throw everything away

    resumed = _build(seed=123)  # other initial weights and RNG state: only the checkpoint can make them agree
    state = Checkpointer(tmp_path).load(tmp_path, **_objects(resumed))
    assert state["step"] == K and state["episodes"] == 7 and state["path"] == path
    _train(resumed, N - K)

    _assert_same_state(straight, resumed)
    target = [k for k in straight.loss.state_dict() if "target" in k]
    assert target, "the loss must carry target parameters for this test to cover them"
    assert straight.optim.param_groups[0]["lr"] == resumed.optim.param_groups[0]["lr"]
    assert (straight.rb[:] == resumed.rb[:]).all()  # same contents, same slots


def test_resume_without_rng_state_diverges(tmp_path):
    # Control: the test above would be vacuous if the loop did not depend on the generators.
    straight = _build(seed=0)
    _train(straight, N)
    first = _build(seed=0)
    _train(first, K)
    Checkpointer(tmp_path).save(K, **_objects(first))
    resumed = _build(seed=123)
    Checkpointer(tmp_path).load(tmp_path, restore_rng=False, **_objects(resumed))
    _train(resumed, N - K)
    weights = [k for k in straight.loss.state_dict() if "weight" in k]
    assert any(not torch.equal(straight.loss.state_dict()[k], resumed.loss.state_dict()[k]) for k in weights)


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch, error):
    net = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(1, net=net)
    good = ckpt.save(2, net=net)
    before = good.read_bytes()
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)

    def broken(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise error("interrupted")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(error):
        ckpt.save(2, net=net)  # same step: would overwrite the good file in place if not atomic
    with pytest.raises(error):
        ckpt.save(3, net=net)
    monkeypatch.undo()

    names = ["step_000000001.pt", "step_000000002.pt"]
    assert sorted(os.listdir(tmp_path)) == sorted(names + [n + ".sha256" for n in names])  # no temporary left over
    assert good.read_bytes() == before
    assert ckpt.latest() == good
    ckpt.load(tmp_path, net=net)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())


def test_keep_prunes_oldest_and_latest_finds_run_dir(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    net = torch.nn.Linear(1, 1)
    for step in (5, 50, 500, 1000):
        ckpt.save(step, net=net)
    assert [p.name for p in ckpt.checkpoints()] == ["step_000000500.pt", "step_000001000.pt"]
    assert latest_checkpoint(tmp_path) == ckpt.path_for(1000)  # a run dir: looks into checkpoints/
    assert latest_checkpoint(tmp_path / "missing") is None


def test_strict_load_names_forgotten_and_missing_objects(tmp_path):
    net, other = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(3, net=net, opt=opt, best=1.5)
    with pytest.raises(CheckpointError, match=r"holds best, net, opt; not passed to load: opt"):
        ckpt.load(net=net)
    with pytest.raises(CheckpointError, match=r"not in it: critic"):
        ckpt.load(net=net, opt=opt, critic=other)
    with pytest.raises(CheckpointError, match=r"plain value .* state\['best'\]"):
        ckpt.load(net=net, opt=opt, best=2.0)
    assert ckpt.load(net=net, strict=False)["best"] == 1.5
    with pytest.raises(CheckpointError, match=r"cannot restore 'net'.*size mismatch"):
        ckpt.load(net=torch.nn.Linear(3, 1), opt=opt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*empty \(looked for step_\*\.pt"):
        ckpt.load(tmp_path / "empty", net=net)
    (tmp_path / "step_000000009.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint .*step_000000009.pt is damaged: it "):
        ckpt.load(tmp_path / "step_000000009.pt", net=net, opt=opt)
    with pytest.warns(UserWarning, match=r"damaged checkpoint skipped: .*step_000000009.pt"):
        assert ckpt.load(net=net, opt=opt)["step"] == 3  # a directory: the newest intact checkpoint


def test_without_contents_restores_cursor_and_sampling(tmp_path):
    def filled() -> ReplayBuffer:
        rb = ReplayBuffer(storage=LazyTensorStorage(8), batch_size=4)
        rb.extend(torch.arange(11.0))  # wraps: cursor at 3
        return rb

    seed_everything(0)
    rb = filled()
    path = Checkpointer(tmp_path).save(1, rb=without_contents(rb))
    assert "_storage" not in torch.load(path, weights_only=False)["objects"]["rb"]
    expected = rb.sample()
    rb.extend(torch.tensor([100.0]))

    again = filled()
    torch.manual_seed(42)
    Checkpointer(tmp_path).load(rb=without_contents(again))
    assert torch.equal(again.sample(), expected)
    again.extend(torch.tensor([100.0]))
    assert torch.equal(again[:], rb[:])  # the write went to the same slot

    short = ReplayBuffer(storage=LazyTensorStorage(8), batch_size=4)
    short.extend(torch.arange(3.0))
    with pytest.raises(CheckpointError, match="holds 3 items but was checkpointed with 8"):
        Checkpointer(tmp_path).load(rb=without_contents(short))


def test_env_generator_is_checkpointed(tmp_path):
    from torchrl.envs import GymEnv

    env = GymEnv("Pendulum-v1")
    env.set_seed(0)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(0, env=env)
    first = env.reset()["observation"]
    env.reset()
    ckpt.load(env=env)
    assert torch.equal(env.reset()["observation"], first)


def test_run_resume_continues_metrics_without_duplicates(tmp_path):
    cfg = OmegaConf.create({"logger": {"dir": str(tmp_path / "run"), "backend": "csv", "keep": 1}, "resume": None})
    net = torch.nn.Linear(1, 1)
    with start_run(cfg) as run:
        for step in range(1, 8):
            run.log({"train/x": float(step)}, step)
            if step == 5:
                run.save(step, net=net)
    # crashed after step 7; the checkpoint is at step 5
    cfg.resume = str(run.dir)
    with start_run(cfg) as again:
        assert again.dir == run.dir
        start = again.resume(net=net)
        assert start == 5
        for step in range(start + 1, 11):
            again.log({"train/x": float(step)}, step)
    steps, values = read_metrics(run.dir)["train/x"]
    assert steps.tolist() == list(range(1, 11))
    assert values.tolist() == [float(s) for s in range(1, 11)]
    assert OmegaConf.load(run.dir / "config.yaml").resume is None  # the run's record is never rewritten by a resume
    [entry] = yaml.safe_load((run.dir / "resumes.yaml").read_text())
    assert entry["step"] == 5 and entry["from"].endswith("step_000000005.pt") and entry["changed"] == {}
    # a fresh (not resumed) run never writes into a directory that holds a run
    cfg.resume = None
    with start_run(cfg) as fresh:
        assert fresh.dir.name == "run-1"


TOY_RECIPE_YAML = """\
seed: 0
resume: null
offline: {steps: 10, save_every: 3}
logger: {dir: RUNS/toy, backend: csv, keep: 2}
"""


def test_recipe_interrupted_then_resumed_ends_with_the_uninterrupted_parameters(tmp_path):
    from diffrl.train import make_progress, run_recipe

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text(TOY_RECIPE_YAML.replace("RUNS", str(tmp_path / "runs")))
    finished, starts, crash = {}, [], {"at": None}

    def main(cfg):  # a recipe body, as short as the real ones
        o = _build(cfg.seed)
        run = start_run(cfg)
        start = run.resume(**_objects(o))
        starts.append(start)
        bar = make_progress(cfg.offline.steps, "toy", initial=start, disable=True)
        for step in range(start + 1, cfg.offline.steps + 1):
            if step == crash["at"]:
                raise KeyboardInterrupt  # killed: the run dir keeps what was written so far
            _train(o, 1)
            run.log({"train/lr": o.optim.param_groups[0]["lr"]}, step)
            bar.update(1)
            if step % cfg.offline.save_every == 0:
                run.save(step, **_objects(o))
        run.close()
        finished[run.dir.name] = o
        return run.dir

    straight = run_recipe(main, tmp_path / "toy.py", [])
    crash["at"] = 8
    with pytest.raises(KeyboardInterrupt):
        run_recipe(main, tmp_path / "toy.py", [])
    crash["at"] = None
    crashed = tmp_path / "runs" / "toy-1"
    assert read_metrics(crashed)["train/lr"][0].tolist() == list(range(1, 8))
    # resume=RUN_DIR: the saved config is the base (logger.dir points to the first run's name, runs/toy)
    resumed = run_recipe(main, tmp_path / "toy.py", [f"resume={crashed}"])
    assert resumed == crashed and starts == [0, 0, 6]  # the last run did only steps 7..10
    _assert_same_state(finished[straight.name], finished[crashed.name])
    assert read_metrics(crashed)["train/lr"][0].tolist() == list(range(1, 11))
    assert read_metrics(crashed)["train/lr"][1].tolist() == read_metrics(straight)["train/lr"][1].tolist()
    assert [p.name for p in Checkpointer(crashed / "checkpoints").checkpoints()] == [
        "step_000000006.pt",
        "step_000000009.pt",
    ]


def test_unwritten_replay_rows_do_not_make_a_checkpoint_damaged(tmp_path):
    # LazyTensorStorage preallocates with torch.empty: rows past the written ones may hold NaN bit patterns. Only the
    # written rows are the run's data; a NaN there still marks the checkpoint damaged.
    o = _build(seed=0)
    storage = o.rb._storage._storage
    storage["observation"][30] = float("nan")  # 24 rows written, capacity 40: row 30 is unwritten
    path = Checkpointer(tmp_path / "ok").save(1, rb=o.rb)
    assert Checkpointer(tmp_path / "ok").load(path, rb=_build(seed=1).rb)["step"] == 1
    storage["observation"][5] = float("nan")  # a written row
    bad = Checkpointer(tmp_path / "bad").save(1, rb=o.rb)
    with pytest.raises(CheckpointError, match="non-finite values in objects.rb._storage._storage.observation"):
        Checkpointer(tmp_path / "bad").load(bad, rb=_build(seed=1).rb)
