"""Recipe configuration: the YAML next to a recipe, per-task files and dotted command-line overrides, all strict.

``python recipes/iql.py offline.steps=1000 config=hopper.yaml`` resolves in this order:

1. ``recipes/configs/iql.yaml`` (found next to the script, so recipes run from any working directory). This file is
   the *schema*: every key a run may set exists in it, with a default whose type is the key's type.
2. With ``resume=RUN_DIR_OR_CHECKPOINT``: the ``config.yaml`` saved in that run replaces the defaults, so a resumed run
   continues with the settings it started with. Arguments given alongside ``resume=`` may change only what
   :data:`RESUME_MAY_CHANGE` lists (budgets ``offline.steps``/``online.steps``, ``eval.*``, ``logger.*`` except
   ``logger.dir``, ``device``, ``threads``, ``compile``); any other difference is refused before anything is written
   (start a new run for it). The saved ``config.yaml`` is never rewritten: each successful resume appends what it
   changed to ``resumes.yaml`` in the run directory. A run started by another recipe (its ``run.yaml``) is refused.
3. ``config=NAME`` files, in order. A per-task file holds only what differs from the defaults. For recipe ``R``,
   ``config=hopper_medium`` is looked up as ``recipes/configs/R/hopper_medium.yaml``, then
   ``recipes/configs/R_hopper_medium.yaml``, then as given (``config=path/to/file.yaml``: the working directory, then
   ``recipes/configs/``); the error for a missing file lists every path tried.
4. Dotted overrides ``a.b=value``; values are parsed as YAML (``3``, ``1e-3``, ``true``, ``[256, 256]``, ``null``).
5. Interpolations (``${seed}``, ``${now:%Y%m%d-%H%M%S}``) are resolved.

Strictness, because a typo that silently changes nothing costs a whole run: an unknown key is an error naming it and
the valid keys at its level; a value of the wrong type is an error naming the expected type (an int key accepts
``1e6``, a float key accepts ints, a string key accepts anything, a key whose default is ``null`` accepts anything).

Composition: a YAML file may extend another with a top-level ``_base_: other.yaml`` (a path relative to the file's own
directory; a base may have a base of its own; a cycle is an error). The base is read first and the file is laid over
it: its values replace the base's (same type, or null), and it may add sections and keys of its own. So a variant
recipe's YAML holds only what it adds or changes, e.g. ``edis_calql.yaml`` = ``_base_: calql.yaml`` + an ``edis:``
section + a few other defaults; ``--help`` prints the merged result. Per-task files may use ``_base_`` too.

Ranges: numbers a run cannot use (negative step budgets, ``data.batch_size=0``, ``threads=-1``...) are refused by
:data:`VALUE_RULES`, a table by dotted key applied to the keys the recipe has, before the run creates anything.

Adding a key: write it, with its default, in the recipe's YAML (``null`` if it has no natural default); every run and
per-task file may then set it. A one-off key absent from the YAML can be passed as ``+section.key=value``.

Errors on user input are :class:`ConfigError` with a one-line message; :func:`run_recipe` prints them without a
traceback and exits with status 2.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import os
import re
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffrl.errors import ConfigError  # defined beside the registry: data and envs raise it without importing train

__all__ = [
    "ConfigError",
    "ConfigOrigin",
    "RESUME_MAY_CHANGE",
    "RUN_RECORD",
    "VALUE_RULES",
    "check_values",
    "check_resume_changes",
    "recipe_of_run",
    "config_origin",
    "config_path",
    "load_config",
    "resume_changes",
    "resume_may_change",
    "run_recipe",
    "to_yaml",
]

# What a resumed run may set differently from the run it continues (the ``resume=`` contract). Dotted-key patterns
# (``*`` matches within and across sections); a pattern starting with ``!`` takes keys back out. Everything else
# (model, data, loss, optimiser, seed, env, EDIS...) defines the run: changing it would make the checkpoint restore
# into a different experiment, so it is refused and the user is told to start a new run instead.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "resume",
    "offline.steps",  # budgets: continue for longer (or stop earlier)
    "online.steps",
    "eval.*",  # evaluation frequency, episodes, exploration
    "logger.*",  # logging and checkpoint frequency, backend...
    "!logger.dir",  # ... but not where the run lives: a resumed run continues in its own directory
    "device",
    "threads",
    "compile",
)

# Range checks by full dotted key, applied by load_config to every key of this table the recipe's config has (so a
# recipe without an online phase is not asked about online.*). null passes: it means "the default" where allowed.
VALUE_RULES: dict[str, tuple[str, float]] = {
    "offline.steps": (">=", 0),
    "online.steps": (">=", 0),
    "online.random_steps": (">=", 0),
    "online.utd_ratio": (">", 0),
    "online.batch_size": (">=", 1),
    "online.frames_per_batch": (">=", 1),
    "data.batch_size": (">=", 1),
    "eval.every": (">=", 0),
    "eval.episodes": (">=", 1),
    "threads": (">=", 0),
    "logger.keep": (">=", 1),
    "logger.log_every": (">=", 1),
    "logger.checkpoint_every": (">=", 1),
}

# Command-line names with a meaning of their own; a recipe YAML must not define them.
_RESERVED = ("config",)
_HELP_FLAGS = ("-h", "--help")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")  # "1e-3": a float for us, a string for YAML 1.1
_REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_RECORD = "run.yaml"  # in a run directory: the recipe that started it (written by start_run)


def _now(fmt: str = "%Y%m%d-%H%M%S") -> str:
    return datetime.now().strftime(fmt)


if not OmegaConf.has_resolver("now"):
    # ``logger.dir: runs/iql/${now:%Y%m%d-%H%M%S}`` gives each run its own directory (Hydra users know this resolver).
    # omegaconf 2.4 renamed register_new_resolver (now deprecated) to register_resolver.
    _register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    _register("now", _now, use_cache=True)


@dataclass
class ConfigOrigin:
    """Where a config returned by :func:`load_config` came from; read it with :func:`config_origin`.

    Attributes:
        recipe: the recipe name (the stem of its YAML: ``"calql"``), recorded in the run directory and checkpoints.
        resumed: the saved ``config.yaml`` of the run being resumed, or ``None`` for a fresh run.
        changes: on resume, ``{dotted key: (saved value, new value)}`` for every key the command line (or a
            ``config=`` file) changed; all of them are in :data:`RESUME_MAY_CHANGE`.
    """

    recipe: str | None = None
    resumed: Path | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


_ORIGINS: dict[int, tuple[weakref.ref, ConfigOrigin]] = {}


def _remember_origin(conf: DictConfig, origin: ConfigOrigin) -> None:
    key = id(conf)
    _ORIGINS[key] = (weakref.ref(conf, lambda _ref: _ORIGINS.pop(key, None)), origin)


def config_origin(cfg: Any) -> ConfigOrigin | None:
    """The :class:`ConfigOrigin` of a config made by :func:`load_config`, or ``None`` for a config built otherwise.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "configs").mkdir()
        >>> _ = (d / "configs" / "toy.yaml").write_text("seed: 0\\n")
        >>> config_origin(load_config(d / "toy.py", [])).recipe
        'toy'
    """
    entry = _ORIGINS.get(id(cfg))
    return entry[1] if entry is not None and entry[0]() is cfg else None


def resume_may_change(key: str) -> bool:
    """Whether a resumed run may give the dotted ``key`` another value (see :data:`RESUME_MAY_CHANGE`).

    Example:
        >>> [resume_may_change(k) for k in ("online.steps", "eval.episodes", "logger.dir", "critic.hidden_sizes")]
        [True, True, False, False]
    """
    allowed = False
    for pattern in RESUME_MAY_CHANGE:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(key, pattern.lstrip("!")):
            allowed = not negated
    return allowed


def resume_changes(before: Mapping, after: Mapping) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf whose value differs (a key missing on one side is ``"<absent>"``).

    Example:
        >>> resume_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0})
        {'a.c': (2, 3), 'd': ('<absent>', 0)}
    """
    old, new = _flatten(before), _flatten(after)
    keys = list(old) + [k for k in new if k not in old]
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


_ABSENT = "<absent>"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, DictConfig):
        tree = OmegaConf.to_container(tree, resolve=True)
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def check_resume_changes(changes: Mapping[str, Any], run: str | os.PathLike) -> None:
    """Raise a one-line :class:`ConfigError` naming the changed keys a resumed run may not change."""
    refused = [key for key in changes if not resume_may_change(key)]
    if refused:
        shown = ", ".join(f"{k} ({_short_value(changes[k][0])} -> {_short_value(changes[k][1])})" for k in refused)
        allowed = ", ".join(p for p in RESUME_MAY_CHANGE if not p.startswith("!"))
        allowed += "; not " + ", ".join(p[1:] for p in RESUME_MAY_CHANGE if p.startswith("!"))
        raise ConfigError(
            f"resume={run} may not change {shown}: they define the run; drop them to continue it, or start a new run "
            f"without resume= (a resume may change only: {allowed})"
        )


def _short_value(value: Any) -> str:
    text = _format_default(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_values(cfg: Mapping | DictConfig, defaults: Mapping | None = None) -> None:
    """Raise a one-line :class:`ConfigError` for the first value out of the range :data:`VALUE_RULES` gives its key.

    Example:
        >>> check_values({"offline": {"steps": 10}, "data": {"batch_size": 256}})
        >>> try:
        ...     check_values({"data": {"batch_size": 0}}, defaults={"data": {"batch_size": 256}})
        ... except ConfigError as err:
        ...     print(err)
        config key 'data.batch_size' must be >= 1, got 0; e.g. data.batch_size=256
    """
    flat, flat_defaults = _flatten(cfg), _flatten(defaults or {})
    for key, (op, bound) in VALUE_RULES.items():
        value = flat.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, null, or a wrong type (reported by the type check)
        if value >= bound if op == ">=" else value > bound:
            continue
        default = flat_defaults.get(key)
        example = default if isinstance(default, (int, float)) and not isinstance(default, bool) else bound
        raise ConfigError(
            f"config key '{key}' must be {op} {_format_default(bound)}, got {value!r}; e.g. {key}={example}"
        )


def config_path(recipe: str | os.PathLike) -> Path:
    """Where the YAML of ``recipe`` lives.

    ``recipe`` may be the recipe script (``__file__``: ``<its dir>/configs/<stem>.yaml``), a YAML file, or a bare name
    (``"iql"``: ``recipes/configs/iql.yaml`` under the working directory, else under the diffrl source tree).

    Example:
        >>> config_path("/somewhere/recipes/iql.py").as_posix()
        '/somewhere/recipes/configs/iql.yaml'
    """
    recipe = Path(recipe)
    if recipe.suffix in (".yaml", ".yml"):
        return recipe
    if recipe.suffix == ".py":
        return recipe.resolve().parent / "configs" / f"{recipe.stem}.yaml"
    candidates = [root / "recipes" / "configs" / f"{recipe}.yaml" for root in (Path.cwd(), _REPO_ROOT)]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def load_config(recipe: str | os.PathLike, argv: Sequence[str] | None = None) -> DictConfig:
    """Load a recipe's configuration and apply command-line arguments (see the module docstring for the order).

    Args:
        recipe: the recipe script (pass ``__file__``), a YAML path, or a recipe name; see :func:`config_path`.
        argv: command-line arguments; defaults to ``sys.argv[1:]``. ``-h``/``--help`` prints the resolved config as
            YAML and exits with status 0.

    Returns:
        A resolved ``DictConfig`` in struct mode (reading a key that does not exist raises).

    Raises:
        ConfigError: unknown key, wrong type, unparsable value, missing or malformed file.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "configs").mkdir()
        >>> _ = (d / "configs" / "toy.yaml").write_text("seed: 0\\noffline: {steps: 100, lr: 3.0e-4}\\n")
        >>> cfg = load_config(d / "toy.py", ["offline.steps=5", "offline.lr=1e-3"])
        >>> cfg.offline.steps, cfg.offline.lr
        (5, 0.001)
        >>> try:
        ...     load_config(d / "toy.py", ["offline.stpes=5"])
        ... except ConfigError as err:
        ...     print(str(err).replace("; ", ";\\n"))
        unknown config key 'offline.stpes' (command line);
        did you mean 'offline.steps'? valid keys under 'offline': lr, steps
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = config_path(recipe)
    schema = _read_composed(path, what=f"config of recipe '{path.stem}'")
    for key in _RESERVED:
        if key in schema:
            raise ConfigError(
                f"{path} defines the reserved key '{key}' (on the command line it names per-task files); rename it"
            )

    show_help, task_files, overrides = _parse_argv(argv)
    cfg = copy.deepcopy(schema)

    resume = next((_parse_value(raw) for key, raw, _ in reversed(overrides) if key == "resume"), None)
    saved, baseline = None, None
    if resume not in (None, ""):
        run_dir = _run_dir_of_resume(str(resume))
        _check_recipe_of_run(run_dir, path.stem, resume)
        saved = run_dir / "config.yaml"
        if saved.is_file():
            # Trusted: it was validated when that run started, and may hold keys that run added with "+".
            cfg = _merge_trusted(cfg, _read_yaml(saved, what="saved config of the resumed run"))
            baseline = copy.deepcopy(cfg)  # what the run used: every change from it is checked below
        else:
            saved = None

    for file in task_files:
        task_path = _find_task_file(file, path.parent, path.stem)
        task = _read_composed(task_path, what="per-task config")
        _merge_strict(cfg, schema, task, prefix="", source=task_path.name)
    for key, raw, add in overrides:
        _set_override(cfg, schema, key, raw, add=add)

    conf = _resolved(cfg)
    check_values(conf, schema)  # before the run starts: bad numbers leave nothing on disk
    changes: dict[str, tuple[Any, Any]] = {}
    if baseline is not None:
        changes = resume_changes(_resolved(baseline), conf)
        changes.pop("resume", None)  # recorded as "from" in the resume record
        check_resume_changes(changes, resume)
    OmegaConf.set_struct(conf, True)
    if show_help:
        print(f"usage: python {Path(recipe).name} [key=value ...] [+new.key=value] [config=task.yaml] [resume=RUN_DIR]")
        print(f"\nresolved config (defaults from {path}):\n")
        print(to_yaml(conf), end="")
        raise SystemExit(0)
    _remember_origin(conf, ConfigOrigin(recipe=path.stem, resumed=saved, changes=changes))
    return conf


def _resolved(cfg: dict) -> DictConfig:
    conf = OmegaConf.create(copy.deepcopy(cfg))
    try:
        OmegaConf.resolve(conf)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve an interpolation in the config: {_one_line(err)}") from None
    return conf


def to_yaml(cfg: DictConfig | Mapping) -> str:
    """The config as YAML text with interpolations resolved (what ``--help`` prints and runs save).

    Example:
        >>> print(to_yaml({"seed": 1, "eval": {"every": 10}}), end="")
        seed: 1
        eval:
          every: 10
    """
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.to_yaml(conf, resolve=True)


def run_recipe(
    main: Callable[[DictConfig], Any], recipe: str | os.PathLike | None = None, argv: Sequence[str] | None = None
) -> Any:
    """Run ``main(cfg)`` as a command: load the config, and turn bad-input errors into one line and exit status 2.

    A recipe ends with ``if __name__ == "__main__": run_recipe(main)``. ``ConfigError`` and registry lookup errors
    (both are user input: keys and component names come from the config) are printed as ``error: ...`` on stderr
    without a traceback, exit status 2, and a run directory this call created is removed if it holds no checkpoint
    yet (bad input leaves nothing behind). A :class:`~diffrl.train.faults.RunInterrupted` prints where the
    checkpoint is and the resume command (exit 130 for SIGINT, 143 for SIGTERM); a
    :class:`~diffrl.train.faults.NonFiniteLossError` prints one ``error:`` line (exit 1). Any other exception
    propagates unchanged.

    Args:
        main: the recipe body, called with the resolved config; its return value is returned.
        recipe: the recipe script; defaults to the file that defines ``main``.
        argv: defaults to ``sys.argv[1:]``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "configs").mkdir()
        >>> _ = (d / "configs" / "toy.yaml").write_text("steps: 3\\n")
        >>> run_recipe(lambda cfg: cfg.steps * 2, d / "toy.py", ["steps=4"])
        8
        >>> try:
        ...     run_recipe(lambda cfg: None, d / "toy.py", ["steps=abc"])
        ... except SystemExit as exit:
        ...     exit.code
        2
    """
    from diffrl.registry import RegistryError

    if recipe is None:
        recipe = sys.modules[main.__module__].__file__
    claimed_before = len(_run_dirs("claimed_run_dirs"))
    try:
        cfg = load_config(recipe, argv)
        return main(cfg)
    except (ConfigError, RegistryError) as err:
        _remove_unused_run_dirs(_run_dirs("claimed_run_dirs")[claimed_before:])
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        # The loop's deliberate stops (diffrl.train.faults; imported by whoever raised them, so looked up, not
        # imported here: --help stays fast).
        faults = sys.modules.get("diffrl.train.faults")
        if faults is not None and isinstance(err, faults.RunInterrupted):
            print(err.message or _interrupted_line(err, recipe), file=sys.stderr, flush=True)
            raise SystemExit(err.exit_status) from None
        if faults is not None and isinstance(err, faults.NonFiniteLossError):
            print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        raise


def _run_dirs(which: str) -> list[Path]:
    # diffrl.train.run is imported by a recipe that starts a run; if it is not, no run directory was made.
    run_module = sys.modules.get("diffrl.train.run")
    return getattr(run_module, which)() if run_module is not None else []


def _remove_unused_run_dirs(claimed: Sequence[Path]) -> None:
    # Bad input found after the run directory was claimed (a registry typo, a dataset id...): the directory holds
    # only what this process wrote before the error, so it goes, unless a checkpoint made it worth keeping.
    import shutil

    for run_dir in claimed:
        if run_dir.is_dir() and not any(run_dir.rglob("step_*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)


def _interrupted_line(err: Any, recipe: str | os.PathLike) -> str:
    started = _run_dirs("started_run_dirs")
    run_dir = started[-1] if started else None
    checkpoints = sorted(run_dir.glob("checkpoints/step_*.pt")) if run_dir is not None else []
    if not checkpoints:
        return f"interrupted by {err.signal_name}; no checkpoint was saved, so a new run starts from scratch"
    latest = checkpoints[-1]
    step = int(latest.stem.split("_")[1])
    script = Path(recipe)
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return (
        f"interrupted by {err.signal_name} at step {step}; checkpoint saved: {latest}; "
        f"resume with: python {script} resume={run_dir}"
    )


# ----------------------------------------------------------------------------------------------------------- parsing


def _parse_argv(argv: list[str]) -> tuple[bool, list[str], list[tuple[str, str, bool]]]:
    show_help, task_files, overrides = False, [], []
    for arg in argv:
        if arg in _HELP_FLAGS:
            show_help = True
            continue
        key, sep, raw = arg.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(
                f"cannot read argument {arg!r}: arguments are key=value (e.g. offline.steps=1000), "
                "+new.key=value, config=task.yaml or --help"
            )
        add = key.startswith("+")
        key = key.lstrip("+")
        if key == "config":
            task_files.append(raw)
        else:
            overrides.append((key, raw, add))
    return show_help, task_files, overrides


def _parse_value(raw: str) -> Any:
    if _FLOAT_RE.match(raw.strip()):
        return float(raw)
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"cannot parse value {raw!r} as YAML ({_one_line(err)}); quote strings, write lists as [1, 2]"
        ) from None


def _read_yaml(path: Path, *, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (looked for the {what} there); check the path or create it")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at its top level, got a {type(data).__name__}")
    return data


def _find_task_file(name: str, configs_dir: Path, recipe: str) -> Path:
    candidates: list[Path] = []
    if name and "/" not in name and os.sep not in name:  # a short name: the recipe's own per-task files first
        stem = re.sub(r"\.ya?ml$", "", name)
        candidates += [configs_dir / recipe / f"{stem}.yaml", configs_dir / f"{recipe}_{stem}.yaml"]
        if stem.startswith(f"{recipe}_"):  # config=calql_hopper_medium.yaml after the move to configs/calql/
            candidates.append(configs_dir / recipe / f"{stem[len(recipe) + 1 :]}.yaml")
    candidates += [Path(name), configs_dir / name]
    unique = list(dict.fromkeys(candidates))
    for candidate in unique:
        if candidate.is_file():
            return candidate
    shown = [str(c.resolve()) for c in unique]
    looked = ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]
    raise ConfigError(
        f"config file not found: {name!r} (looked for {looked}); pass an existing per-task YAML file or its short name"
    )


_BASE_KEY = "_base_"


def _read_composed(path: Path, *, what: str, chain: tuple[Path, ...] = ()) -> dict:
    """The YAML at ``path`` laid over the base it names with ``_base_`` (recursively)."""
    data = _read_yaml(path, what=what)
    base_name = data.pop(_BASE_KEY, None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(
            f"{path}: {_BASE_KEY} must name a YAML file relative to {path.parent}, got {base_name!r}; "
            f"e.g. {_BASE_KEY}: calql.yaml"
        )
    chain = (*chain, path.resolve())
    base_path = path.parent / base_name
    if base_path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, base_path.resolve()))
        raise ConfigError(f"config files extend each other in a cycle ({cycle}); remove one {_BASE_KEY}")
    if not base_path.is_file():
        raise ConfigError(
            f"{path} extends {base_name!r} ({_BASE_KEY}), which does not exist at {base_path.resolve()}; "
            f"give a path relative to {path.parent}"
        )
    base = _read_composed(base_path, what=f"base of {path.name}", chain=chain)
    _merge_overlay(base, data, prefix="", source=path.name)
    return base


def _merge_overlay(base: dict, overlay: Mapping, *, prefix: str, source: str) -> None:
    # An overlay is part of the schema: it may add keys; a key it shares with the base keeps the base's type
    # (null is accepted, turning the key untyped), so "hidden_sizes: 128" for a list is still caught.
    for key, value in overlay.items():
        full = f"{prefix}{key}"
        if key not in base:
            base[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                _not_a_section(full, base[key], value, source)
            _merge_overlay(base[key], value, prefix=f"{full}.", source=source)
        elif value is None:
            base[key] = None
        else:
            base[key] = copy.deepcopy(_check_type(full, value, base[key], source=source))


def _run_dir_of_resume(resume: str) -> Path:
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"resume path not found: {path.resolve()}; pass a run directory or a checkpoint file")
    run_dir = path if path.is_dir() else path.parent
    return run_dir.parent if run_dir.name == "checkpoints" else run_dir


def recipe_of_run(run_dir: str | os.PathLike) -> str | None:
    """The recipe that started the run in ``run_dir`` (from its ``run.yaml``), or ``None`` if it did not record one.

    Example:
        >>> import tempfile
        >>> recipe_of_run(tempfile.mkdtemp()) is None
        True
    """
    record = Path(run_dir) / RUN_RECORD
    try:
        data = yaml.safe_load(record.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    recipe = data.get("recipe") if isinstance(data, dict) else None
    return str(recipe) if recipe else None


def _check_recipe_of_run(run_dir: Path, recipe: str, resume: Any) -> None:
    other = recipe_of_run(run_dir)
    if other is not None and other != recipe:
        raise ConfigError(
            f"run {run_dir} was started by recipe '{other}', not '{recipe}'; resume it with: "
            f"python recipes/{other}.py resume={resume}"
        )


# ----------------------------------------------------------------------------------------------------------- merging


def _merge_trusted(base: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge_trusted(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_strict(cfg: dict, schema: dict | None, update: Mapping, *, prefix: str, source: str) -> None:
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            _unknown_key(full, cfg, source)
        if isinstance(cfg[key], dict):
            if not isinstance(value, Mapping):
                _not_a_section(full, cfg[key], value, source)
            sub_schema = schema.get(key) if isinstance(schema, dict) else None
            _merge_strict(cfg[key], sub_schema, value, prefix=f"{full}.", source=source)
        else:
            # The schema's default types the key; a key added with "+" is typed by its current value.
            default = schema.get(key, cfg[key]) if isinstance(schema, dict) else cfg[key]
            cfg[key] = _check_type(full, value, default, source=source)


def _set_override(cfg: dict, schema: dict, key: str, raw: str, *, add: bool) -> None:
    parts = key.split(".")
    node, sch = cfg, schema
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            if not add:
                _unknown_key(".".join(parts[: i + 1]), node, "command line")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set '{key}'")
        node, sch = node[part], sch.get(part) if isinstance(sch, dict) else None
    leaf, value = parts[-1], _parse_value(raw)
    if add:
        if leaf in node:
            raise ConfigError(f"config key '{key}' already exists; set it with {key}={raw} (no '+')")
        node[leaf] = value
        return
    if leaf not in node:
        _unknown_key(key, node, "command line")
    if isinstance(node[leaf], dict):
        if not isinstance(value, Mapping):
            _not_a_section(key, node[leaf], raw, "command line")
        default = sch.get(leaf) if isinstance(sch, dict) else None
        _merge_strict(node[leaf], default, value, prefix=f"{key}.", source="command line")
        return
    default = sch.get(leaf, node[leaf]) if isinstance(sch, dict) else node[leaf]
    node[leaf] = _check_type(key, value, default, source="command line", raw=raw)


def _unknown_key(full: str, level: Mapping, source: str) -> None:
    parent, _, name = full.rpartition(".")
    valid = sorted(map(str, level))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ";"
    where = f"under '{parent}'" if parent else "at the top level"
    keys = ", ".join(valid) or "(none)"
    raise ConfigError(f"unknown config key '{full}' ({source}){hint} valid keys {where}: {keys}")


def _not_a_section(full: str, section: Mapping, got: Any, source: str) -> None:
    first = next(iter(section), "key")
    raise ConfigError(
        f"config key '{full}' is a section with keys {', '.join(map(str, section))}; got {got!r} "
        f"({source}); set one of its keys, e.g. {full}.{first}=..."
    )


def _check_type(key: str, value: Any, default: Any, *, source: str, raw: str | None = None) -> Any:
    """Return ``value`` converted to the type of ``default``, or raise a ConfigError naming the expected type."""
    shown = raw if raw is not None else value
    if default is None or _is_interpolation(default) or _is_interpolation(value):
        return value  # null defaults are untyped; interpolations are checked by what they point to
    if value is None:
        expected = _type_name(default)
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
        expected = "bool (true/false)"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # "steps=1e6"
        expected = "int"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "float"
    elif isinstance(default, str):
        if isinstance(value, (str, int, float, bool)):
            return raw if raw is not None else str(value)  # keep "1.10" as typed, not "1.1"
        expected = "str"
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
        expected = "list (e.g. [256, 256])"
    else:
        return value
    raise ConfigError(
        f"config key '{key}' expects {expected}, got {shown!r} ({source}); e.g. {key}={_format_default(default)}"
    )


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _type_name(value: Any) -> str:
    return {bool: "bool (true/false)", int: "int", float: "float", str: "str", list: "list"}.get(
        type(value), type(value).__name__
    )


def _format_default(default: Any) -> str:
    return yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
