"""Provides bounded YAML reading for profiles: size, nesting depth and alias expansion checked before anything is built.

A profile is a few kilobytes of plain keys. YAML can say far more than it writes: an alias repeats a whole
anchored value, so nine lines of aliases describe a billion values (an "alias bomb"), and 20,000 nested
brackets exhaust Python's recursion. So the document's event stream is checked first, which costs no
more than reading the text: its nesting depth, keys that are lists or mappings (no Python dict can hold
them), aliases to their own enclosing value, and the size it would have with every alias expanded. Only
a document within the limits is constructed, and every refusal names the key and the line.

YAML merge keys (`<<: *defaults`) are supported, as PyYAML's safe loader defines them; a key given twice in
one mapping is refused (PyYAML would silently keep the last).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import ProfileError

MAX_PROFILE_BYTES = 256 * 1024
"""Largest profile file read (real profiles are a few kilobytes)."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings (a profile needs four or five levels)."""
MIN_EXPANDED_SIZE = 10_000
"""Aliases may grow a profile to twice its written size, or to this many characters if that is more."""
MAX_VALUES = 20_000
"""Most values (scalars, lists, mappings) a profile may write (a shipped one has about 100)."""
MAX_INT_DIGITS = 100
"""Longest integer literal read (no profile key needs more; Python refuses beyond 4,300 digits anyway)."""

# libyaml parses a large flow list ~30x faster than the pure-Python parser; both give the same events.
_Parser = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


@dataclass
class _Frame:
    """One open list or mapping of the event stream."""

    is_map: bool
    anchor: str | None
    line: int
    size: int = 1
    index: int = 0
    expect_key: bool = True
    key: str | None = None
    keys: list[str] = field(default_factory=list)

    def label(self) -> str | None:
        if self.is_map:
            return None if self.expect_key else self.key
        return f"[{self.index}]"


def _path(stack: list[_Frame]) -> str:
    parts = [p for p in (f.label() for f in stack) if p is not None]
    return ".".join(parts).replace(".[", "[")


def _where(stack: list[_Frame]) -> str:
    path = _path(stack)
    return f"`{path}`" if path else "the top level"


def _under(stack: list[_Frame]) -> str:
    path = _path(stack)
    return f"under `{path}`" if path else "at the top level"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_events(text: str, source: str) -> None:
    """Refuses a document that nests too deep, uses a list or mapping as a key, or grows too large through aliases.

    Args:
        text: the YAML text.
        source: what messages start with (the file name, or the `--set` item).

    Raises:
        ProfileError: naming the key and line; invalid YAML syntax is left to the loader's own message.
    """
    anchors: dict[str, tuple[int, bool]] = {}  # name -> (expanded size, is a scalar)
    open_anchors: set[str] = set()
    stack: list[_Frame] = []
    written = expanded = values = 0
    biggest: tuple[int, str, str, int] | None = None  # (size, alias, key path, line) of the largest alias
    try:
        events = yaml.parse(text, Loader=_Parser)
        for event in events:
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.AliasEvent)):
                values += 1
                if values > MAX_VALUES:
                    raise ProfileError(
                        f"{source}: the profile holds more than {MAX_VALUES:,} values ({_where(stack)} at line "
                        f"{line}). A profile needs a few hundred; keep data (class lists, tables) in files it names."
                    )
            parent = stack[-1] if stack else None
            at_key = parent is not None and parent.is_map and parent.expect_key
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if at_key:
                    kind = "mapping" if isinstance(event, yaml.MappingStartEvent) else "list"
                    raise ProfileError(
                        f"{source}: a key {_under(stack)} at line {line} is a {kind}, got a complex key "
                        f"(`? ...`). Keys must be plain names."
                    )
                if len(stack) >= MAX_DEPTH:
                    raise ProfileError(
                        f"{source}: {_where(stack)} nests deeper than {MAX_DEPTH} levels at line {line}. A profile "
                        "needs a few levels of sections and keys; remove the nesting."
                    )
                stack.append(_Frame(isinstance(event, yaml.MappingStartEvent), event.anchor, line))
                if event.anchor:
                    open_anchors.add(event.anchor)
                written += 1
                expanded += 1
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                if frame.anchor:
                    open_anchors.discard(frame.anchor)
                    anchors[frame.anchor] = (frame.size, False)
                _add(stack, frame.size, None)
                continue
            if isinstance(event, yaml.ScalarEvent):
                value = event.value
                if event.tag is None and event.implicit[0] and len(value) > MAX_INT_DIGITS and value.lstrip("+-").isdigit():
                    raise ProfileError(
                        f"{source}: {_where(stack)} at line {line} is an integer of {len(value)} digits. "
                        "Use a number of sensible size."
                    )
                size = 1 + len(value)
                if event.anchor:
                    anchors[event.anchor] = (size, True)
                written += size
                expanded += size
                _add(stack, size, value)
                continue
            if isinstance(event, yaml.AliasEvent):
                name = event.anchor
                if name in open_anchors:
                    raise ProfileError(
                        f"{source}: the alias `*{name}` at line {line} ({_where(stack)}) refers to a value "
                        "that contains it (a recursive structure). Write the value out instead."
                    )
                if name not in anchors:
                    continue  # the loader reports an undefined alias with its own message
                size, is_scalar = anchors[name]
                if at_key and not is_scalar:
                    raise ProfileError(
                        f"{source}: a key {_under(stack)} at line {line} is the alias `*{name}` of a list or "
                        "mapping. Keys must be plain names."
                    )
                written += 1
                expanded += size
                where = _path(stack) or "(top level)"
                if biggest is None or size > biggest[0]:
                    biggest = (size, name, where, line)
                _add(stack, size, f"*{name}")
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml looks ahead and stops at its own limit (1,000) first
            mark = getattr(exc, "problem_mark", None)
            raise ProfileError(
                f"{source}: {_where(stack)} nests deeper than {MAX_DEPTH} levels"
                f"{f' at line {mark.line + 1}' if mark else ''}. A profile needs a few levels of sections and "
                "keys; remove the nesting."
            ) from None
        return  # syntax errors: the loader reports them with line and column
    limit = max(MIN_EXPANDED_SIZE, 2 * written)
    if expanded > limit and biggest is not None:
        size, name, where, line = biggest
        raise ProfileError(
            f"{source}: YAML aliases would grow the profile from {written:,} to {expanded:,} characters; the alias "
            f"`*{name}` at line {line} (key `{where}`) alone repeats {size:,}. Aliases may at most double a profile "
            f"(or reach {MIN_EXPANDED_SIZE:,}). Write the values out, or use fewer aliases."
        )


def _add(stack: list[_Frame], size: int, key: str | None) -> None:
    """Counts a finished value into its parent, and moves the parent on to its next key or item."""
    if not stack:
        return
    frame = stack[-1]
    frame.size += size
    if frame.is_map:
        if frame.expect_key:
            frame.key = _short(key) if key is not None else "?"
            frame.expect_key = False
        else:
            frame.expect_key = True
    else:
        frame.index += 1


class _UniqueKeys:
    """Loader mixin that refuses a key given twice in one mapping, and a key no dict can hold.

    Merge keys (`<<`) work as in PyYAML's safe loader; keys merged in may be overridden by the mapping's own.
    """

    _checked: set[int]

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Runs before a mapping is built (and again when it is merged into another): check the mapping's own
        # keys once, before the merged ones join them.
        if not hasattr(self, "_checked"):
            self._checked = set()
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=False)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a key is a {type(key).__name__}; keys must be plain names", key_node.start_mark
                    ) from None
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_short(str(key))!r} appears twice (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1})", key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        super().flatten_mapping(node)  # type: ignore[misc]


class ProfileLoader(_UniqueKeys, yaml.SafeLoader):
    """The pure-Python safe loader with the profile checks; its syntax messages name the offending character."""


class _FastProfileLoader(_UniqueKeys, _Parser):  # type: ignore[misc,valid-type]
    """The same on libyaml when available."""


def load_bounded(text: str, source: str) -> Any:
    """The YAML document in `text`, after `check_events`; yaml.YAMLError for invalid syntax.

    Raises:
        ProfileError: a limit is exceeded (the message names the key and line).
        yaml.YAMLError: the text is not valid YAML (the caller words the message).
    """
    check_events(text, source)
    try:
        return yaml.load(text, Loader=_FastProfileLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        if _FastProfileLoader.__mro__[2] is yaml.SafeLoader:
            raise
        # libyaml words some syntax errors without the character ("found character that cannot start any
        # token"): read again with the pure-Python parser, which names it (a tab, say), for the message.
        return yaml.load(text, Loader=ProfileLoader)  # noqa: S506 - a SafeLoader subclass
