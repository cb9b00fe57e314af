"""Every setting the code reads is documented in the README's configuration table."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelops.settings import ControllerSettings, ServerSettings, StackSettings, TrainerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def env_names(cls: type) -> list[str]:
    names = []
    for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
        alias = field.validation_alias
        names.append(alias.choices[0] if alias is not None else f"MODELOPS_{name.upper()}")
    return names


@pytest.mark.parametrize("cls", [ServerSettings, TrainerSettings, StackSettings, ControllerSettings])
def test_every_environment_variable_is_in_the_readme(cls: type) -> None:
    missing = [name for name in env_names(cls) if f"| `{name}` |" not in README]
    assert missing == []


def test_every_field_has_a_description() -> None:
    for cls in (ServerSettings, TrainerSettings, StackSettings, ControllerSettings):
        assert all(f.description for f in cls.model_fields.values()), cls
