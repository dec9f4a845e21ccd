"""Settings precedence (command line > environment > ini > default) and validation."""

from __future__ import annotations

import pytest

from pytest_smalltown.settings import OPTIONS, Settings, SettingsError, resolve


def test_defaults() -> None:
    settings = resolve({}, {}, environ={})
    assert settings.image == "reference" and settings.accel == "auto" and settings.tpm is False
    assert all(source == "default" for source in settings.sources.values())
    assert settings == Settings(), "the dataclass's defaults are the option table's"


def test_precedence() -> None:
    env = {"SMALLTOWN_ACCEL": "kvm", "SMALLTOWN_NODE_MEMORY": "3072"}
    ini = {"accel": "tcg", "node_memory": "1024", "boot_timeout": "90"}
    settings = resolve({"accel": "tcg"}, ini, environ=env)
    assert settings.accel == "tcg" and settings.sources["accel"] == "--smalltown-accel"
    assert settings.node_memory == 3072 and settings.sources["node_memory"] == "$SMALLTOWN_NODE_MEMORY"
    assert settings.boot_timeout == 90.0 and settings.sources["boot_timeout"] == "ini smalltown_boot_timeout"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [("accel", "hvf", "auto, kvm, tcg"), ("node_memory", "lots", "invalid"), ("boot_timeout", "-1", "greater than zero"),
     ("boot_timeout", "nan", "finite"), ("boot_timeout", "inf", "finite"), ("node_memory", "16", "at least 1024"),
     ("tpm", "maybe", "true or false")],
)  # fmt: skip
def test_bad_values_name_the_setting_and_how_to_set_it(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve({}, {}, environ={f"SMALLTOWN_{name.upper()}": value})
    message = str(caught.value)
    assert fragment in message and f"SMALLTOWN_{name.upper()}" in message and repr(value) in message


def test_every_option_has_three_names() -> None:
    for option in OPTIONS:
        assert option.flag.startswith("--smalltown-") and option.env.startswith("SMALLTOWN_")
        assert option.ini.startswith("smalltown_")
