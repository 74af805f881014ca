"""Runs that survive bad input and faults: run directories, resume records, damaged checkpoints, file modes.

Fast cases only (tiny modules, no recipe runs); the recipe-level kill-and-resume checks live in tests/test_faults.py.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import signal
import stat
import threading

import numpy as np
import pytest
import torch
import yaml

from diffrl.train.checkpoint import Checkpointer, CheckpointError
from diffrl.train.config import ConfigError, load_config, run_recipe
from diffrl.train.faults import NonFiniteLossError, RunInterrupted
from diffrl.train.files import atomic_write_text
from diffrl.train.run import fresh_run_dir, start_run

# ------------------------------------------------------------------------------------------------ run directories


def test_fresh_run_dir_never_adopts_an_existing_directory(tmp_path):
    (tmp_path / "run").mkdir()  # empty, e.g. just created by another run that has not written anything yet
    assert fresh_run_dir(tmp_path / "run").name == "run-1"
    assert fresh_run_dir(tmp_path / "run").name == "run-2"


def test_threads_claiming_the_same_directory_get_distinct_ones(tmp_path):
    n = 16
    barrier, claimed = threading.Barrier(n), []

    def claim():
        barrier.wait()
        claimed.append(fresh_run_dir(tmp_path / "run"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run"] + [f"run-{i}" for i in range(1, n)])


def _claim_in_process(path, barrier, queue):
    barrier.wait()
    queue.put(str(fresh_run_dir(path)))


def test_processes_claiming_the_same_directory_get_distinct_ones(tmp_path):
    ctx = multiprocessing.get_context("fork")  # forked: no second import of torch
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(tmp_path / "run", barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert len(set(claimed)) == n and all(p.exitcode == 0 for p in procs)


# ------------------------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_new_files_the_mode_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "config.yaml", "seed: 0\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_atomic_write_keeps_the_mode_of_a_replaced_file(tmp_path):
    path = atomic_write_text(tmp_path / "notes.txt", "a")
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "b"


# ------------------------------------------------------------------------------------------------ damaged checkpoints


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))


def _saved(tmp_path, steps=(1, 2)):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=None)
    net, opt = _net(), None
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 64)).sum().backward()
    opt.step()
    for step in steps:
        ckpt.save(step, net=net, opt=opt)
    return ckpt, net, opt


def test_every_checkpoint_has_a_sha256_digest_beside_it(tmp_path):
    ckpt, _, _ = _saved(tmp_path)
    for path in ckpt.checkpoints():
        digest = path.with_name(path.name + ".sha256").read_text().split()
        assert digest == [hashlib.sha256(path.read_bytes()).hexdigest(), path.name]  # sha256sum -c format


def test_finite_bytes_written_into_the_newest_checkpoint_fall_back_to_the_previous(tmp_path, capsys):
    ckpt, net, opt = _saved(tmp_path)
    newest = ckpt.path_for(2)
    data = bytearray(newest.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 8192] = np.ones(2048, dtype=np.float32).tobytes()  # 8 KB of finite floats
    newest.write_bytes(bytes(data))
    fresh = _net(seed=1)
    with pytest.warns(UserWarning, match=r"damaged checkpoint skipped: .*step_000000002\.pt.*step_000000001\.pt"):
        state = Checkpointer(ckpt.directory).load(tmp_path, net=fresh, opt=torch.optim.Adam(fresh.parameters()))
    assert state["step"] == 1 and state["path"] == ckpt.path_for(1)
    assert torch.equal(fresh[0].weight, net[0].weight)
    assert "warning: damaged checkpoint skipped" in capsys.readouterr().err


def test_no_intact_checkpoint_is_one_error_naming_every_file(tmp_path):
    ckpt, net, opt = _saved(tmp_path)
    rng = np.random.default_rng(0)
    for path in ckpt.checkpoints():
        path.write_bytes(rng.bytes(path.stat().st_size))
    with pytest.raises(CheckpointError) as info:
        ckpt.load(net=net, opt=opt)
    message = str(info.value)
    assert "\n" not in message and "step_000000001.pt" in message and "step_000000002.pt" in message
    assert message.startswith("no intact checkpoint in")


def test_a_checkpoint_with_non_finite_tensors_is_refused_even_with_a_valid_digest(tmp_path):
    net = _net()
    with torch.no_grad():
        net[1].bias.fill_(float("nan"))
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, net=net)
    with pytest.raises(CheckpointError, match=r"damaged: it holds non-finite values in objects\.net\.1\.bias"):
        ckpt.load(net=_net())


def test_a_checkpoint_without_digest_is_used_only_if_finite(tmp_path):
    ckpt, net, opt = _saved(tmp_path, steps=(1,))
    ckpt.path_for(1).with_name("step_000000001.pt.sha256").unlink()  # an older checkpoint format
    with pytest.warns(UserWarning, match=r"has no digest"):
        assert ckpt.load(net=net, opt=opt)["step"] == 1
    state = torch.load(ckpt.path_for(1), weights_only=False)  # our own file
    state["objects"]["opt"]["state"][0]["exp_avg"][0, 0] = float("inf")
    torch.save(state, ckpt.path_for(1))
    with pytest.raises(CheckpointError, match=r"non-finite values in objects\.opt\.state\.0\.exp_avg"):
        ckpt.load(net=net, opt=opt)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "step_000000007.pt"
    path.parent.mkdir()
    payload = {"format": "diffrl-checkpoint", "version": 1, "step": 7, "kinds": {}, "objects": {"x": _Payload(marker)}}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as info:
        Checkpointer(path.parent).load(tmp_path)
    assert not marker.exists()
    assert "\n" not in str(info.value) and "; refused" in str(info.value)


def test_a_checkpoint_of_another_recipe_is_refused_naming_both(tmp_path):
    Checkpointer(tmp_path / "checkpoints", recipe="calql").save(3, net=_net())
    with pytest.raises(
        CheckpointError, match=r"written by recipe 'calql', not 'iql'; .*python recipes/calql\.py resume="
    ):
        Checkpointer(tmp_path / "checkpoints", recipe="iql").load(tmp_path, net=_net())


# ------------------------------------------------------------------------------------------------ resume records

TOY = """\
seed: 0
resume: null
device: cpu
threads: 1
model: {hidden: 8}
data: {batch_size: 4}
offline: {steps: 4}
online: {steps: 6, utd_ratio: 1.0}
eval: {every: 2, episodes: 1}
logger: {dir: RUNS/toy, backend: csv, keep: 2}
"""


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text(TOY.replace("RUNS", str(tmp_path / "runs")))
    return tmp_path / "toy.py"


def _toy_main(cfg):
    net = torch.nn.Linear(2, cfg.model.hidden)
    run = start_run(cfg)
    start = run.resume(net=net)
    for step in range(start + 1, cfg.offline.steps + cfg.online.steps + 1):
        run.log({"train/x": float(step)}, step)
        if step % cfg.eval.every == 0:
            run.save(step, net=net)
    run.close()
    return run.dir


def _snapshot(directory):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.hidden=16", "model.hidden (8 -> 16)"),
        ("seed=7", "seed (0 -> 7)"),
        ("data.batch_size=8", "data.batch_size"),
    ],
)
def test_a_resume_that_would_change_the_run_is_refused_and_writes_nothing(toy, capsys, override, named):
    run_dir = run_recipe(_toy_main, toy, ["online.steps=2"])
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit) as info:
        run_recipe(_toy_main, toy, [f"resume={run_dir}", override])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"may not change {named}" in err and "start a new run" in err
    assert _snapshot(run_dir) == before  # config.yaml, CSVs and checkpoints untouched; no resumes.yaml
    assert run_recipe(_toy_main, toy, [f"resume={run_dir}"]) == run_dir  # not bricked: a plain resume still works


def test_an_accepted_resume_keeps_config_yaml_and_appends_what_it_changed(toy):
    run_dir = run_recipe(_toy_main, toy, ["online.steps=2"])
    config = (run_dir / "config.yaml").read_bytes()
    run_recipe(_toy_main, toy, [f"resume={run_dir}", "online.steps=4", "eval.every=3", "seed=0"])  # seed: unchanged
    run_recipe(_toy_main, toy, [f"resume={run_dir}", "online.steps=6"])
    assert (run_dir / "config.yaml").read_bytes() == config
    first, second = yaml.safe_load((run_dir / "resumes.yaml").read_text())
    assert first["step"] == 6 and first["from"].endswith("step_000000006.pt")
    assert first["changed"] == {"online.steps": {"old": 2, "new": 4}, "eval.every": {"old": 2, "new": 3}}
    assert second["step"] == 6 and second["changed"] == {"online.steps": {"old": 2, "new": 6}}
    assert stat.S_IMODE((run_dir / "resumes.yaml").stat().st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_restore_records_no_resume(toy):
    run_dir = run_recipe(_toy_main, toy, ["online.steps=2"])
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"\0" * 64)
    with pytest.raises(SystemExit):
        run_recipe(_toy_main, toy, [f"resume={run_dir}", "online.steps=4"])
    assert not (run_dir / "resumes.yaml").exists()


def test_the_run_and_its_checkpoints_record_the_recipe_and_another_recipe_is_refused(toy, capsys):
    run_dir = run_recipe(_toy_main, toy, ["online.steps=2"])
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["recipe"] == "toy"
    assert torch.load(run_dir / "checkpoints" / "step_000000006.pt", weights_only=False)["recipe"] == "toy"
    (toy.parent / "configs" / "other.yaml").write_text((toy.parent / "configs" / "toy.yaml").read_text())
    with pytest.raises(SystemExit) as info:
        run_recipe(_toy_main, toy.parent / "other.py", [f"resume={run_dir}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"started by recipe 'toy', not 'other'; resume it with: python recipes/toy.py resume={run_dir}" in err
    # a checkpoint file given directly (no run.yaml to read) is refused by the checkpoint's own record
    (run_dir / "run.yaml").unlink()
    with pytest.raises(SystemExit):
        run_recipe(_toy_main, toy.parent / "other.py", [f"resume={run_dir / 'checkpoints' / 'step_000000006.pt'}"])
    assert "written by recipe 'toy', not 'other'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input, stops


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("offline.steps=-5", "config key 'offline.steps' must be >= 0, got -5; e.g. offline.steps=4"),
        ("online.steps=-1", "'online.steps' must be >= 0"),
        ("data.batch_size=0", "config key 'data.batch_size' must be >= 1, got 0; e.g. data.batch_size=4"),
        ("threads=-1", "'threads' must be >= 0"),
        ("online.utd_ratio=0", "'online.utd_ratio' must be > 0, got 0.0"),
        ("eval.episodes=0", "'eval.episodes' must be >= 1"),
        ("eval.every=-2", "'eval.every' must be >= 0"),
        ("logger.keep=0", "'logger.keep' must be >= 1"),
    ],
)
def test_out_of_range_numbers_are_one_line_exit_2_and_nothing_on_disk(toy, capsys, override, message):
    with pytest.raises(SystemExit) as info:
        run_recipe(_toy_main, toy, [override])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == f"error: {err[7:].strip()}\n" and message in err
    assert not (toy.parent / "runs").exists()


def test_bad_input_found_after_the_run_started_removes_the_directory_it_created(toy, capsys):
    from diffrl.registry import RegistryError

    def fails_late(error):
        def main(cfg):
            run = start_run(cfg)
            run.log({"train/x": 1.0}, 1)
            raise error("unknown dataset id 'nope'; e.g. data.dataset_id=diffrl/pendulum/medium-v0")

        return main

    for error in (ConfigError, RegistryError):
        with pytest.raises(SystemExit) as info:
            run_recipe(fails_late(error), toy, [])
        assert info.value.code == 2 and "unknown dataset id" in capsys.readouterr().err
        assert list((toy.parent / "runs").iterdir()) == []  # the parent stays; the run directory is gone

    run_dir = run_recipe(_toy_main, toy, ["online.steps=2"])  # a run with checkpoints is never removed
    with pytest.raises(SystemExit):
        run_recipe(fails_late(ConfigError), toy, [f"resume={run_dir}"])
    assert (run_dir / "config.yaml").is_file() and any(run_dir.glob("checkpoints/step_*.pt"))


def test_an_interrupted_run_prints_where_its_checkpoint_is_and_how_to_resume(toy, capsys):
    def interrupted(signum, message=""):
        def main(cfg):
            run = start_run(cfg)
            run.save(4, net=torch.nn.Linear(1, 1))
            raise RunInterrupted(signum, message)

        return main

    with pytest.raises(SystemExit) as info:
        run_recipe(interrupted(signal.SIGINT), toy, [])
    err = capsys.readouterr().err
    run_dir = toy.parent / "runs" / "toy"
    assert info.value.code == 130 and err.count("\n") == 1
    assert err.startswith(f"interrupted by SIGINT at step 4; checkpoint saved: {run_dir}/checkpoints/step_000000004.pt")
    assert err.rstrip().endswith(f"toy.py resume={run_dir}")
    with pytest.raises(SystemExit) as info:
        run_recipe(interrupted(signal.SIGTERM, "interrupted by SIGTERM at step 9; the loop's own line"), toy, [])
    assert (
        info.value.code == 143 and capsys.readouterr().err == "interrupted by SIGTERM at step 9; the loop's own line\n"
    )


def test_a_non_finite_loss_is_one_error_line_and_exit_1(toy, capsys):
    def diverges(cfg):
        raise NonFiniteLossError(3, "loss_qvalue", float("nan"), "last good checkpoint: step_000000002.pt")

    with pytest.raises(SystemExit) as info:
        run_recipe(diverges, toy, [])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "error: non-finite loss_qvalue (nan) at step 3; last good checkpoint: step_000000002.pt\n"
    )


# ------------------------------------------------------------------------------------------------ config composition


def test_a_config_extends_its_base_and_adds_sections(toy, capsys):
    configs = toy.parent / "configs"
    (configs / "variant.yaml").write_text(
        "_base_: toy.yaml\nmodel: {hidden: 16}\nedis: {num_samples: 64, guidance: {state: 1.0}}\n"
    )
    (configs / "variant2.yaml").write_text("_base_: variant.yaml\nedis: {num_samples: 32}\n")  # a chain
    cfg = load_config(toy.parent / "variant2.py", ["edis.guidance.state=0.5"])
    assert cfg.model.hidden == 16 and cfg.data.batch_size == 4 and cfg.edis.num_samples == 32
    assert cfg.edis.guidance.state == 0.5 and "_base_" not in cfg
    with pytest.raises(ConfigError, match=r"unknown config key 'edis\.num_sample'"):  # the merged config is strict
        load_config(toy.parent / "variant2.py", ["edis.num_sample=3"])
    with pytest.raises(SystemExit):
        load_config(toy.parent / "variant2.py", ["--help"])
    shown = yaml.safe_load(capsys.readouterr().out.split(":\n\n", 1)[1])
    assert shown["edis"] == {"num_samples": 32, "guidance": {"state": 1.0}} and shown["offline"] == {"steps": 4}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"}, r"cycle \(a\.yaml -> b\.yaml -> a\.yaml\)"),
        ({"a.yaml": "_base_: missing.yaml\n"}, r"extends 'missing\.yaml' \(_base_\), which does not exist"),
        ({"a.yaml": "_base_: toy.yaml\nmodel: {hidden: [8, 8]}\n"}, r"'model\.hidden' expects int, got \[8, 8\] \(a"),
        ({"a.yaml": "_base_: toy.yaml\nmodel: 3\n"}, r"'model' is a section"),
    ],
)
def test_a_broken_base_chain_is_one_line(toy, files, message):
    for name, text in files.items():
        (toy.parent / "configs" / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(toy.parent / "a.py", [])
    assert "\n" not in str(info.value)


def test_config_accepts_a_short_name(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = toy.parent / "configs"
    (configs / "toy").mkdir()
    (configs / "toy" / "hopper.yaml").write_text("offline: {steps: 11}\n")
    (configs / "toy_walker.yaml").write_text("offline: {steps: 22}\n")
    assert load_config(toy, ["config=hopper"]).offline.steps == 11
    assert load_config(toy, ["config=hopper.yaml"]).offline.steps == 11
    assert load_config(toy, ["config=walker"]).offline.steps == 22
    assert load_config(toy, ["config=toy_walker.yaml"]).offline.steps == 22  # the full file name still works
    assert load_config(toy, ["config=toy_hopper.yaml"]).offline.steps == 11  # and the old flat name, once moved
    with pytest.raises(ConfigError) as info:
        load_config(toy, ["config=ant"])
    message = str(info.value)
    for tried in ("configs/toy/ant.yaml", "configs/toy_ant.yaml", f"{tmp_path}/ant and", "configs/ant"):
        assert tried in message


def test_plain_numpy_values_still_round_trip_through_the_weights_only_reader(tmp_path):
    ckpt = Checkpointer(tmp_path)
    value = {"score": np.float64(-1.5), "ids": np.arange(3, dtype=np.int32), "done": np.array([True, False])}
    ckpt.save(1, value=value, generator=np.random.default_rng(3))
    generator = np.random.default_rng(0)
    state = ckpt.load(generator=generator)
    assert state["value"]["score"] == -1.5 and state["value"]["ids"].tolist() == [0, 1, 2]
    assert state["value"]["done"].tolist() == [True, False]
    assert generator.random() == np.random.default_rng(3).random()
