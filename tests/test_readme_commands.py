"""Every command README.md shows still runs: README cannot name a flag, key, config file or script that does not exist.

Commands are the lines of README's ```bash blocks and its inline code spans that start with ``python `` or a console
script (``diffrl-data``, ``diffrl-plot``); ``pip``, ``python -m pytest`` and ``minari`` lines are skipped (installs,
the test suite, and Minari's own CLI, which needs the network). Each one is run in this process, as ``python`` would
run it (``runpy`` with ``sys.argv`` set, in a temporary working directory and datasets root), in the cheapest form
that still checks it:

* recipes get ``--help`` appended: the recipe resolves its whole config (every ``key=value`` and ``config=`` file of
  the line is validated) and prints it, then exits 0;
* ``diffrl.data make`` runs for real with a tiny budget (``--num-steps 200`` / ``--num-episodes 1``), ``diffrl.data
  list`` and ``python -m diffrl ...`` run as written;
* anything else (argparse scripts, e.g. ``diffrl.train.plot``, benchmarks) gets ``--help`` appended, which must exit 0
  and list every ``--flag`` the README line passes.

Placeholders: ``<name>`` in a script path stands for every such script; ``<...>`` in a recipe value becomes a real
(empty) directory when the key is ``resume``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIPPED = ("pip ", "python -m pytest", "minari ")
TINY_BUDGETS = {"--num-steps": "200", "--num-episodes": "1"}
RUN_AS_WRITTEN = {"diffrl"}  # modules whose README commands are cheap enough to run for real
PLACEHOLDER = re.compile(r"<[^<>]+>")


def readme_commands(text: str) -> list[str]:
    """The command lines README shows (bash blocks: comments stripped, ``\\`` continuations joined, ``&&`` split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if span.startswith(("python ", "diffrl-")):
            commands.append(" ".join(span.split()))
    return list(dict.fromkeys(c for c in commands if not c.startswith(SKIPPED)))


def console_scripts() -> dict[str, str]:
    """diffrl's installed console scripts (``[project.scripts]``): name -> ``module:function``."""
    return {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "diffrl"
    }


@dataclass
class Invocation:
    """One way of running a README command here: a script, a module (``-m``) or a console-script function."""

    kind: str  # "script", "module" or "function"
    target: str  # script path, module name or "module:function"
    argv: list[str]
    help: bool  # True: the command got --help appended


def plan(command: str, cwd: Path) -> list[Invocation]:
    """How to check ``command`` (several invocations when a placeholder stands for several scripts)."""
    tokens = shlex.split(command)
    scripts = console_scripts()
    if tokens[0] in scripts:
        kind, target, args = "function", scripts[tokens[0]], tokens[1:]
        module = target.partition(":")[0]
    elif tokens[0] == "python" and len(tokens) > 2 and tokens[1] == "-m":
        kind, target, args, module = "module", tokens[2], tokens[3:], tokens[2]
    elif tokens[0] == "python" and len(tokens) > 1 and not tokens[1].startswith("-"):
        kind, target, args, module = "script", tokens[1], tokens[2:], None
    else:
        raise AssertionError(
            f"README command {command!r}: not a python script, module or console script this test knows"
        )

    if kind == "script":
        pattern = PLACEHOLDER.sub("*", target)
        paths = sorted(ROOT.glob(pattern)) if pattern != target else [ROOT / target]
        if pattern != target:  # "<name>" stands for every runnable script there
            paths = [p for p in paths if '__name__ == "__main__"' in p.read_text()]
        assert paths and all(p.is_file() for p in paths), f"README command {command!r}: no script {target}"
        invocations = []
        for path in paths:
            if path.parent.name == "recipes":
                invocations.append(Invocation("script", str(path), [*_recipe_args(args, cwd), "--help"], True))
            else:
                invocations.append(Invocation("script", str(path), [*args, "--help"], True))
        return invocations
    if module in ("diffrl.data", "diffrl.data.__main__") and args[:1] == ["make"] and "--env" in args:
        tiny = [TINY_BUDGETS.get(prev, arg) for prev, arg in zip(["", *args], args)]
        return [Invocation(kind, target, tiny, False)]
    if (module in ("diffrl.data", "diffrl.data.__main__") and args[:1] == ["list"]) or (
        module in RUN_AS_WRITTEN and not any(PLACEHOLDER.search(a) for a in args)
    ):
        return [Invocation(kind, target, args, False)]
    return [Invocation(kind, target, [*args, "--help"], True)]


def _recipe_args(args: list[str], cwd: Path) -> list[str]:
    """Recipe arguments with ``<...>`` placeholders filled in; ``resume=<path>`` gets a real directory."""
    filled = []
    for arg in args:
        key, _, value = arg.partition("=")
        if PLACEHOLDER.search(value):
            value = PLACEHOLDER.sub("readme-example", value)
            if key == "resume":
                (cwd / value).mkdir(parents=True, exist_ok=True)
        filled.append(f"{key}={value}" if _ else arg)
    return filled


def _run_module_as_main(name: str) -> None:
    """``python -m name``: execute the module's (a package's ``__main__``'s) source as ``__main__``.

    Not ``runpy.run_module``: when pytest's doctest collection imported the module first, its spec's loader is
    pytest's assertion rewriter, which runpy cannot take code from; the source file is all ``python -m`` needs.
    """
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"no module {name}"
    if spec.submodule_search_locations is not None:  # a package: python -m runs its __main__
        spec = importlib.util.find_spec(f"{name}.__main__")
        assert spec is not None and spec.origin, f"package {name} has no __main__ module"
    source = Path(spec.origin).read_text()
    namespace = {"__name__": "__main__", "__file__": spec.origin, "__package__": spec.parent, "__spec__": None}
    exec(compile(source, spec.origin, "exec"), namespace)


def run(invocation: Invocation, cwd: Path) -> tuple[int, str]:
    """Run one invocation in this process as ``python`` would; returns (exit status, stdout + stderr)."""
    out = io.StringIO()
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], os.getcwd()
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if invocation.kind == "script":
                sys.argv = [invocation.target, *invocation.argv]
                sys.path.insert(0, str(Path(invocation.target).parent))  # as `python path/to/script.py` does
                runpy.run_path(invocation.target, run_name="__main__")
            elif invocation.kind == "module":
                sys.argv = [invocation.target, *invocation.argv]
                _run_module_as_main(invocation.target)
            else:
                module, _, function = invocation.target.partition(":")
                sys.argv = [module, *invocation.argv]
                result = getattr(__import__(module, fromlist=[function]), function)()
                code = result if isinstance(result, int) else 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
    return code, out.getvalue()


def check(command: str, cwd: Path) -> list[str]:
    """Problems with one README command (empty when it runs as README says)."""
    problems = []
    flags = [arg.split("=")[0] for arg in shlex.split(command) if arg.startswith("--")]
    for invocation in plan(command, cwd):
        code, output = run(invocation, cwd)
        where = f"{command!r} (run as {invocation.target} {' '.join(invocation.argv)})"
        if code != 0:
            problems.append(f"{where} exited {code}: {output.strip()[-600:]}")
            continue
        if invocation.help:
            missing = [flag for flag in flags if flag != "--help" and flag not in output]
            if missing:
                problems.append(f"{where}: its --help does not list {missing}")
    return problems


@pytest.fixture
def workdir(tmp_path):
    """A temporary working directory with its own Minari datasets root."""
    from diffrl.data.paths import datasets_path_override

    with datasets_path_override(tmp_path / "minari"):
        yield tmp_path


def test_readme_commands_are_found():
    commands = readme_commands(README.read_text())
    assert any(c.startswith("python recipes/") for c in commands)
    assert any(c.startswith("python -m diffrl.data make") for c in commands)
    assert not any(c.startswith(SKIPPED) for c in commands)


def test_every_readme_command_runs(workdir):
    problems = [problem for command in readme_commands(README.read_text()) for problem in check(command, workdir)]
    assert not problems, "README.md shows commands that fail:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "command",
    [
        "python -m diffrl.data make Pendulum-v1 --policy random --dataset-id me/pendulum/random-v0 --steps 10000",
        "python recipes/iql.py offline.stepz=2000",  # unknown key
        "python recipes/diffusion_ql.py config=no_such_task.yaml",  # missing config file
        "python recipes/no_such_recipe.py",  # missing script
        "python -m diffrl.train.plot RUN_DIR --outfile curve.png",  # flag the script does not have
        "python -m diffrl describe loss no_such_loss",
    ],
)
def test_broken_commands_are_caught(command, workdir):
    """What this test guards against: each of these (the first is README's old make line) must be reported."""
    try:
        problems = check(command, workdir)
    except AssertionError as err:  # a script that does not exist
        problems = [str(err)]
    assert problems, f"{command!r} was not reported"


def test_embedded_multiline_and_inline_commands_are_extracted():
    text = (
        "```bash\npip install -e .\npython recipes/iql.py \\\n    seed=3   # a comment\n"
        "python -m pytest && diffrl-data list\n```\nThen `python -m diffrl components` and `seed=1`.\n"
    )
    assert readme_commands(text) == ["python recipes/iql.py seed=3", "diffrl-data list", "python -m diffrl components"]
