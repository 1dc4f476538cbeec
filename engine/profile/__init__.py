"""Provides profiles: the YAML schema, loading with overrides, and the hardware fingerprint."""

from engine.profile.load import dump_profile, load_profile, parse_overrides, save_profile, validate_profile
from engine.profile.schema import SCHEMA_VERSION, Profile

__all__ = [
    "SCHEMA_VERSION",
    "Profile",
    "dump_profile",
    "load_profile",
    "parse_overrides",
    "save_profile",
    "validate_profile",
]
