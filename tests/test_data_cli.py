"""The dataset command line: make, list, info, delete, and its error messages."""

from __future__ import annotations

import os
import subprocess
import sys

import minari
import pytest

from diffrl.data.__main__ import main
from diffrl.data.paths import dataset_dir


def test_make_list_info_delete_cycle(capsys):
    dataset_id = "cli/pendulum/random-v0"
    code = main(
        ["make", dataset_id, "--env", "Pendulum-v1", "--num-steps", "300", "--seed", "1"]
        + ["--ref-min", "-1200", "--ref-max", "-150", "--description", "from the CLI"]
    )
    assert code == 0
    assert "cli/pendulum/random-v0: 2 episodes, 300 steps" in capsys.readouterr().out
    meta = minari.load_dataset(dataset_id).storage.metadata
    assert (meta["ref_min_score"], meta["description"], meta["algorithm_name"]) == (-1200.0, "from the CLI", "random")

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cli/pendulum/random-v0" in out and "2 episodes, 300 steps" in out
    assert "diffrl/pendulum/medium-v0" in out  # registered generators are listed too

    assert main(["info", dataset_id]) == 0
    out = capsys.readouterr().out
    assert "Pendulum-v1" in out and "2 / 300" in out and "-1200.0 / -150.0" in out
    assert "normalised score of the data" in out

    assert main(["delete", dataset_id]) == 0
    assert not dataset_dir(dataset_id).exists()
    assert main(["delete", dataset_id]) == 1
    assert "no local dataset 'cli/pendulum/random-v0'" in capsys.readouterr().err


def test_make_builds_registered_generators(monkeypatch, capsys):
    from diffrl import registry

    built = []

    class Fake:
        total_episodes, total_steps = 1, 5

    registry.register("dataset", "cli/fake/generated-v0", lambda **kw: built.append(kw) or Fake())
    try:
        assert main(["make", "cli/fake/generated-v0", "--seed", "4"]) == 0
    finally:
        registry.unregister("dataset", "cli/fake/generated-v0")
    assert built == [{"overwrite": False, "seed": 4}]
    assert "1 episodes, 5 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["make", "cli/unknown/thing-v0"], "unknown dataset 'cli/unknown/thing-v0'"),
        (["make", "cli/x/y-v0", "--env", "Pendulum-v1"], "exactly one of --num-steps and --num-episodes"),
        (["make", "cli/x/y-v0", "--env", "Pendulum-v1", "--num-steps", "5", "--policy", "nocolon"], "--policy must"),
        (["info", "cli/missing/thing-v0"], "no local dataset 'cli/missing/thing-v0'"),
        (["make", "cli/x/y-v0", "--env", "Pendulum-v1", "--num-steps", "0"], "--num-steps must be a positive number"),
        (["make", "cli/x/y-v0", "--env", "Pendulum-v1", "--num-episodes", "-2"], "of episodes to record, got -2."),
    ],
)
def test_errors_are_one_clear_message(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "None" not in err


def test_library_rejects_non_positive_budgets_by_name():
    from diffrl.data.writing import make_dataset

    with pytest.raises(
        ValueError, match=r"num_steps must be a positive integer \(the number of steps to record\), got 0\."
    ):
        make_dataset("Pendulum-v1", "random", "cli/zero/steps-v0", num_steps=0)
    with pytest.raises(ValueError, match=r"num_episodes must be .* got 0\.$"):
        make_dataset("Pendulum-v1", "random", "cli/zero/episodes-v0", num_episodes=0)


def test_module_entry_point_runs(minari_tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "diffrl.data", "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "{make,list,info,delete}" in result.stdout
