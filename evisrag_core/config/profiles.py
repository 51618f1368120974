"""Profiles: named YAML overlays over one section of the params file (`sft.profile: paper`, `rsgrpo.profile: paper`,
`predict.profile: reference`).

A profile lives in configs/profiles/<name>.yaml, one mapping per section it sets. `profile: default` applies none.

The rule, one for every profiled section: **a key you set wins over the profile.** A key counts as set by you when
its value in the params file differs from the code default. params.yaml lists every key with its default value, so
the presence of a key cannot mean a choice (else a profile would never apply): `dvc exp run -S rsgrpo.profile=paper`
on the repository's params.yaml gets every value of the profile, and `rsgrpo.learning_rate: 2.0e-6` beside
`profile: paper` trains at 2e-6. A key written with its default value (e.g. `rsgrpo.learning_rate: 5.0e-5`) is not
a choice and takes the profile's value. `evisrag <stage> --dry-run` prints every effective value with its source:
`params file` (your value), `profile <name>`, or `default` (the code default, whether or not the file repeats it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator

from evisrag_core.config.base import Section

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "profiles"
NO_PROFILE = "default"
SOURCE_FILE, SOURCE_DEFAULT = "params file", "default"
_UNREADABLE = object()  # a value that does not even coerce: never equal to a default


def available_profiles() -> list[str]:
    return [NO_PROFILE, *sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))]


def profile_overlay(name: str, section: str) -> Mapping[str, Any]:
    """The keys profile `name` sets in `section`, as written in configs/profiles/<name>.yaml."""
    path = PROFILE_DIR / f"{check_profile_name(name, section)}.yaml"
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    overlay = raw.get(section) if isinstance(raw, dict) else None
    if not isinstance(overlay, dict):
        raise ValueError(f"{path} has no `{section}:` mapping, so {section}.profile {name!r} would set nothing")
    return MappingProxyType(overlay)


def checked_overlay(model: type[BaseModel], name: str, section: str) -> Mapping[str, Any]:
    """`profile_overlay`, refusing keys the section does not have (a profile cannot choose another profile)."""
    overlay = profile_overlay(name, section)
    unknown = sorted(set(overlay) - set(model.model_fields) | ({"profile"} & set(overlay)))
    if unknown:
        raise ValueError(
            f"profile {name!r} ({PROFILE_DIR / name}.yaml) sets unknown {section} key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(set(model.model_fields) - {'profile'}))}"
        )
    return overlay


@functools.cache
def _adapter(model: type[BaseModel], key: str) -> TypeAdapter:
    return TypeAdapter(model.model_fields[key].annotation)


def _coerced(model: type[BaseModel], key: str, value: object) -> object:
    """`value` as the field will hold it (YAML's 5e-5 is a string, 1 for a float is 1.0), for comparing."""
    try:
        return _adapter(model, key).validate_python(value)
    except ValidationError:
        return _UNREADABLE  # the section's own validation reports it


def chosen_keys(model: type[BaseModel], values: Mapping[str, object]) -> set[str]:
    """The keys of `values` whose value differs from the code default: the user's explicit choices."""
    fields = model.model_fields
    return {
        key
        for key, value in values.items()
        if key in fields and _coerced(model, key, value) != fields[key].get_default(call_default_factory=True)
    }


def _profile_name(values: Mapping[str, object]) -> str | None:
    """The profile to apply, if any. A non-string or unknown name is left to the `profile` field's own check."""
    name = values.get("profile", NO_PROFILE)
    return name if isinstance(name, str) and name in available_profiles()[1:] else None


def check_profile_name(name: str, section: str) -> str:
    """The `profile` field's check: a name with a file in configs/profiles/, or `default`."""
    if name not in available_profiles():
        raise ValueError(
            f"{section}.profile {name!r} does not exist; available: {', '.join(available_profiles())} "
            f"(a profile is a file {PROFILE_DIR}/<name>.yaml)"
        )
    return name


def apply_profile(model: type[BaseModel], values: dict[str, Any], section: str) -> dict[str, Any]:
    """`values` with the profile's keys filled in, except the keys the user chose (see the module docstring)."""
    name = _profile_name(values)
    if name is None:
        return values
    chosen = chosen_keys(model, values)
    overlay = checked_overlay(model, name, section)
    return {**values, **{key: value for key, value in overlay.items() if key not in chosen}}


class ProfiledSection(Section):
    """A section whose `profile` key names an overlay; the rule (your keys win) is this module's docstring."""

    section_name: ClassVar[str]
    profile: str = Field(NO_PROFILE, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: Any) -> Any:
        return apply_profile(cls, values, cls.section_name) if isinstance(values, dict) else values

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        return check_profile_name(name, cls.section_name)


def value_sources(model: type[BaseModel], values: Mapping[str, object], section: str) -> dict[str, str]:
    """Where each key's effective value comes from: `params file`, `profile <name>` or `default`."""
    name = _profile_name(values)
    overlay = checked_overlay(model, name, section) if name else {}
    chosen = chosen_keys(model, values)
    return {
        key: SOURCE_FILE if key in chosen else f"profile {name}" if key in overlay else SOURCE_DEFAULT
        for key in model.model_fields
    }


def _shown(value: object) -> str:
    """A value as YAML spells it, so the table reads like the params file."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000).strip().removesuffix("\n...").strip()


def effective_table(section: str, cfg: BaseModel, sources: Mapping[str, str], params_file: str) -> str:
    """One row per key of the validated section `cfg` read from `params_file`: key, effective value, source."""
    rows = list(_rows(cfg, sources))
    key_width = max(len("key"), *(len(key) for key, _, _ in rows))
    value_width = max(len("value"), *(len(value) for _, value, _ in rows))
    lines = [
        f"{section}: every hyper-parameter in effect, read from {params_file}",
        f"  {'key':<{key_width}}  {'value':<{value_width}}  source",
    ]
    lines += [f"  {key:<{key_width}}  {value:<{value_width}}  {source}" for key, value, source in rows]
    return "\n".join(lines)


def _rows(cfg: BaseModel, sources: Mapping[str, str], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted key, shown value, source) of every leaf of `cfg`. A nested section (data.embedded, model.tiny) has no
    profile, so each of its keys comes from the params file exactly when it differs from its default."""
    for key in type(cfg).model_fields:
        value = getattr(cfg, key)
        if isinstance(value, BaseModel):
            yield from _rows(value, _nested_sources(value), f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _shown(value), sources[key]


def _nested_sources(section: BaseModel) -> dict[str, str]:
    """`params file` for each key of a nested section that differs from its default, else `default` (no profile
    reaches a nested section)."""
    return value_sources(type(section), dict(section), type(section).__name__)
