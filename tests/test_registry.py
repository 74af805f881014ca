"""The registry contract: registration forms, collisions, lookups with suggestions, build, describe, plugins."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from diffrl import registry


@pytest.fixture
def clean_kind():
    """A kind private to one test, removed afterwards."""
    kind = "test_kind"
    yield kind
    registry._entries.pop(kind, None)


class Widget:
    """A widget for the tests."""

    def __init__(self, size: int, color: str = "red") -> None:
        self.size = size
        self.color = color


def test_decorator_and_call_registration(clean_kind):
    @registry.register(clean_kind, "decorated")
    class Decorated:
        pass

    assert registry.register(clean_kind, "called", Widget) is Widget
    assert registry.get(clean_kind, "decorated") is Decorated
    assert registry.get(clean_kind, "called") is Widget
    assert registry.names(clean_kind) == ["called", "decorated"]
    assert clean_kind in registry.kinds()


def test_lazy_target_resolves_on_first_use(clean_kind):
    registry.register(clean_kind, "ordered", "collections:OrderedDict")
    assert isinstance(registry._entries[clean_kind]["ordered"], registry._Lazy)
    from collections import OrderedDict

    assert registry.get(clean_kind, "ordered") is OrderedDict


@pytest.mark.parametrize(
    "target, message",
    [("collections.OrderedDict", "not of the form"), ("no_such_module_xyz:thing", "cannot be found")],
)
def test_bad_lazy_targets_are_rejected_at_registration(clean_kind, target, message):
    with pytest.raises(registry.RegistryError, match=message):
        registry.register(clean_kind, "bad", target)


def test_lazy_target_with_missing_attribute_fails_on_lookup(clean_kind):
    registry.register(clean_kind, "ghost", "collections:NoSuchThing")
    with pytest.raises(registry.RegistryError, match="has no attribute 'NoSuchThing'"):
        registry.get(clean_kind, "ghost")


def test_collision_raises_unless_replace(clean_kind):
    registry.register(clean_kind, "widget", Widget)
    with pytest.raises(registry.RegistryError, match="already registered.*replace=True"):
        registry.register(clean_kind, "widget", dict)
    registry.register(clean_kind, "widget", dict, replace=True)
    assert registry.get(clean_kind, "widget") is dict
    # re-registering the very same object (e.g. a module imported twice) is not a collision
    registry.register(clean_kind, "widget", dict)


def test_lazy_entry_then_decorator_of_the_same_object_is_not_a_collision(clean_kind):
    registry.register(clean_kind, "widget", f"{__name__}:Widget")
    registry.register(clean_kind, "widget", Widget)
    assert registry.get(clean_kind, "widget") is Widget


def test_unknown_name_suggests_closest(clean_kind):
    registry.register(clean_kind, "diffusion_ql", Widget)
    registry.register(clean_kind, "qsm", Widget)
    with pytest.raises(registry.RegistryError) as info:
        registry.get(clean_kind, "difusion_ql")
    message = str(info.value)
    assert "unknown test_kind 'difusion_ql'" in message
    assert "Did you mean 'diffusion_ql'" in message
    assert "['diffusion_ql', 'qsm']" in message


def test_unknown_kind_suggests_closest(clean_kind):
    registry.register(clean_kind, "x", Widget)
    with pytest.raises(registry.RegistryError, match="unknown component kind 'test_knd'.*Did you mean 'test_kind'"):
        registry.get("test_knd", "x")
    with pytest.raises(LookupError):  # RegistryError is a LookupError too
        registry.names("test_knd")


def test_builtin_loss_name_suggestion():
    if "loss" not in registry.kinds() or "diffusion_ql" not in registry.names("loss"):
        pytest.skip("diffusion_ql is not registered in this build")
    with pytest.raises(registry.RegistryError, match="Did you mean 'diffusion_ql'"):
        registry.get("loss", "difusion_ql")


def test_build_from_name_mapping_and_omegaconf(clean_kind):
    from omegaconf import OmegaConf

    registry.register(clean_kind, "widget", Widget)
    registry.register(clean_kind, "default_widget", lambda: Widget(1))
    assert registry.build(clean_kind, "default_widget").size == 1
    widget = registry.build(clean_kind, {"name": "widget", "size": 3}, color="blue")
    assert (widget.size, widget.color) == (3, "blue")
    # kwargs win over config keys
    assert registry.build(clean_kind, {"name": "widget", "size": 3}, size=4).size == 4
    cfg = OmegaConf.create({"base": 7, "component": {"name": "widget", "size": "${base}"}})
    assert registry.build(clean_kind, cfg.component).size == 7


def test_build_passes_nested_mappings_through_unbuilt(clean_kind):
    registry.register(clean_kind, "holder", lambda inner: inner)
    inner = registry.build(clean_kind, {"name": "holder", "inner": {"name": "widget", "size": 2}})
    assert inner == {"name": "widget", "size": 2}


def test_build_errors_name_the_component(clean_kind):
    registry.register(clean_kind, "widget", Widget)
    with pytest.raises(registry.RegistryError, match="no 'name' key"):
        registry.build(clean_kind, {"size": 1})
    with pytest.raises(registry.RegistryError, match="pass a registered name"):
        registry.build(clean_kind, 3)


def test_unknown_and_missing_options_are_one_line_registry_errors(clean_kind):
    registry.register(clean_kind, "widget", Widget)
    with pytest.raises(registry.RegistryError) as info:
        registry.build(clean_kind, {"name": "widget", "size": 1, "colour": "blue"})
    assert str(info.value) == (
        "test_kind 'widget' has no option 'colour' (did you mean 'color'?); accepted options: size, color. "
        "Fix: remove it or use one of those names."
    )
    # names the calling code passes are not offered to the config, and a bad one is blamed on the code
    with pytest.raises(registry.RegistryError, match=r"no option 'foo' \(passed by the calling code.*options: color\."):
        registry.build(clean_kind, {"name": "widget"}, size=1, foo=2)
    with pytest.raises(registry.RegistryError, match="needs option 'size', which was not given.*add size: <value>"):
        registry.build(clean_kind, {"name": "widget", "color": "blue"})
    # a TypeError raised inside a constructor that accepted its arguments still names the component
    registry.register(clean_kind, "broken", lambda size: size + "x")
    with pytest.raises(TypeError, match=r"building test_kind 'broken' with arguments \['size'\] failed"):
        registry.build(clean_kind, {"name": "broken", "size": 1})


def test_build_checks_options_of_a_real_loss():
    """`+loss.foo=1` on a recipe: the error names the loss, the option and CalQLLoss's real arguments."""
    with pytest.raises(registry.RegistryError, match=r"loss 'cal_ql' has no option 'foo'; accepted .*cql_alpha"):
        registry.build("loss", {"name": "cal_ql", "foo": 1}, actor_network=None, qvalue_network=None)


def test_describe_gives_summary_and_signature(clean_kind):
    registry.register(clean_kind, "widget", Widget)
    text = registry.describe(clean_kind, "widget")
    assert text.splitlines()[0] == "test_kind/widget: A widget for the tests."
    assert "Widget(size: int, color: str = 'red')" in text


def test_import_diffrl_does_not_import_components():
    code = "import sys, diffrl; assert 'torch' not in sys.modules, 'import diffrl pulled in torch'"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def _write_plugin_distribution(root, package: str, entry_name: str) -> None:
    """A minimal installed distribution: a package plus dist-info with an entry point in diffrl.components."""
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            from diffrl import registry

            @registry.register("loss", "{entry_name}_loss")
            class PluginLoss:
                '''A loss that lives in a plugin.'''
            """
        )
    )
    dist = root / f"{package}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[diffrl.components]\n{entry_name} = {package}\n")


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    _write_plugin_distribution(tmp_path, "diffrl_test_plugin", "testplugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    registry._entries.get("loss", {}).pop("testplugin_loss", None)
    sys.modules.pop("diffrl_test_plugin", None)


def test_entry_point_plugin_is_loaded_on_lookup_miss(plugin_on_path):
    assert "diffrl_test_plugin" not in sys.modules
    loss = registry.get("loss", "testplugin_loss")
    assert loss.__module__ == "diffrl_test_plugin"
    assert "diffrl_test_plugin" in sys.modules


def test_load_plugins_eagerly(plugin_on_path):
    loaded = registry.load_plugins()
    assert "testplugin" in loaded
    assert "testplugin_loss" in registry.names("loss")
    assert registry.load_plugins() == []  # idempotent


def test_broken_plugin_is_loud(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[diffrl.components]\nbroken = broken_plugin_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(registry.RegistryError, match="plugin 'broken'.*failed to load"):
        registry.load_plugins()


def test_a_module_in_a_builtin_package_registers_without_being_listed(clean_kind, tmp_path, monkeypatch):
    """Adding a built-in component is one file: the first lookup imports every public module of the packages."""
    package = tmp_path / "diffrl_test_builtins"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "widgets.py").write_text(
        textwrap.dedent(
            f"""
            from diffrl import registry

            @registry.register("{clean_kind}", "auto_widget")
            class AutoWidget:
                '''Registered by being in a built-in package.'''
            """
        )
    )
    (package / "__main__.py").write_text("raise RuntimeError('a command line must not be imported by a lookup')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "BUILTIN_PACKAGES", ("diffrl_test_builtins",))
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    assert registry.builtin_modules() == ["diffrl_test_builtins.sub", "diffrl_test_builtins.sub.widgets"]
    assert registry.get(clean_kind, "auto_widget").__name__ == "AutoWidget"
    assert "diffrl_test_builtins.__main__" not in sys.modules
    for name in [m for m in sys.modules if m.startswith("diffrl_test_builtins")]:
        monkeypatch.delitem(sys.modules, name)


def test_every_component_module_of_diffrl_is_a_builtin():
    modules = registry.builtin_modules()
    for name in (
        "diffrl.objectives.common",
        "diffrl.objectives.qsm",
        "diffrl.modules.critics",
        "diffrl.data.generators",
    ):
        assert name in modules
    assert not [m for m in modules if m.rpartition(".")[2].startswith("_")]
    assert {"diffusion_ql", "qsm", "cal_ql", "diffusion_bc", "iql"} <= set(registry.names("loss"))
