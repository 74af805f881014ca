"""The README stays true: its component table matches the registry and its recipe example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffrl.__main__ import components_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, begin: str, end: str) -> str:
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    assert match, f"README.md has no {begin} ... {end} section"
    return match.group(1).strip()


def test_component_table_matches_registry():
    table = _section(README.read_text(), "<!-- components:begin -->", "<!-- components:end -->")
    expected = components_markdown().strip()
    assert table == expected, (
        "README's component table is out of date: regenerate it with `python -m diffrl components --markdown` "
        "and paste it between the components:begin/end markers."
    )


def test_contract_components_are_registered():
    from diffrl import registry

    required = {
        "actor": {"diffusion", "tanh_normal"},
        "critic": {"twin_q", "value"},
        "loss": {"diffusion_ql", "qsm", "cal_ql", "iql", "cql", "td3_bc", "sac", "diffusion_bc"},
        "transform": {"edis"},
        "dataset": {"diffrl/pendulum/random-v0", "diffrl/pendulum/medium-v0", "diffrl/pendulum/expert-v0"},
    }
    for kind, names in required.items():
        missing = names - set(registry.names(kind))
        assert not missing, f"{kind} components missing from the registry: {sorted(missing)}"


def test_recipe_commands_name_files_that_exist():
    """Every ``python recipes/X.py ... config=Y`` (``recipes/configs/X/Y.yaml``) and ``python benchmarks/Z.py`` in the
    README exists."""
    root = README.parent
    text = README.read_text()
    scripts = set(re.findall(r"python ((?:recipes|benchmarks)/\w+\.py)", text))
    assert "recipes/edis_calql.py" in scripts
    missing = sorted(s for s in scripts if not (root / s).is_file())
    assert not missing, f"README runs scripts that do not exist: {missing}"
    configs = set(re.findall(r"python recipes/(\w+)\.py [^\n`]*?config=(\w+)", text))
    assert configs, "the README shows no recipe run with a per-task config=... file"
    missing = sorted(f"{r}/{c}.yaml" for r, c in configs if not (root / "recipes/configs" / r / f"{c}.yaml").is_file())
    assert not missing, f"README names per-task config files that do not exist in recipes/configs: {missing}"


def test_own_recipe_example_runs(tmp_path, monkeypatch):
    """The README's "Your own recipe" block, run as written with a shorter collection budget."""
    text = README.read_text()
    block = re.search(r"## Your own recipe\n.*?```python\n(.*?)```", text, flags=re.S)
    assert block, "README.md has no python block under 'Your own recipe'"
    code = block.group(1)
    assert "total_frames=20_000" in code
    code = code.replace("total_frames=20_000", "total_frames=600")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["rb"].write_count == 600
    for param in namespace["loss"].actor_network_params.values(True, True):
        assert param.grad is None or bool(param.grad.isfinite().all())


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
