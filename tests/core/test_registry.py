"""Registry: a name names one target; two plugins naming the same shared target is one entry, a different one a clash."""

from __future__ import annotations

import pytest

from sgl.core.registry import Registry


def test_the_same_target_string_from_two_plugins_is_one_entry_and_another_target_is_a_clash() -> None:
    reg: Registry[object] = Registry("attention backend")
    reg.register("triton", "sgl.core.registry:Registry", origin="cuda")
    reg.register("triton", "sgl.core.registry:" + "Registry", origin="rocm")  # an equal string, another object
    assert reg.get("triton") is Registry and reg.names() == ["triton"]
    with pytest.raises(ValueError, match="attention backend 'triton' is registered twice: by 'rocm' and by 'xpu'"):
        reg.register("triton", "sgl.core.registry:resolve", origin="xpu")
