"""Provides profile -> Recipe: read the YAML, apply `--set` overrides, validate with the family's keys, resolve.

This is the one way a profile becomes something that runs: `load_recipe(path, overrides)` for a file,
`resolve_recipe(data)` for plain data (the wizard, the demos, tests). Every problem is reported at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import ProfileError
from engine.families.base import Recipe
from engine.families.registry import family_names, get_family
from engine.profile import apply_overrides, parse_overrides, read_yaml, validate_profile


def resolve_recipe(data: dict[str, Any], source: str = "<profile>", cli_keys: Iterable[str] = ()) -> Recipe:
    """The Recipe of a profile given as plain data.

    Args:
        data: the profile mapping (overrides already applied).
        source: the file name messages start with.
        cli_keys: dotted keys that came from the command line (the preset rule needs them).

    Raises:
        ProfileError: every problem, one per line.
    """
    model = data.get("model")
    name = model.get("family") if isinstance(model, dict) else None
    names = family_names()
    if name is None or name not in names:
        errors = []
        if name is not None:
            close = difflib.get_close_matches(str(name), names, n=1)
            fix = f"Did you mean `{close[0]}`?" if close else f"Use one of {', '.join(f'`{n}`' for n in names)}."
            errors.append(f"{source}: `model.family` is not a known family, got {name!r}. {fix}")
        try:
            validate_profile(data, source)
        except ProfileError as exc:
            errors.extend(str(exc).splitlines())
        if not errors:
            errors.append(f"{source}: `model.family` is required. Use one of {', '.join(f'`{n}`' for n in names)}.")
        raise ProfileError("\n".join(errors))
    family = get_family(name)
    profile = validate_profile(data, source, family.extension())
    return family.resolve(profile, cli_keys, source)


def load_recipe(path: str | Path, overrides: Iterable[str] | None = ()) -> Recipe:
    """Reads a profile file, applies `--set` items (`KEY=VALUE`) and resolves it."""
    path = Path(path)
    data = read_yaml(path)
    pairs = parse_overrides(list(overrides or ()))
    if pairs:
        data = apply_overrides(data, pairs)
    return resolve_recipe(data, str(path), [key for key, _ in pairs])
