"""Provides profiles: the YAML schema, and loading with overrides and a family's extra keys."""

from engine.profile.load import (
    ProfileExtension,
    apply_overrides,
    dump_profile,
    parse_overrides,
    read_yaml,
    save_profile,
    save_profile_data,
    validate_profile,
)
from engine.profile.schema import SCHEMA_VERSION, Profile

__all__ = [
    "SCHEMA_VERSION",
    "Profile",
    "ProfileExtension",
    "apply_overrides",
    "dump_profile",
    "parse_overrides",
    "read_yaml",
    "save_profile",
    "save_profile_data",
    "validate_profile",
]
