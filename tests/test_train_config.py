"""Recipe configuration: YAML next to the recipe, strict overrides, per-task files, --help, one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from diffrl.train import ConfigError, config_path, load_config, run_recipe

TOY_YAML = textwrap.dedent("""\
    seed: 0
    device: cpu
    resume: null
    env:
      name: Pendulum-v1
    offline:
      steps: 100
      lr: 3.0e-4
      hidden: [64, 64]
      use_ema: true
    eval:
      every: 10
      episodes: 2
      horizon: ${offline.steps}
    logger:
      dir: runs/toy
      backend: csv
""")


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text(TOY_YAML)
    return tmp_path / "toy.py"


def test_defaults_overrides_and_interpolation(recipe):
    cfg = load_config(recipe, [])
    assert cfg.offline.steps == 100 and cfg.eval.horizon == 100
    cfg = load_config(
        recipe,
        [
            "offline.steps=7",
            "offline.lr=1e-3",
            "offline.hidden=[8, 8, 8]",
            "seed=3",
            "offline.use_ema=false",
            "env.name=Hopper-v5",
        ],
    )
    assert (cfg.offline.steps, cfg.offline.lr, list(cfg.offline.hidden)) == (7, 1e-3, [8, 8, 8])
    assert cfg.seed == 3 and cfg.offline.use_ema is False and cfg.env.name == "Hopper-v5"
    assert cfg.eval.horizon == 7  # interpolations follow the overrides, then are resolved
    assert "${" not in OmegaConf.to_yaml(cfg)


def test_types_are_converted_where_unambiguous(recipe):
    cfg = load_config(recipe, ["offline.steps=1e3", "offline.lr=1", "env.name=1.10"])
    assert cfg.offline.steps == 1000 and isinstance(cfg.offline.steps, int)
    assert cfg.offline.lr == 1.0 and isinstance(cfg.offline.lr, float)
    assert cfg.env.name == "1.10"  # a string key keeps what was typed


def test_struct_mode_catches_typos_in_recipe_code(recipe):
    cfg = load_config(recipe, [])
    with pytest.raises(ConfigAttributeError):
        _ = cfg.offline.stpes
    assert cfg.logger.get("keep", 2) == 2  # optional keys read with .get still work


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["offline.stpes=5"],
            r"^unknown config key 'offline\.stpes' \(command line\); did you mean 'offline\.steps'\? "
            r"valid keys under 'offline': hidden, lr, steps, use_ema$",
        ),
        (
            ["sed=1"],
            r"unknown config key 'sed' .*did you mean 'seed'\? valid keys at the top level: device, env, eval, "
            r"logger, offline, resume, seed$",
        ),
        (["nope.deep=1"], r"unknown config key 'nope' \(command line\); valid keys at the top level"),
        (
            ["offline.steps=abc"],
            r"^config key 'offline\.steps' expects int, got 'abc' \(command line\); "
            r"e\.g\. offline\.steps=100$",
        ),
        (["offline.steps=1.5"], r"expects int, got '1\.5'"),
        (["offline.steps="], r"expects int, got ''"),
        (["offline.lr=fast"], r"'offline\.lr' expects float, got 'fast'.*e\.g\. offline\.lr=0\.0003"),
        (["offline.use_ema=maybe"], r"'offline\.use_ema' expects bool \(true/false\), got 'maybe'"),
        (["offline.hidden=64"], r"'offline\.hidden' expects list \(e\.g\. \[256, 256\]\), got '64'"),
        (
            ["offline=3"],
            r"config key 'offline' is a section with keys steps, lr, hidden, use_ema; .*offline\.steps=\.\.\.",
        ),
        (["seed.x=1"], r"config key 'seed' is a value, not a section"),
        (["offline.steps"], r"cannot read argument 'offline\.steps': arguments are key=value"),
        (["--offline.steps=3"], r"cannot read argument"),
        (["+seed=1"], r"config key 'seed' already exists; set it with seed=1 \(no '\+'\)"),
        (["offline.hidden=[1, 2"], r"cannot parse value '\[1, 2' as YAML"),
        (["seed=${missing}"], r"cannot resolve an interpolation"),
    ],
)
def test_bad_input_is_a_one_line_error_saying_what_is_right(recipe, argv, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(recipe, argv)
    assert "\n" not in str(info.value)


def test_plus_adds_a_key_absent_from_the_yaml(recipe):
    cfg = load_config(recipe, ["+offline.clip=0.5", "+extra.depth.n=2"])
    assert cfg.offline.clip == 0.5 and cfg.extra.depth.n == 2


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*configs/absent\.yaml"):
        load_config(tmp_path / "absent.py", [])


def test_recipe_name_lookup_and_config_path(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipes = tmp_path / "recipes" / "configs"
    recipes.mkdir(parents=True)
    (recipes / "named.yaml").write_text("seed: 4\n")
    assert load_config("named", []).seed == 4
    assert config_path(recipe) == recipe.parent / "configs" / "toy.yaml"


def test_per_task_file_overrides_only_what_it_holds(recipe, tmp_path, monkeypatch):
    configs = recipe.parent / "configs"
    (configs / "hopper.yaml").write_text("env: {name: Hopper-v5}\noffline: {steps: 5000}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # found in the configs dir, not only relative to the cwd
    cfg = load_config(recipe, ["config=hopper.yaml", "offline.steps=20"])
    assert cfg.env.name == "Hopper-v5"
    assert cfg.offline.steps == 20  # dotted overrides win over the per-task file
    assert cfg.offline.lr == 3e-4 and cfg.eval.every == 10  # untouched keys keep the defaults
    assert load_config(recipe, [f"config={configs / 'hopper.yaml'}"]).offline.steps == 5000


def test_per_task_file_is_strict_too(recipe):
    configs = recipe.parent / "configs"
    (configs / "bad.yaml").write_text("offline: {step: 5}\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'offline\.step' \(bad\.yaml\); did you mean "
        r"'offline\.steps'\?",
    ):
        load_config(recipe, ["config=bad.yaml"])
    (configs / "badtype.yaml").write_text("eval: {episodes: many}\n")
    with pytest.raises(ConfigError, match=r"'eval\.episodes' expects int, got 'many' \(badtype\.yaml\)"):
        load_config(recipe, ["config=badtype.yaml"])
    with pytest.raises(ConfigError, match=r"config file not found: 'nope\.yaml' \(looked for .*nope\.yaml and "):
        load_config(recipe, ["config=nope.yaml"])


def test_resume_starts_from_the_saved_config_of_the_run(recipe, tmp_path):
    run_dir = tmp_path / "runs" / "toy"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(TOY_YAML.replace("steps: 100", "steps: 321"))
    cfg = load_config(recipe, [f"resume={run_dir}"])
    assert cfg.offline.steps == 321 and cfg.resume == str(run_dir)
    cfg = load_config(recipe, [f"resume={run_dir / 'checkpoints'}", "eval.every=3"])
    assert cfg.offline.steps == 321 and cfg.eval.every == 3
    with pytest.raises(ConfigError, match=r"resume path not found: .*missing"):
        load_config(recipe, [f"resume={tmp_path / 'missing'}"])


def test_help_prints_the_resolved_config_and_exits_0(recipe, capsys):
    with pytest.raises(SystemExit) as info:
        load_config(recipe, ["offline.steps=9", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python toy.py" in out
    printed = OmegaConf.create(out[out.index("seed:") :])
    assert printed.offline.steps == 9 and printed.eval.horizon == 9


def test_run_recipe_turns_config_errors_into_exit_2(recipe, capsys):
    assert run_recipe(lambda cfg: cfg.seed + 1, recipe, ["seed=1"]) == 2
    with pytest.raises(SystemExit) as info:
        run_recipe(lambda cfg: None, recipe, ["offline.steps=abc"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'offline.steps' expects int") and err.count("\n") == 1

    def raises_inside(cfg):
        raise ConfigError(f"unknown logger.backend {cfg.logger.backend!r}; accepted: csv, tensorboard, wandb")

    with pytest.raises(SystemExit):
        run_recipe(raises_inside, recipe, ["logger.backend=tb"])
    assert "error: unknown logger.backend 'tb'; accepted: csv, tensorboard, wandb" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # programming errors keep their traceback
        run_recipe(lambda cfg: 1 / 0, recipe, [])


def test_recipe_script_from_another_directory(recipe, tmp_path):
    recipe.write_text(
        "from diffrl.train import run_recipe\n\n"
        "def main(cfg):\n    print('steps', cfg.offline.steps)\n\n"
        "if __name__ == '__main__':\n    run_recipe(main)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # One process (a Python start costs seconds here): the config is found from elsewhere, and the bad key is reported.
    bad = subprocess.run(
        [sys.executable, str(recipe), "offline.stepz=12"], cwd=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown config key 'offline.stepz'")
    assert "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0
