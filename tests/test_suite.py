"""benchmarks/suite.py: the commands it runs, resuming and skipping, and the reports it writes.

The fast tests replace the recipe processes by a runner that writes synthetic run directories
(:class:`~diffrl.train.metrics.MetricLogger`); the real tiny end-to-end run is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("rliable")


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("diffrl_bench_suite", ROOT / "benchmarks" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _arg(command: list[str], key: str) -> str | None:
    return next((part.split("=", 1)[1] for part in command if part.startswith(key + "=")), None)


class FakeRunner:
    """Stands in for a recipe process: writes a run directory with evaluations depending on method and seed."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.commands: list[list[str]] = []
        self.envs: list[dict] = []
        self.fail = fail

    def __call__(self, command: list[str], log, env: dict) -> int:
        from diffrl.train.metrics import MetricLogger

        self.commands.append(command)
        self.envs.append(env)
        run_dir = _arg(command, "logger.dir") or _arg(command, "resume")
        if Path(run_dir).name in self.fail:
            log.write("Traceback: boom\n")
            return 1
        seed, recipe = int(_arg(command, "seed")), Path(command[1]).stem
        offline, online = int(_arg(command, "offline.steps") or 0), int(_arg(command, "online.steps") or 0)
        config = {"seed": seed, "offline": {"steps": offline}, "online": {"steps": online}}
        # A method's level: EDIS variants +10 over their base, so the paired difference is known exactly.
        level = {"calql": 50.0, "edis_calql": 60.0, "iql": 40.0, "edis_iql": 50.0}.get(recipe, 30.0)
        if _arg(command, "loss.eta") == "0":
            level = 20.0
        if offline and online:  # three evaluations in each phase
            steps = [offline // 3, 2 * offline // 3, offline, offline + online // 3, offline + 2 * online // 3]
            steps.append(offline + online)
        else:
            steps = [(offline or online) * k // 6 for k in range(1, 7)]
        with MetricLogger(run_dir, config=config) as logger:
            for k, step in enumerate(steps):
                logger.log({"eval/normalized_score": level + seed + k, "eval/episodes": 10.0}, step)
            logger.log({"train/cpu_seconds": 7.0}, steps[-1])
        log.write(f"{recipe}: normalized score {level} (last 3 evals)\n")
        return 0


def test_dry_run_lists_one_command_per_method_and_seed_with_shared_budgets(suite, tmp_path, capsys):
    assert suite.main(["--dry-run", "--cells", "o2o-pendulum", "--seeds", "3", "4", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python recipes/")]
    assert len(lines) == 8  # 4 methods x 2 seeds, seed-major
    recipes = [line.split()[1] for line in lines]
    assert recipes == ["recipes/calql.py", "recipes/edis_calql.py", "recipes/iql.py", "recipes/edis_iql.py"] * 2
    budgets = set()
    for line in lines:
        args = dict(part.split("=", 1) for part in line.split()[2:])
        assert args["threads"] == "1" and args["data.dataset_id"] == "diffrl/pendulum/medium-v0"
        assert int(args["eval.episodes"]) >= 10
        assert args["logger.dir"].endswith(f"o2o-pendulum/runs/{Path(args['logger.dir']).name}")
        budgets.add((args["offline.steps"], args["online.steps"], args["eval.every"], args["eval.exploration"]))
    assert len(budgets) == 1  # every method the same budget and evaluation
    assert [line.split()[2] for line in lines] == ["seed=3"] * 4 + ["seed=4"] * 4
    assert not (tmp_path / "o2o-pendulum" / "runs").exists()  # nothing ran


def test_offline_methods_are_the_brief_s_baselines(suite, tmp_path, capsys):
    suite.main(["--dry-run", "--cells", "offline-pendulum", "--seeds", "0", "--out", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python recipes/")]
    by_run = {Path(_arg(line.split(), "logger.dir")).name: line.split() for line in lines}
    assert set(by_run) == {"diffusion_ql_seed0", "diffusion_bc_seed0", "gaussian_bc_seed0"}
    assert _arg(by_run["diffusion_ql_seed0"], "loss.eta") is None
    assert _arg(by_run["diffusion_bc_seed0"], "loss.eta") == "0"
    gaussian = by_run["gaussian_bc_seed0"]
    assert gaussian[1] == "recipes/iql.py" and _arg(gaussian, "online.steps") == "0"
    assert _arg(gaussian, "loss.temperature") == "0"
    assert len({_arg(cmd, "offline.steps") for cmd in by_run.values()}) == 1


def test_overrides_reach_all_methods_or_one(suite, tmp_path, capsys):
    argv = ["--dry-run", "--cells", "o2o-pendulum", "--seeds", "0", "--out", str(tmp_path)]
    suite.main([*argv, "-o", "edis_calql:edis.synthetic_fraction=0.2", "-o", "online.utd_ratio=2"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("python recipes/")]
    assert [_arg(cmd, "online.utd_ratio") for cmd in lines] == ["2"] * 4
    assert [_arg(cmd, "edis.synthetic_fraction") for cmd in lines] == [None, "0.2", None, None]
    with pytest.raises(SystemExit):
        suite.main([*argv, "-o", "sac:online.steps=5"])  # sac is not a method of o2o-pendulum
    assert "METHOD one of the selected cells' methods" in capsys.readouterr().err


def test_every_command_is_a_valid_recipe_config(suite):
    from diffrl.train.config import load_config

    for cell in suite.CELLS.values():
        for method in cell.methods:
            for budget in suite.BUDGETS:
                argv = suite.recipe_argv(cell, method, 0, budget)
                load_config(suite.RECIPES / f"{method.recipe}.py", argv)  # a wrong key or value raises ConfigError


def test_runs_reports_and_skips_finished_runs(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "unavailable", lambda cell, build: None)
    monkeypatch.setattr(suite, "dataset_row", lambda dataset_id: {"episodes": 7, "iqm": 55.0, "mean": 54.0, "std": 3.0})
    runner = FakeRunner()
    argv = ["--cells", "o2o-pendulum", "offline-pendulum", "--seeds", "0", "1", "--out", str(tmp_path), "--reps", "50"]
    assert suite.main(argv, runner=runner) == 0
    assert len(runner.commands) == 2 * 4 + 2 * 3
    assert all(env["OMP_NUM_THREADS"] == "1" and env["DIFFRL_PROGRESS"] == "0" for env in runner.envs)
    cell = tmp_path / "o2o-pendulum"
    done = json.loads((cell / "runs" / "edis_calql_seed1" / "done.json").read_text())
    assert done["seed"] == 1 and done["method"] == "edis_calql" and "cpu_seconds" in done
    assert (cell / "logs" / "edis_calql_seed1.log").read_text().startswith("$ python recipes/edis_calql.py")
    for name in ("edis_calql_vs_calql_online", "edis_iql_vs_iql_offline"):
        assert (cell / name / "report.md").is_file() and (cell / name / "normalized_score.png").is_file()
    readme = (tmp_path / "README.md").read_text()
    # The fake writes EDIS variants +10 over their base on every seed.
    online = readme.split("### edis_calql vs calql, online phase")[1].split("###")[0]
    assert re.search(r"\| edis_calql \| 2 \| .* \| \+10\.0 \[10\.0, 10\.0\] \(n=2\)", online)
    assert "7.0 s" in online or "7 s" in online  # CPU time per run from train/cpu_seconds
    assert "python benchmarks/suite.py --cells o2o-pendulum --seeds 0 1" in readme
    assert "Machine:" in readme and "torch" in readme
    offline = readme.split("## offline-pendulum")[1]
    assert "| dataset (its own episodes) | 7 episodes | 55.0 (fixed) | 54.0 +- 3.0 |" in offline
    assert "paired diff vs diffusion_bc" in offline
    assert (tmp_path / "offline-pendulum" / "report.md").is_file()
    # Second invocation: everything finished, nothing runs again, reports are rebuilt.
    again = FakeRunner()
    assert suite.main(argv, runner=again) == 0
    assert again.commands == []


def test_interrupted_run_is_resumed_and_failures_reported(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "unavailable", lambda cell, build: None)
    # An interrupted run: a checkpoint but no done.json -> resume=RUN_DIR, not a fresh logger.dir.
    run_dir = tmp_path / "online-pendulum" / "runs" / "qsm_seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_20.pt").write_bytes(b"")
    runner = FakeRunner(fail={"sac_seed0"})
    argv = ["--cells", "online-pendulum", "--seeds", "0", "--out", str(tmp_path), "--reps", "50"]
    assert suite.main(argv, runner=runner) == 1  # one run failed
    qsm, sac = runner.commands
    assert _arg(qsm, "resume") == str(run_dir) and _arg(qsm, "logger.dir") is None
    assert _arg(sac, "logger.dir") is not None
    assert not (tmp_path / "online-pendulum" / "runs" / "sac_seed0" / "done.json").exists()
    assert "failed runs" in capsys.readouterr().out and (run_dir / "done.json").is_file()
    assert not (run_dir / "checkpoints").exists()  # deleted once the run finished
    # --report-only runs nothing (not even the failed run) and rewrites the README from the runs on disk.
    (tmp_path / "README.md").unlink()
    again = FakeRunner()
    assert suite.main([*argv, "--report-only"], runner=again) == 0
    assert again.commands == []
    assert "| qsm | 1 |" in (tmp_path / "README.md").read_text()


def test_missing_dataset_skips_only_its_cell(suite, tmp_path, monkeypatch):
    from diffrl.data import local_dataset_ids

    hopper = suite.CELLS["offline-hopper"]
    if hopper.dataset in local_dataset_ids():
        pytest.skip("the hopper dataset exists in this MINARI_DATASETS_PATH")
    real = suite.unavailable
    monkeypatch.setattr(suite, "unavailable", lambda cell, build: real(cell, build) if cell is hopper else None)
    runner = FakeRunner()
    argv = ["--cells", "offline-hopper", "online-pendulum", "--seeds", "0", "--out", str(tmp_path), "--reps", "50"]
    assert suite.main(argv, runner=runner) == 0
    assert {Path(c[1]).stem for c in runner.commands} == {"qsm", "sac"}
    readme = (tmp_path / "README.md").read_text()
    assert "**Skipped**: dataset diffrl/hopper/medium-v0 is not built here" in readme
    assert "## online-pendulum" in readme


def test_list_prints_every_cell_with_its_cost(suite, capsys):
    assert suite.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in suite.CELLS:
        assert re.search(rf"^{name}\s+~\s*\d+ CPU-min", out, re.M)
    assert "CPU-hours" in out


def test_unknown_cell_is_one_line_error(suite, capsys):
    with pytest.raises(SystemExit) as err:
        suite.main(["--cells", "offline-cartpole"])
    assert err.value.code == 2
    assert "unknown cell(s) offline-cartpole" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_o2o_pendulum_end_to_end(suite, tmp_path):
    argv = ["--budget", "tiny", "--seeds", "0", "1", "--cells", "o2o-pendulum", "--out", str(tmp_path), "--reps", "50"]
    assert suite.main(argv) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "### edis_calql vs calql, online phase" in readme and "### edis_iql vs iql, offline phase" in readme
    for method in ("calql", "edis_calql", "iql", "edis_iql"):
        for seed in (0, 1):
            done = json.loads((tmp_path / "o2o-pendulum" / "runs" / f"{method}_seed{seed}" / "done.json").read_text())
            assert done["cpu_seconds"] > 0 and np.isfinite(done["seconds"])
