"""The plugin contract: discovery, loud hook and platform signature checks, backend selection and its errors."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sgl.core import plugins as plugins_mod
from sgl.core.config import ServerArgs
from sgl.core.feature_select import select_features
from sgl.core.hooks import hookimpl, override
from sgl.core.lora.base import LoRABackend
from sgl.core.model.linear_method import LinearMethod, UnquantizedLinearMethod
from sgl.core.plugin_options import plugin_args, plugin_options
from sgl.core.platform import Platform
from sgl.core.plugins import (
    BackendError,
    PluginContractError,
    Plugins,
    expected_signature,
    load_plugins,
    reset_plugins,
    select_platform,
)
from sgl.core.quant.base import QuantizationMethod, select_quantization
from sgl.core.registry import Registry
from sgl.core.speculative.base import SpeculativeAlgorithm


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


# hook contract: a broken plugin is reported and skipped --------------------------------------------------------


def _failure_of(plugin: str, module: types.ModuleType, **others: object) -> str:
    """Loads ``module`` as plugin ``plugin`` (beside ``others``); asserts it was skipped and returns why."""
    found = load_plugins(extra={**others, plugin: module})
    assert plugin not in [i.name for i in found.infos], f"{plugin!r} loaded although it breaks the contract"
    assert "cpu" in found.platforms, "one broken plugin must not stop the in-tree ones"
    (failure,) = [f for f in found.failures if f.plugin.name == plugin]
    assert "\n" not in failure.error
    return failure.error


def test_misnamed_hook_is_skipped_naming_plugin_hook_and_expected_signature() -> None:
    error = _failure_of("typo-plugin", _plugin_module("typo_plugin", sgl_platform=lambda: {"x": "a:b"}))
    assert "'typo-plugin'" in error
    assert "'sgl_platform'" in error
    assert expected_signature("sgl_platforms") in error


def test_hook_with_wrong_argument_is_skipped_naming_plugin_hook_and_expected_signature() -> None:
    def sgl_startup_check(server_args: object, verbose: bool) -> None:
        return None

    error = _failure_of("bad-args", _plugin_module("bad_args", sgl_startup_check=sgl_startup_check))
    assert "'bad-args'" in error
    assert "'sgl_startup_check'" in error
    assert "verbose" in error
    assert expected_signature("sgl_startup_check") in error
    assert expected_signature("sgl_startup_check") == "sgl_startup_check(server_args: ServerArgs) -> None"


@pytest.mark.parametrize(
    "hook",
    ["sgl_speculative_algorithms", "sgl_lora_backends", "sgl_quantization_methods", "sgl_server_args"],
)
def test_new_feature_hook_with_wrong_signature_is_skipped_naming_the_expected_one(hook: str) -> None:
    def impl(server_args: object) -> dict[str, str]:
        return {}

    error = _failure_of("wrong-sig", _plugin_module("wrong_sig", **{hook: impl}))
    assert f"plugin 'wrong-sig' hook {hook!r} takes ['server_args']" in error
    assert f"expected {expected_signature(hook)}" in error
    assert expected_signature(hook).startswith(f"{hook}() -> ")


def test_hook_taking_a_subset_of_the_spec_arguments_is_accepted() -> None:
    module = _plugin_module("no_args", sgl_startup_check=lambda: None)
    found = load_plugins(extra={"no-args": module})
    assert any(i.name == "no-args" for i in found.infos)
    assert found.failures == []


def test_hook_returning_a_non_mapping_is_skipped_naming_the_plugin() -> None:
    error = _failure_of("bad-result", _plugin_module("bad_result", sgl_models=lambda: ["LlamaForCausalLM"]))
    assert "'bad-result'" in error and "'sgl_models'" in error and "returned list" in error


def test_registration_without_module_colon_attr_is_skipped() -> None:
    error = _failure_of("no-colon", _plugin_module("no_colon", sgl_models=lambda: {"X": "some.module.X"}))
    assert "'no-colon'" in error and "'X'" in error and "'module:attr'" in error


def test_hook_that_raises_is_skipped_naming_the_plugin_and_the_hook() -> None:
    def sgl_models() -> dict[str, str]:
        raise RuntimeError("vendor library missing")

    error = _failure_of("raiser", _plugin_module("raiser", sgl_models=sgl_models))
    assert error == "plugin 'raiser' hook 'sgl_models' raised RuntimeError: vendor library missing"


def test_hook_named_function_without_hookimpl_is_reported_not_ignored() -> None:
    module = types.ModuleType("forgot_decorator")
    module.sgl_models = lambda: {"ForgottenForCausalLM": "x:y"}  # type: ignore[attr-defined]
    error = _failure_of("forgot", module)
    assert "'forgot' defines 'sgl_models' without @hookimpl" in error


def test_misspelled_undecorated_hook_is_reported_with_the_name_it_resembles() -> None:
    module = types.ModuleType("misspelled")
    module.sgl_platfroms = lambda: {}  # type: ignore[attr-defined]
    error = _failure_of("misspelled", module)
    assert "'sgl_platfroms' without @hookimpl" in error
    assert f"did you mean {expected_signature('sgl_platforms')}" in error


def test_a_plugin_that_fails_to_import_is_skipped_and_the_rest_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    broken = metadata.EntryPoint(name="vendorx", value="sgl_no_such_vendor_module.hooks", group="sgl.plugins")
    real = plugins_mod._entry_points()
    monkeypatch.setattr(plugins_mod, "_entry_points", lambda: [broken, *real])
    found = load_plugins()
    assert "cpu" in found.platforms and "LlamaForCausalLM" in found.models
    (failure,) = found.failures
    assert failure.plugin.name == "vendorx"
    assert "failed to import 'sgl_no_such_vendor_module.hooks': ModuleNotFoundError" in failure.error
    with pytest.raises(ValueError, match=r"unknown backend 'vendorx'.*plugins that failed to load: 'vendorx'"):
        found.platforms.get("vendorx")


def test_two_plugins_registering_one_name_skip_the_later_one_naming_both() -> None:
    module = _plugin_module("dup", sgl_platforms=lambda: {"cpu": EnvSelectedPlatform, "dup_only": EnvSelectedPlatform})
    error = _failure_of("dup", module)
    assert "plugin 'dup' registers backend 'cpu', which 'xpu_cpu' registers too" in error
    assert "override(" in error, "the error must say how to replace an entry on purpose"


def test_in_tree_plugin_wins_a_clash_whatever_the_names_sort_order() -> None:
    module = _plugin_module("aaa", sgl_models=lambda: {"LlamaForCausalLM": "aaa.model:Llama"})
    found = load_plugins(extra={"aaa": module})
    assert found.models.origin("LlamaForCausalLM") == "core-models"
    assert [f.plugin.name for f in found.failures] == ["aaa"]


# broken plugins: named when what they would provide is asked for -----------------------------------------------


class BrokenPlatform(Platform):
    name: ClassVar[str] = "brokenhw"

    @classmethod
    def is_available(cls) -> bool:
        return True


def _broken_platform_plugin() -> types.ModuleType:
    """Registers a platform, then breaks the contract in another hook: the whole plugin is skipped."""
    return _plugin_module(
        "broken_hw", sgl_platforms=lambda: {"brokenhw": BrokenPlatform}, sgl_models=lambda: {"X": "no-colon"}
    )


@pytest.mark.usefixtures("fresh_plugins")
def test_other_backends_start_while_a_broken_plugin_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _plugin_module("env_plugin", sgl_platforms=lambda: {"env_selected": EnvSelectedPlatform})
    found = load_plugins(extra={"broken-hw": _broken_platform_plugin(), "env-plugin": good})
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: found)
    assert select_platform().name == "cpu"
    assert isinstance(select_platform("env_selected"), EnvSelectedPlatform)
    assert "brokenhw" not in found.platforms


@pytest.mark.usefixtures("fresh_plugins")
def test_selecting_the_broken_plugins_backend_raises_its_failure_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = load_plugins(extra={"broken-hw": _broken_platform_plugin()})
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: found)
    with pytest.raises(PluginContractError) as info:
        select_platform("brokenhw")
    message = str(info.value)
    assert message.startswith("backend 'brokenhw' is unavailable: plugin 'broken-hw' hook 'sgl_models'")
    assert "\n" not in message


def test_selecting_an_architecture_of_a_skipped_plugin_names_the_plugin(tmp_path: Path) -> None:
    import json

    from sgl.core.model.config import ModelConfig
    from sgl.core.model.loader import resolve_architecture

    module = _plugin_module(
        "half_broken",
        sgl_models=lambda: {"HalfForCausalLM": "half.model:Half"},
        sgl_attention_backends=lambda: {"half": 42},
    )
    found = load_plugins(extra={"half-broken": module})
    config = {"architectures": ["HalfForCausalLM"], "hidden_size": 8, "num_attention_heads": 1,
              "num_hidden_layers": 1, "vocab_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugins_mod, "get_plugins", lambda: found)
        with pytest.raises(ValueError, match=r"'HalfForCausalLM' is unavailable: plugin 'half-broken' hook "):
            resolve_architecture(ModelConfig.from_dir(tmp_path))


def test_a_registered_target_that_cannot_import_names_its_plugin_when_used() -> None:
    module = _plugin_module("ghost", sgl_attention_backends=lambda: {"ghost": "sgl_no_such_module:Backend"})
    found = load_plugins(extra={"ghost": module})
    with pytest.raises(ImportError, match=r"attention backend 'ghost' \(plugin 'ghost'\) cannot be imported"):
        found.attention_backends.get("ghost")


# overriding a built-in entry on purpose ------------------------------------------------------------------------


class MyLlama:
    """Stands in for a plugin's own Llama implementation."""


def test_override_replaces_a_built_in_architecture_and_records_which() -> None:
    module = _plugin_module("my_llama", sgl_models=lambda: {"LlamaForCausalLM": override(MyLlama)})  # type: ignore[arg-type]
    found = load_plugins(extra={"my-llama": module})
    assert found.failures == []
    assert found.models.get("LlamaForCausalLM") is MyLlama
    assert found.models.origin("LlamaForCausalLM") == "my-llama"
    assert found.models.replaced("LlamaForCausalLM") == "core-models"
    assert found.models.replaced("Qwen3ForCausalLM") is None


def test_override_of_a_name_nobody_registers_registers_it() -> None:
    module = _plugin_module("new_arch", sgl_models=lambda: {"BrandNewForCausalLM": override("x.model:New")})
    found = load_plugins(extra={"new-arch": module})
    assert found.models.origin("BrandNewForCausalLM") == "new-arch"
    assert found.models.replaced("BrandNewForCausalLM") is None


def test_two_overrides_of_one_name_skip_the_later_plugin() -> None:
    first = _plugin_module("first", sgl_models=lambda: {"LlamaForCausalLM": override("first.m:L")})
    second = _plugin_module("second", sgl_models=lambda: {"LlamaForCausalLM": override("second.m:L")})
    error = _failure_of("second", second, first=first)
    assert error == "plugin 'second' overrides model architecture 'LlamaForCausalLM', which 'first' overrides too"


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
    assert "active" in cpu and "->" not in cpu  # the platform shown as active (--backend cpu)


# feature flags: a name is looked up in its registry ------------------------------------------------------------


class EchoSpeculative(SpeculativeAlgorithm):
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    @classmethod
    def create(cls, server_args: ServerArgs, runner: Any) -> EchoSpeculative:
        return cls(runner.vocab_size)


class NotAnAlgorithm:
    @classmethod
    def create(cls, server_args: ServerArgs, runner: Any) -> NotAnAlgorithm:
        return cls()


class WrongResultLoRA(LoRABackend):
    @classmethod
    def create(cls, server_args: ServerArgs, runner: Any) -> LoRABackend:
        return object()  # type: ignore[return-value]


def _features_plugins() -> Plugins:
    module = _plugin_module(
        "feature_plugin",
        sgl_speculative_algorithms=lambda: {"echo": EchoSpeculative, "not_one": NotAnAlgorithm},
        sgl_lora_backends=lambda: {"wrong_result": WrongResultLoRA},
    )
    found = load_plugins(extra={"feature-plugin": module})
    assert found.failures == []
    return found


def test_flag_without_a_name_selects_nothing() -> None:
    assert select_features(ServerArgs(), _features_plugins()) == (None, None)


def test_a_plugin_algorithm_chosen_by_name_is_built_with_the_runner() -> None:
    selected = select_features(ServerArgs(speculative_algorithm="echo"), _features_plugins())
    assert selected.speculative is EchoSpeculative
    built = selected.build(ServerArgs(speculative_algorithm="echo"), types.SimpleNamespace(vocab_size=77))
    assert isinstance(built.speculative, EchoSpeculative) and built.speculative.vocab_size == 77
    assert built.lora is None


def test_unknown_feature_name_lists_the_known_ones() -> None:
    found = _features_plugins()
    with pytest.raises(ValueError) as info:
        select_features(ServerArgs(speculative_algorithm="ecko"), found)
    # NOTE: every registered name (in-tree NGRAM, ... included); no speculative name is reserved any more
    known = sorted(found.speculative_algorithms.names())
    assert {"echo", "not_one"} <= set(known)
    assert str(info.value) == f"--speculative-algorithm: unknown speculative algorithm 'ecko'; known: {', '.join(known)}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (ServerArgs(lora_backend="csgmv"),
         "--lora-backend csgmv is not supported yet: no installed plugin provides this LoRA backend"),
    ],
    ids=["lora"],
)
def test_built_in_names_without_an_implementation_are_refused_with_one_line(args: ServerArgs, message: str) -> None:
    with pytest.raises(ValueError) as info:
        select_features(args, _features_plugins())
    assert str(info.value) == message


def test_a_registered_class_outside_the_contract_is_refused_naming_its_plugin() -> None:
    with pytest.raises(ValueError, match=r"--speculative-algorithm not_one: plugin 'feature-plugin' registered .*"
                                         r"NotAnAlgorithm.*not a subclass of sgl\.core\.speculative\.base\."):
        select_features(ServerArgs(speculative_algorithm="not_one"), _features_plugins())


def test_create_that_returns_something_else_is_refused() -> None:
    args = ServerArgs(lora_backend="wrong_result")
    selected = select_features(args, _features_plugins())
    with pytest.raises(ValueError, match=r"WrongResultLoRA\.create returned object, not a LoRABackend"):
        selected.build(args, types.SimpleNamespace())


class HalfQuantization(QuantizationMethod):
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> HalfQuantization:
        return cls(checkpoint_config)

    def linear_method(self) -> LinearMethod:
        return UnquantizedLinearMethod()


def _quant_registry() -> Registry[type]:
    module = _plugin_module("quant_plugin", sgl_quantization_methods=lambda: {"half": HalfQuantization})
    return load_plugins(extra={"quant-plugin": module}).quantization_methods


def test_quantization_flag_wins_and_hands_the_method_the_checkpoint_config() -> None:
    method = select_quantization("half", {"quant_method": "awq", "bits": 4}, _quant_registry())
    assert isinstance(method, HalfQuantization) and method.config == {"quant_method": "awq", "bits": 4}


def test_checkpoint_quant_method_selects_without_a_flag_and_none_means_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    import sgl.core.quant.base as quant_base

    monkeypatch.setattr(quant_base, "NOT_YET_SUPPORTED", ("future_fp3",))
    registry = _quant_registry()
    method = select_quantization(None, {"quant_method": "half"}, registry)
    assert isinstance(method, HalfQuantization)
    assert select_quantization(None, None, registry) is None
    with pytest.raises(ValueError, match="quantization_config has no quant_method"):
        select_quantization(None, {"bits": 4}, registry)
    with pytest.raises(ValueError, match=r"^--quantization future_fp3 is not supported yet"):
        select_quantization(None, {"quant_method": "future_fp3"}, registry)
    with pytest.raises(ValueError, match=r"^--quantization: unknown quantization method 'int3'; known: .*half"):
        select_quantization("int3", None, registry)


def test_base_platform_answers_a_quantization_method_with_its_reference_linear_method() -> None:
    class MarkedMethod(UnquantizedLinearMethod):
        pass

    class Marked(HalfQuantization):
        def linear_method(self) -> LinearMethod:
            return MarkedMethod()

    assert isinstance(Platform().linear_method(None), UnquantizedLinearMethod)
    assert isinstance(Platform().linear_method(Marked({})), MarkedMethod)


# a plugin's own server arguments -------------------------------------------------------------------------------


@dataclasses.dataclass
class GoodOptions:
    depth: int = dataclasses.field(default=2, metadata={"help": "how deep"})
    label: str | None = None
    fast: bool = False


@dataclasses.dataclass
class NoDefault:
    depth: int


@dataclasses.dataclass
class ListOption:
    depths: list[int] = dataclasses.field(default_factory=list)


def test_server_args_dataclass_becomes_prefixed_typed_options() -> None:
    found = load_plugins(extra={"my_plug": _plugin_module("my_plug", sgl_server_args=lambda: GoodOptions)})
    assert found.server_args.get("my_plug") is GoodOptions
    options = plugin_options("my_plug", GoodOptions)
    assert [(o.flag, o.type, o.optional, o.default, o.help) for o in options] == [
        ("--my-plug-depth", int, False, 2, "how deep"),
        ("--my-plug-label", str, True, None, ""),
        ("--my-plug-fast", bool, False, False, ""),
    ]


@pytest.mark.parametrize(
    ("result", "why"),
    [
        (NoDefault, "field NoDefault.depth has no default"),
        (ListOption, "field ListOption.depths is list[int]; options may be bool, int, float or str"),
        ("tests.core.test_plugins:NotThere", "has no attribute 'NotThere'"),
        ({"x": "a:b"}, "expected a dataclass type, got {'x': 'a:b'}"),
    ],
    ids=["no-default", "list", "missing", "mapping"],
)
def test_server_args_that_the_cli_cannot_offer_fail_at_load(result: object, why: str) -> None:
    error = _failure_of("opts", _plugin_module("opts", sgl_server_args=lambda: result))
    assert error.startswith("plugin 'opts' hook 'sgl_server_args': ")
    assert why in error
    assert error.endswith(f"expected {expected_signature('sgl_server_args')} returning 'module:DataclassType'")


def test_plugin_options_are_read_back_typed_or_default() -> None:
    given = ServerArgs(plugin_args={"my_plug": GoodOptions(depth=9)})
    assert plugin_args(given, GoodOptions) == GoodOptions(depth=9)
    assert plugin_args(ServerArgs(), GoodOptions) == GoodOptions()
    with pytest.raises(ValueError, match="plugin_args must map plugin names to instances"):
        ServerArgs(plugin_args={"my_plug": GoodOptions})


@pytest.mark.usefixtures("fresh_plugins")
def test_plugin_options_that_clash_with_a_server_flag_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgl import plugin_args as cli_plugin_args

    @dataclasses.dataclass
    class MaxOptions:
        n: int = 3  # --max-n is a server flag already

    found = load_plugins(extra={
        "max": _plugin_module("max_plug", sgl_server_args=lambda: MaxOptions),
        "my_plug": _plugin_module("my_plug", sgl_server_args=lambda: GoodOptions),
    })
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: found)
    groups = {g.plugin: g for g in cli_plugin_args.plugin_groups()}  # NOTE: the installed plugins' (cuda) besides
    assert "max" not in groups and "my_plug" in groups
    assert groups["my_plug"].panel == "Plugin my_plug ((in-process) -)"
    assert cli_plugin_args.plugin_argv({"my_plug": GoodOptions(depth=5, fast=True)}) == [
        "--my-plug-depth", "5", "--my-plug-fast"
    ]
