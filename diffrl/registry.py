"""The component registry: every actor, critic, loss, data transform and dataset of diffrl has a (kind, name).

Recipes and users build components from configuration through it::

    from diffrl import registry
    loss_cls = registry.get("loss", "diffusion_ql")
    critic = registry.build("critic", {"name": "twin_q", "num_nets": 2}, obs_dim=3, action_dim=1)

Registration forms:

* decorator: ``@registry.register("loss", "my_loss")`` on a class or factory;
* call: ``registry.register("loss", "iql", IQLLoss)``;
* lazy target: ``registry.register("loss", "iql", "torchrl.objectives:IQLLoss")`` - imported on first use, so a
  registry listing does not import heavy libraries.

Where components come from:

* diffrl's own components register when their module is imported, and the first lookup imports every module of the
  packages in ``BUILTIN_PACKAGES`` (``diffrl.modules``, ``diffrl.objectives``, ``diffrl.data``, subpackages included),
  never ``import diffrl``: a new built-in component is one module in one of them, listed nowhere else;
* third-party packages declare an entry point in the group ``diffrl.components``; the entry point names a module that
  registers its components when imported. Plugins are loaded on a lookup miss, or eagerly by ``load_plugins()``.

Nested configuration: ``build`` passes every key other than ``name`` to the constructor as is. A nested mapping that
is itself a component (for instance ``actor: {name: diffusion, ...}`` inside a loss config) is *not* built
recursively: the caller decides, with ``build`` again, because only the caller knows the extra arguments
(``obs_dim``, networks) the inner component needs. OmegaConf nodes are converted with interpolations resolved.

This module imports no ML library.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "RegistryError",
    "register",
    "unregister",
    "get",
    "build",
    "names",
    "kinds",
    "describe",
    "load_plugins",
    "items",
    "builtin_modules",
    "BUILTIN_PACKAGES",
]

ENTRY_POINT_GROUP = "diffrl.components"

# The packages holding diffrl's own components. Every module in them is imported on the first lookup, and importing a
# module registers what it defines (decorators and lazy targets), so no list of modules needs maintaining.
BUILTIN_PACKAGES: tuple[str, ...] = ("diffrl.modules", "diffrl.objectives", "diffrl.data")


class RegistryError(LookupError, ValueError):
    """A registry lookup or registration failed. Subclasses both ``LookupError`` and ``ValueError``."""


class _Lazy:
    """A "module:attr" target resolved on first use."""

    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self, kind: str, name: str) -> Any:
        module_name, _, attr_path = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as err:
            raise RegistryError(
                f"{kind} {name!r} is registered as the lazy target {self.target!r}, but importing "
                f"{module_name!r} failed: {err}. Install the package that provides it."
            ) from err
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as err:
                raise RegistryError(
                    f"{kind} {name!r} is registered as the lazy target {self.target!r}, but {module_name!r} "
                    f"has no attribute {attr_path!r}."
                ) from err
        return obj

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


_entries: dict[str, dict[str, Any]] = {}
_lock = threading.RLock()
_builtins_loaded = False
_builtins_loading = False
_plugins_loaded = False


def _check_key(kind: Any, name: Any) -> None:
    for label, value in (("kind", kind), ("name", name)):
        if not isinstance(value, str) or not value:
            raise RegistryError(f"registry {label} must be a non-empty string, got {value!r}.")


def _check_lazy_target(kind: str, name: str, target: str) -> None:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(
            f"cannot register {kind} {name!r}: lazy target {target!r} is not of the form 'package.module:attr'."
        )
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RegistryError(
            f"cannot register {kind} {name!r}: module {module_name!r} of lazy target {target!r} cannot be found. "
            "Check the spelling or install the package that provides it."
        )


def register(kind: str, name: str, obj: Any = None, *, replace: bool = False) -> Any:
    """Register ``obj`` under ``(kind, name)``; without ``obj`` return a decorator.

    Args:
        kind: component kind, e.g. ``"loss"``, ``"actor"``, ``"critic"``, ``"transform"``, ``"dataset"``.
        name: the name configs use (snake_case by convention).
        obj: a class, a factory callable, or a lazy ``"module:attr"`` string.
        replace: allow overwriting an existing registration. Without it, a taken name raises.

    Returns:
        ``obj`` (so the decorator leaves the class unchanged), or a decorator.

    Example:
        >>> from diffrl import registry
        >>> @registry.register("demo", "double")
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> registry.build("demo", {"name": "double", "x": 21})
        42
        >>> registry.unregister("demo", "double")
    """
    _check_key(kind, name)
    if obj is None:

        def decorator(target: Any) -> Any:
            register(kind, name, target, replace=replace)
            return target

        return decorator
    if isinstance(obj, str):
        _check_lazy_target(kind, name, obj)
        value: Any = _Lazy(obj)
    elif callable(obj):
        value = obj
    else:
        raise RegistryError(
            f"cannot register {kind} {name!r}: expected a class, a callable or a 'module:attr' string, "
            f"got {type(obj).__name__}."
        )
    with _lock:
        table = _entries.setdefault(kind, {})
        if name in table and not replace:
            existing = table[name]
            if existing is obj or _same_target(existing, value):
                return obj
            raise RegistryError(
                f"{kind} {name!r} is already registered ({_describe_value(existing)}); "
                f"pass replace=True to overwrite it, or choose another name."
            )
        table[name] = value
    return obj


def _same_target(existing: Any, new: Any) -> bool:
    """Re-registering the object a lazy entry points at (or the same lazy string) is not a collision."""
    if isinstance(existing, _Lazy) and isinstance(new, _Lazy):
        return existing.target == new.target
    if isinstance(existing, _Lazy) and not isinstance(new, _Lazy):
        module_name, _, attr = existing.target.partition(":")
        return getattr(new, "__module__", None) == module_name and getattr(new, "__qualname__", None) == attr
    return False


def _describe_value(value: Any) -> str:
    if isinstance(value, _Lazy):
        return value.target
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"


def unregister(kind: str, name: str) -> None:
    """Remove a registration (mainly for tests and interactive sessions)."""
    with _lock:
        table = _entries.get(kind, {})
        if name not in table:
            raise _unknown(kind, name)
        del table[name]
        if not table:
            _entries.pop(kind, None)


def _load_builtins() -> None:
    global _builtins_loaded, _builtins_loading
    if _builtins_loaded or _builtins_loading:
        return
    with _lock:
        if _builtins_loaded or _builtins_loading:
            return
        _builtins_loading = True
        try:
            for module_name in builtin_modules():
                importlib.import_module(module_name)
            _builtins_loaded = True
        finally:
            _builtins_loading = False


def builtin_modules() -> list[str]:
    """The modules the first lookup imports: every public module under ``BUILTIN_PACKAGES``, subpackages included.

    Names starting with ``_`` are skipped (``__main__``: a command line, not a component).

    Example:
        >>> from diffrl import registry
        >>> modules = registry.builtin_modules()
        >>> [m in modules for m in ("diffrl.objectives.qsm", "diffrl.data.edis.transform", "diffrl.data.__main__")]
        [True, True, False]
    """
    found: list[str] = []
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not info.name.rpartition(".")[2].startswith("_"):
                found.append(info.name)
    return found


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(*, reload: bool = False) -> list[str]:
    """Import every module declared under the ``diffrl.components`` entry-point group.

    A plugin package declares, in its ``pyproject.toml``::

        [project.entry-points."diffrl.components"]
        my_plugin = "my_plugin.components"

    and ``my_plugin/components.py`` calls ``registry.register`` at import time.

    Returns the entry-point names that were loaded. A plugin that fails to import raises a ``RegistryError`` naming it.
    """
    global _plugins_loaded
    with _lock:
        if _plugins_loaded and not reload:
            return []
        loaded = []
        for entry_point in _entry_points():
            try:
                entry_point.load()
            except Exception as err:  # a broken plugin must be loud, and say which one
                raise RegistryError(
                    f"diffrl plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
                    f"{type(err).__name__}: {err}"
                ) from err
            loaded.append(entry_point.name)
        _plugins_loaded = True
        return loaded


def _unknown(kind: str, name: str) -> RegistryError:
    if kind not in _entries:
        close = difflib.get_close_matches(kind, list(_entries), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return RegistryError(f"unknown component kind {kind!r}.{hint} Registered kinds: {sorted(_entries)}.")
    available = sorted(_entries[kind])  # dict keys: each name once, so suggestions never repeat
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return RegistryError(f"unknown {kind} {name!r}.{hint} Registered {kind} names: {available}.")


def get(kind: str, name: str) -> Any:
    """Return the class or factory registered as ``(kind, name)``, importing a lazy target if needed.

    A miss triggers plugin discovery once; a final miss raises ``RegistryError`` with the closest names.

    Example:
        >>> from diffrl import registry
        >>> registry.register("demo", "json_dumps", "json:dumps")
        'json:dumps'
        >>> registry.get("demo", "json_dumps")([1, 2])
        '[1, 2]'
        >>> registry.unregister("demo", "json_dumps")
    """
    _check_key(kind, name)
    _load_builtins()
    with _lock:
        value = _entries.get(kind, {}).get(name)
    if value is None and not _plugins_loaded:
        load_plugins()
        with _lock:
            value = _entries.get(kind, {}).get(name)
    if value is None:
        raise _unknown(kind, name)
    if isinstance(value, _Lazy):
        return value.resolve(kind, name)
    return value


def _to_plain(cfg: Any) -> Any:
    """OmegaConf nodes -> plain containers with interpolations resolved; anything else unchanged."""
    module = type(cfg).__module__
    if module.startswith("omegaconf"):
        from omegaconf import OmegaConf  # imported only when an OmegaConf node is actually passed

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build(kind: str, cfg: Any, /, **kwargs: Any) -> Any:
    """Build a component from a name, a mapping or an OmegaConf node.

    ``cfg`` may be ``"name"`` or ``{"name": ..., **options}``; the options and ``kwargs`` (which win on conflict)
    become constructor arguments. Nested mappings are passed through unbuilt (see the module docstring).
    Options the constructor does not accept (or required ones missing) raise a one-line ``RegistryError`` naming the
    component, the bad option and the accepted ones, before anything is built; any other constructor ``TypeError`` is
    re-raised with the component's name and the arguments it received.

    Example:
        >>> from diffrl import registry
        >>> registry.register("demo", "pair", lambda a, b=0: (a, b))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> registry.build("demo", {"name": "pair", "a": 1}, b=2)
        (1, 2)
        >>> try:
        ...     registry.build("demo", {"name": "pair", "a": 1, "c": 3})
        ... except registry.RegistryError as err:
        ...     print(err)
        demo 'pair' has no option 'c'; accepted options: a, b. Fix: remove it or use one of those names.
        >>> registry.unregister("demo", "pair")
    """
    cfg = _to_plain(cfg)
    if isinstance(cfg, str):
        name, options = cfg, {}
    elif isinstance(cfg, Mapping):
        if "name" not in cfg:
            raise RegistryError(
                f"cannot build a {kind} from {dict(cfg)!r}: the config has no 'name' key. "
                f"Add name: <one of {names(kind) if kind in kinds() else '...'}>."
            )
        options = {k: v for k, v in cfg.items() if k != "name"}
        name = cfg["name"]
    else:
        raise RegistryError(
            f"cannot build a {kind} from {type(cfg).__name__}: pass a registered name, a mapping with a 'name' key, "
            "or an OmegaConf node."
        )
    factory = get(kind, name)
    arguments = {**options, **kwargs}
    _check_options(kind, name, factory, options, kwargs)
    try:
        return factory(**arguments)
    except TypeError as err:
        signature = _signature(factory)
        raise TypeError(
            f"building {kind} {name!r} with arguments {sorted(arguments)} failed: {str(err).rstrip('.')}. "
            f"Its signature is {name}{signature}."
        ) from err


def _check_options(kind: str, name: str, factory: Any, options: Mapping, kwargs: Mapping) -> None:
    """Raise a one-line RegistryError if ``factory`` cannot take these keyword arguments (when its signature says so).

    ``options`` come from the user's config, ``kwargs`` from the calling code: the message says which is which, and
    lists as accepted only the names a config may set (not those the caller already passes).
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature (some builtins): let the call decide
        return
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown: list[str] = []
    else:
        keyword = {n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
        unknown = [key for key in {**options, **kwargs} if key not in keyword]
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in options
        and n not in kwargs
    ]
    if not unknown and not missing:
        return
    accepted = [
        n
        for n, p in params.items()
        if n not in kwargs and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if unknown:
        bad = ", ".join(repr(k) for k in unknown)
        close = sorted({c for k in unknown for c in difflib.get_close_matches(k, accepted, n=2, cutoff=0.6)})
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        source = "" if all(k in options for k in unknown) else " (passed by the calling code, not the config)"
        raise RegistryError(
            f"{kind} {name!r} has no option{'s' if len(unknown) > 1 else ''} {bad}{hint}{source}; accepted options: "
            f"{', '.join(accepted) or 'none'}. Fix: remove it or use one of those names."
        )
    raise RegistryError(
        f"{kind} {name!r} needs option{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}, "
        f"which {'were' if len(missing) > 1 else 'was'} not given; accepted options: {', '.join(accepted)}. "
        f"Fix: add {missing[0]}: <value> to its config."
    )


def _signature(obj: Callable[..., Any]) -> str:
    """The call signature as source text; string annotations (PEP 563) are evaluated when possible."""
    for eval_str in (True, False):
        try:
            return str(inspect.signature(obj, eval_str=eval_str))
        except (NameError, SyntaxError, TypeError):
            continue
        except ValueError:
            break
    return "(...)"


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind`` (an unknown kind raises, with suggestions)."""
    _load_builtins()
    if kind not in _entries and not _plugins_loaded:
        load_plugins()
    if kind not in _entries:
        raise _unknown(kind, "")
    return sorted(_entries[kind])


def kinds() -> list[str]:
    """Sorted kinds that have at least one registered component."""
    _load_builtins()
    return sorted(_entries)


def items(kind: str) -> Iterator[tuple[str, Any]]:
    """``(name, component)`` pairs of one kind, lazy targets resolved."""
    for name in names(kind):
        yield name, get(kind, name)


def describe(kind: str, name: str) -> str:
    """One paragraph about a component: ``kind/name``, its summary line and its call signature.

    Example:
        >>> from diffrl import registry
        >>> def scaled(x: float, factor: float = 2.0) -> float:
        ...     '''Multiply x by a factor.'''
        ...     return x * factor
        >>> _ = registry.register("demo", "scaled", scaled)
        >>> print(registry.describe("demo", "scaled"))
        demo/scaled: Multiply x by a factor.
          scaled(x: float, factor: float = 2.0) -> float
        >>> registry.unregister("demo", "scaled")
    """
    obj = get(kind, name)
    doc = inspect.getdoc(obj) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
    signature = _signature(obj)
    qualname = getattr(obj, "__name__", name)
    return f"{kind}/{name}: {summary}\n  {qualname}{signature}"
