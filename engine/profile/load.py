"""Provides profile loading: YAML (safe), dotted `--set` overrides, family keys merged in, all errors collected.

Every problem is reported at once as one ProfileError whose lines read
`<file>: <key> <what is wrong>, got <value>. <fix>.`; nothing here raises anything else.
Relative paths in a profile are resolved against the current working directory.

This layer knows no family: the caller passes the family's extra keys as a `ProfileExtension`
(`engine.families.recipe` does, after looking the family up).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, create_model

from engine.atomic import atomic_file
from engine.errors import ProfileError
from engine.profile import schema
from engine.profile.bounded_yaml import MAX_PROFILE_BYTES, load_bounded

# Pointcept-style `--options` keys users of the seed's command line type, mapped onto profile keys.
OPTION_ALIASES = {
    "save_path": "output.dir",
    "lora_training.pretrained_path": "model.pretrained",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    "lora.rank": "lora.r",
    "epoch": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
}

@dataclass(frozen=True)
class ProfileExtension:
    """The keys a family adds to the `model`, `data`, `lora` and `previews` sections (pydantic models, extra keys
    forbidden)."""

    model_options: type[BaseModel] | None = None
    data_options: type[BaseModel] | None = None
    lora_options: type[BaseModel] | None = None
    preview_options: type[BaseModel] | None = None


_SECTIONS = {
    "model": schema.ModelSection,
    "lora": schema.LoraSection,
    "data": schema.DataSection,
    "train": schema.TrainSection,
    "output": schema.OutputSection,
    "previews": schema.PreviewsSection,
    "launch": schema.LaunchSection,
    "hardware": schema.HardwareSection,
}


def parse_value(text: str, key: str = "value") -> Any:
    """A `--set` value as YAML would read it, plus floats YAML 1.1 misses (`2e-4`).

    Text that is not valid YAML stays text; a value over the YAML limits (depth, aliases) is a ProfileError
    naming `key`.
    """
    try:
        value = load_bounded(text, f"`--set {key}=...`")
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`["lora.r=8", "train.lr=2e-4"]` -> `[("lora.r", 8), ("train.lr", 0.0002)]` (aliases mapped)."""
    pairs = []
    errors = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"override {item!r}: expected KEY=VALUE, e.g. `lora.r=8`.")
            continue
        pairs.append((OPTION_ALIASES.get(key, key), parse_value(value.strip(), key)))
    if errors:
        raise ProfileError("\n".join(errors))
    return pairs


def apply_overrides(data: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Sets each dotted key in a copy of `data`, creating sections as needed."""
    data = copy.deepcopy(data)
    for key, value in pairs:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


def _read_text(path: Path) -> str:
    """The profile's text, read only when it is a regular file of sensible size."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile not found. Check the path, or list shipped profiles with `ls profiles/`.") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read ({exc.strerror or exc}). Check the path and its permissions.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ProfileError(f"{path}: is a folder, not a profile. Pass a .yaml file.")
    if not stat.S_ISREG(info.st_mode):
        raise ProfileError(
            f"{path}: is not a regular file (a pipe, socket or device), got {stat.filemode(info.st_mode)}. "
            "Save the profile as a .yaml file and pass that."
        )
    if info.st_size > MAX_PROFILE_BYTES:
        raise ProfileError(
            f"{path}: profile is {info.st_size:,} bytes, more than the {MAX_PROFILE_BYTES:,} a profile may have. "
            "Pass the profile YAML itself (a few kilobytes), not a data file."
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
        if len(raw) > MAX_PROFILE_BYTES:  # the file grew since stat
            raise ProfileError(f"{path}: profile is more than {MAX_PROFILE_BYTES:,} bytes. Pass the profile YAML itself.")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot be read as UTF-8 text ({exc}). Save the profile as a UTF-8 YAML file.") from None


def _yaml_message(source: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{source}: invalid YAML{where}: {problem}. Fix the syntax (indentation, colons, quotes)."


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path` (safe, bounded loader: see `engine.profile.bounded_yaml`).

    Raises:
        ProfileError: a missing, unreadable, oversized or non-mapping file, invalid YAML, or a document over
            the depth or alias limits (the message names the key).
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data = load_bounded(text, str(path))
    except yaml.YAMLError as exc:
        raise ProfileError(_yaml_message(str(path), exc)) from None
    if data is None:
        raise ProfileError(f"{path}: the profile is empty. Start from one in `profiles/` (the demos' profiles are `profiles/demo-*.yaml`).")
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping of sections, got a {type(data).__name__}.")
    return data


def _section_class(base: type[BaseModel], extra: type[BaseModel] | None) -> type[BaseModel]:
    if extra is None:
        return base
    fields = {name: (info.annotation, info) for name, info in extra.model_fields.items()}
    return create_model(f"{base.__name__}With{extra.__name__}", __base__=base, **fields)


@functools.cache
def profile_class(extension: ProfileExtension | None) -> type[schema.Profile]:
    """The Profile class with a family's own `model`, `data`, `lora` and `previews` keys merged in (one class per family, so
    profiles of one family compare equal)."""
    if extension is None or extension == ProfileExtension():
        return schema.Profile
    model_cls = _section_class(schema.ModelSection, extension.model_options)
    data_cls = _section_class(schema.DataSection, extension.data_options)
    lora_cls = _section_class(schema.LoraSection, extension.lora_options)
    previews_cls = _section_class(schema.PreviewsSection, extension.preview_options)
    return create_model(
        "FamilyProfile",
        __base__=schema.Profile,
        model=(model_cls, ...),
        data=(data_cls, data_cls()),
        lora=(lora_cls, lora_cls()),
        previews=(previews_cls, previews_cls()),
    )


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at `loc` (the parent of an unknown key)."""
    for part in loc:
        info = cls.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(info, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        models = [a for a in candidates if issubclass(a, BaseModel)]
        if not models:
            return []
        cls = models[0]
    return list(cls.model_fields)


# Names users bring from other tools, suggested when no spelling is close.
_SYNONYMS = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr",
             "num_epochs": "epochs", "gradient_accumulation_steps": "grad_accum", "steps": "max_steps"}


def did_you_mean(key: str, allowed: list[str]) -> str | None:
    """The allowed key the user most likely meant, or None."""
    if _SYNONYMS.get(key) in allowed:
        return _SYNONYMS[key]
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return close[0]
    prefixes = [a for a in allowed if key.startswith(a) or a.startswith(key)]
    return max(prefixes, key=len) if prefixes else None


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def short_repr(value: Any) -> str:
    """A value for a message, cut short: a profile value can be long, and a message must stay one line."""
    return _REPR.repr(value)


def _format_error(source: str, cls: type[BaseModel], err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        close = did_you_mean(str(loc[-1]), allowed)
        parent = ".".join(str(p) for p in loc[:-1])
        if close:
            suggestion = f"Did you mean `{parent + '.' if parent else ''}{close}`?"
        else:
            suggestion = f"Valid keys here: {', '.join(f'`{k}`' for k in allowed)}."
        return f"{source}: unknown key `{key}`. {suggestion}"
    if kind == "missing":
        return f"{source}: `{key}` is required. Add it (see profiles/ for examples)."
    msg = err["msg"]
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
        return f"{source}: {msg}." if loc == () else f"{source}: `{key}` {msg}."
    hint = {
        "greater_than_equal": "Use a larger value",
        "greater_than": "Use a larger value",
        "less_than": "Use a smaller value",
        "less_than_equal": "Use a smaller value",
        "literal_error": "Use one of the listed values",
        "int_parsing": "Use a whole number",
        "int_parsing_size": "Use a smaller whole number",
        "int_type": "Use a whole number",
        "int_from_float": "Use a whole number",
        "float_parsing": "Use a number",
        "float_type": "Use a number",
        "bool_parsing": "Use true or false",
        "bool_type": "Use true or false",
        "list_type": "Use a YAML list, e.g. [3, 4]",
        "model_type": "Use a mapping of keys",
        "dict_type": "Use a mapping of keys",
        "string_type": "Use a text value",
        "path_type": "Use a file or folder path",
    }.get(kind, "Fix the value")
    return f"{source}: `{key}` {msg[0].lower() + msg[1:]}, got {short_repr(value)}. {hint}."


def validate_profile(
    data: dict[str, Any], source: str = "<profile>", extension: ProfileExtension | None = None
) -> schema.Profile:
    """A validated, frozen Profile from plain data; ProfileError listing every problem otherwise.

    Args:
        data: the profile as plain data (YAML mapping, overrides applied).
        source: the file name errors start with.
        extension: the family's extra keys; None validates the family-independent keys only.
    """
    cls = profile_class(extension)
    try:
        profile = cls.model_validate(data)
    except ValidationError as exc:
        raise ProfileError("\n".join(_format_error(source, cls, e) for e in exc.errors())) from None
    errors = _check_cross_keys(profile, source)
    if errors:
        raise ProfileError("\n".join(errors))
    return profile


def _check_cross_keys(profile: schema.Profile, source: str) -> list[str]:
    errors = []
    if profile.data.root is not None and not profile.data.root.is_dir():
        errors.append(
            f"{source}: `data.root` folder does not exist, got {str(profile.data.root)!r}. "
            "Point it at your dataset folder, or remove the key to use the built-in synthetic data."
        )
    if profile.model.pretrained is not None and not profile.model.pretrained.exists():
        errors.append(
            f"{source}: `model.pretrained` not found, got {str(profile.model.pretrained)!r}. "
            "Point it at the base checkpoint file or folder, or remove the key for a random base."
        )
    if profile.train.epochs is None and profile.train.max_steps is None:
        errors.append(f"{source}: set `train.epochs` or `train.max_steps`; both are empty.")
    launch = profile.launch
    if launch.machine_rank >= launch.num_machines:
        errors.append(
            f"{source}: `launch.machine_rank` must be below `launch.num_machines` ({launch.num_machines}), "
            f"got {launch.machine_rank}. Number machines from 0."
        )
    if launch.num_processes < launch.num_machines:
        errors.append(
            f"{source}: `launch.num_processes` counts processes on all machines and must be at least "
            f"`launch.num_machines` ({launch.num_machines}), got {launch.num_processes}."
        )
    return errors


def dump_profile(profile: schema.Profile) -> str:
    """The profile as YAML text, sections in schema order."""
    return yaml.safe_dump(profile.to_yaml_dict(), sort_keys=False, default_flow_style=None)


def save_profile(profile: schema.Profile, path: Path, header: str | None = None) -> None:
    """Writes the profile atomically, with an optional comment header."""
    save_profile_data(profile.to_yaml_dict(), path, header)


def save_profile_data(data: dict[str, Any], path: Path, header: str | None = None) -> None:
    """Writes profile data as YAML atomically, with an optional comment header."""
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
