"""The plugin contract: discovery, loud hook and platform signature checks, backend selection and its errors."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from sgl.core import plugins as plugins_mod
from sgl.core.hooks import hookimpl
from sgl.core.platform import Platform
from sgl.core.plugins import (
    BackendError,
    PluginContractError,
    expected_signature,
    load_plugins,
    reset_plugins,
    select_platform,
)
from sgl.core.registry import Registry


def _plugin_module(name: str, **hooks: Callable[..., object]) -> types.ModuleType:
    """An in-test plugin module whose attributes are hook implementations, as a real plugin's module would be."""
    module = types.ModuleType(name)
    for attr, fn in hooks.items():
        setattr(module, attr, hookimpl(fn))
    return module


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Process-wide plugin and platform caches start and end empty, and SGL_BACKEND is unset unless a test sets it."""
    monkeypatch.delenv("SGL_BACKEND", raising=False)
    reset_plugins()
    yield
    monkeypatch.undo()  # NOTE: a test may have replaced get_plugins; restore it before clearing its cache
    reset_plugins()


class EnvSelectedPlatform(Platform):
    name: ClassVar[str] = "env_selected"
    probe_priority: ClassVar[int] = 100_000

    @classmethod
    def is_available(cls) -> bool:
        return True


# discovery ------------------------------------------------------------------------------------------------------


def test_discovery_lists_in_tree_plugins_with_distribution_sgl() -> None:
    infos = {info.name: info for info in load_plugins().infos}
    for name, module in [
        ("core-models", "sgl.core.models.builtin"),
        ("xpu_cpu", "sgl.plugins.xpu_cpu.plugin"),
    ]:
        assert name in infos, f"in-tree plugin {name!r} not discovered; found {sorted(infos)}"
        assert infos[name].module == module
        assert infos[name].distribution == "sgl"
        assert infos[name].version == "0.1.0"


def test_in_tree_registrations_name_the_plugin_that_made_them() -> None:
    found = load_plugins()
    assert found.platforms.origin("cpu") == "xpu_cpu"
    assert found.models.origin("LlamaForCausalLM") == "core-models"


def test_in_process_plugin_registers_a_platform_class() -> None:
    module = _plugin_module("in_test", sgl_platforms=lambda: {"env_selected": EnvSelectedPlatform})
    found = load_plugins(extra={"in-test": module})
    assert found.platforms.get("env_selected") is EnvSelectedPlatform
    assert found.platforms.origin("env_selected") == "in-test"
    assert any(i.name == "in-test" and i.distribution == "(in-process)" for i in found.infos)


# hook contract --------------------------------------------------------------------------------------------------


def test_misnamed_hook_fails_naming_plugin_hook_and_expected_signature() -> None:
    module = _plugin_module("typo_plugin", sgl_platform=lambda: {"x": "a:b"})
    with pytest.raises(PluginContractError) as info:
        load_plugins(extra={"typo-plugin": module})
    message = str(info.value)
    assert "'typo-plugin'" in message
    assert "'sgl_platform'" in message
    assert expected_signature("sgl_platforms") in message


def test_hook_with_wrong_argument_fails_naming_plugin_hook_and_expected_signature() -> None:
    def sgl_startup_check(server_args: object, verbose: bool) -> None:
        return None

    module = _plugin_module("bad_args", sgl_startup_check=sgl_startup_check)
    with pytest.raises(PluginContractError) as info:
        load_plugins(extra={"bad-args": module})
    message = str(info.value)
    assert "'bad-args'" in message
    assert "'sgl_startup_check'" in message
    assert "verbose" in message
    assert expected_signature("sgl_startup_check") in message
    assert "server_args" in expected_signature("sgl_startup_check")


def test_hook_taking_a_subset_of_the_spec_arguments_is_accepted() -> None:
    module = _plugin_module("no_args", sgl_startup_check=lambda: None)
    found = load_plugins(extra={"no-args": module})
    assert any(i.name == "no-args" for i in found.infos)


def test_hook_returning_a_non_mapping_fails_naming_the_plugin() -> None:
    module = _plugin_module("bad_result", sgl_models=lambda: ["LlamaForCausalLM"])
    with pytest.raises(PluginContractError, match=r"'bad-result'.*'sgl_models'.*returned list"):
        load_plugins(extra={"bad-result": module})


def test_registration_without_module_colon_attr_fails() -> None:
    module = _plugin_module("no_colon", sgl_models=lambda: {"X": "some.module.X"})
    with pytest.raises(PluginContractError, match=r"'no-colon'.*'X'.*'module:attr'"):
        load_plugins(extra={"no-colon": module})


def test_two_plugins_registering_one_name_fail_naming_both() -> None:
    module = _plugin_module("dup", sgl_platforms=lambda: {"cpu": EnvSelectedPlatform})
    with pytest.raises(ValueError, match=r"backend 'cpu' is registered twice: by 'xpu_cpu' and by 'dup'"):
        load_plugins(extra={"dup": module})


# platform contract ----------------------------------------------------------------------------------------------


def test_platform_override_with_wrong_signature_raises_naming_class_and_contract() -> None:
    with pytest.raises(TypeError) as info:

        class MisdeclaredPlatform(Platform):
            def attention_backend(self, name: str) -> object:  # type: ignore[override]
                return None

    message = str(info.value)
    assert "MisdeclaredPlatform.attention_backend" in message
    assert "expected attention_backend(self, name: 'str', runner: 'Any')" in message


def test_platform_classmethod_probe_must_stay_a_classmethod_without_arguments() -> None:
    with pytest.raises(TypeError, match=r"SlowProbePlatform\.is_available.*expected is_available\(\)"):

        class SlowProbePlatform(Platform):
            @classmethod
            def is_available(cls, device_index: int) -> bool:  # type: ignore[override]
                return True


def test_platform_override_with_matching_signature_is_accepted() -> None:
    class FinePlatform(Platform):
        def default_attention_backend(self) -> str:
            return "fine"

    assert FinePlatform().default_attention_backend() == "fine"


# backend selection ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_plugins")
def test_unknown_backend_is_one_line_error_listing_available_backends() -> None:
    with pytest.raises(BackendError) as info:
        select_platform("no_such_backend")
    message = str(info.value)
    assert "\n" not in message
    assert "'no_such_backend' is unknown" in message
    assert "cpu" in message.split("available here: ")[1].split(";")[0].split(", ")


@pytest.mark.usefixtures("fresh_plugins")
def test_rocm_backend_error_names_the_extra_to_install() -> None:
    with pytest.raises(BackendError) as info:
        select_platform("rocm")
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'sgl[rocm]'" in message
    assert "available here:" in message and "cpu" in message


@pytest.mark.usefixtures("fresh_plugins")
def test_without_a_name_probing_picks_the_first_available_in_probe_order() -> None:
    found = plugins_mod.get_plugins()
    available = [n for n, ok in plugins_mod.available_platforms(found).items() if ok]
    first = min(available, key=lambda n: (found.platforms.get(n).probe_priority, n))
    assert select_platform().name == first
    assert "cpu" in available, "the cpu platform is available everywhere"


@pytest.mark.usefixtures("fresh_plugins")
def test_sgl_backend_environment_variable_selects_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _plugin_module("env_plugin", sgl_platforms=lambda: {"env_selected": EnvSelectedPlatform})
    with_env_plugin = load_plugins(extra={"env-plugin": module})
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: with_env_plugin)
    assert select_platform().name == "cpu", "probing must never pick a high probe_priority platform"
    select_platform.cache_clear()
    monkeypatch.setenv("SGL_BACKEND", "env_selected")
    assert isinstance(select_platform(), EnvSelectedPlatform)
    assert select_platform("cpu").name == "cpu", "an explicit --backend wins over SGL_BACKEND"


@pytest.mark.usefixtures("fresh_plugins")
def test_unknown_sgl_backend_environment_variable_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGL_BACKEND", "from_env_typo")
    with pytest.raises(BackendError, match="'from_env_typo' is unknown"):
        select_platform()


@pytest.mark.usefixtures("fresh_plugins")
def test_registered_but_unavailable_backend_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    class AbsentPlatform(Platform):
        name: ClassVar[str] = "absent"

    module = _plugin_module("absent_plugin", sgl_platforms=lambda: {"absent": AbsentPlatform})
    with_absent = load_plugins(extra={"absent-plugin": module})
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: with_absent)
    with pytest.raises(
        BackendError, match=r"'absent' is not available on this machine; available here: .*cpu"
    ):
        select_platform("absent")


# registry -------------------------------------------------------------------------------------------------------


def test_registry_unknown_name_lists_the_known_names() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("beta", 2)
    registry.register("alpha", 1)
    with pytest.raises(ValueError, match=r"^unknown widget 'gamma'; known: alpha, beta$"):
        registry.get("gamma")


def test_empty_registry_error_says_none_are_known() -> None:
    with pytest.raises(ValueError, match=r"unknown widget 'x'; known: \(none\)"):
        Registry[int]("widget").get("x")


def test_registry_resolves_module_attr_strings_lazily() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("join", "os.path:join", origin="test")
    assert "join" in registry
    import os.path

    assert registry.get("join") is os.path.join
    assert registry.origin("join") == "test"


# sgl plugins --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_plugins")
def test_sgl_plugins_table_shows_an_unavailable_platform_sorted_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgl.cli import format_report, plugins_report

    class AardvarkPlatform(Platform):
        name: ClassVar[str] = "aardvark"  # sorts before every in-tree platform, and is never available

    module = _plugin_module("aardvark_plugin", sgl_platforms=lambda: {"aardvark": AardvarkPlatform})
    with_aardvark = load_plugins(extra={"aardvark-plugin": module})
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: with_aardvark)
    report = plugins_report("cpu")
    assert report["platforms"][0]["name"] == "aardvark" and report["platforms"][0]["available"] is False
    lines = format_report(report).splitlines()
    aardvark = next(line for line in lines if line.strip().startswith("aardvark "))
    cpu = next(line for line in lines if line.strip().startswith("cpu "))
    assert "unavailable" in aardvark and "-> needs its device" in aardvark
    assert "available" in cpu and "->" not in cpu
