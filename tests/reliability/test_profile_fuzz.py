"""Profile fuzzing: random YAML and random mutations of real profiles load or raise ProfileError, nothing else."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ProfileError
from engine.families.recipe import load_recipe
from tests.conftest import REPO, toy_profile_dict

SHIPPED = sorted((REPO / "profiles").rglob("*.yaml"))
_WORK = Path(tempfile.mkdtemp(prefix="lora3d-fuzz-"))
BASES: list[dict[str, Any]] = [yaml.safe_load(p.read_text()) for p in SHIPPED] + [toy_profile_dict(_WORK)]
KEYS = sorted({k for base in BASES for section in base.values() if isinstance(section, dict) for k in section}
              | {"model", "lora", "data", "train", "output", "launch", "hardware", "schema_version", "name"})

QUICK = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
BRIEF = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(KEYS), st.sampled_from(["auto", "cpu", "cuda", "fp16", "bf16", "no"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), inner, max_size=4),
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), values, max_size=8)


def _check_text(text: str | bytes, overrides: list[str] | None = None) -> None:
    """The loader accepts the document or raises ProfileError; any other exception fails the test."""
    path = _WORK / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        profile = load_recipe(path, overrides).profile
    except ProfileError as exc:
        message = str(exc)
        assert message.strip(), "a ProfileError without a message"
        assert "Traceback" not in message
        return
    assert profile.schema_version == 1


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def mutated_profiles(draw) -> dict[str, Any]:
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if not path:  # the root: add a stray section
            data[draw(st.text(max_size=8))] = draw(values)
        elif action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent.get(path[-1]), dict):
            parent[path[-1]][draw(st.sampled_from(KEYS))] = draw(values)
        elif action == "rename":
            parent[draw(st.sampled_from(KEYS))] = parent.pop(path[-1])
    return data


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError):  # e.g. surrogates hypothesis invented
        return "{}"


def test_fuzz_covers_the_shipped_profiles():
    assert len(SHIPPED) >= 3
    for path in SHIPPED:  # they load as they are (relative paths from the repo root)
        raw = yaml.safe_load(path.read_text())
        assert isinstance(raw, dict) and raw.get("schema_version") == 1, path


@QUICK
@given(documents)
def test_random_yaml_documents(doc):
    _check_text(_dump(doc))


@QUICK
@given(mutated_profiles())
def test_mutated_shipped_profiles(data):
    _check_text(_dump(data))


@BRIEF
@given(st.sampled_from(SHIPPED), st.data())
def test_text_mutations_of_shipped_profiles(path, data):
    text = path.read_text()
    kind = data.draw(st.sampled_from(["truncate", "insert", "delete", "tab"]))
    pos = data.draw(st.integers(0, len(text)))
    if kind == "truncate":
        text = text[:pos]
    elif kind == "insert":
        text = text[:pos] + data.draw(st.text(min_size=1, max_size=5)) + text[pos:]
    elif kind == "delete":
        text = text[:pos] + text[pos + data.draw(st.integers(1, 20)):]
    else:
        text = text[:pos] + "\t" + text[pos:]
    _check_text(text)


@BRIEF
@given(st.binary(max_size=200))
def test_binary_garbage(blob):
    _check_text(blob)


@BRIEF
@given(st.lists(st.text(max_size=25), max_size=4))
def test_random_overrides(items):
    _check_text(_dump(toy_profile_dict(_WORK)), items)


@BRIEF
@given(st.sampled_from(["train.lr", "lora.r", "train.max_steps", "train.batch_size", "lora.alpha",
                        "train.loss_spike_factor", "lora.dropout", "train.grad_accum"]),
       st.one_of(st.integers(-(2**80), 2**80), st.floats(), st.sampled_from(["1e400", "-1e400", ".nan", ".inf",
                                                                              "~", "[]", "{}", "0x10", "1_000"])))
def test_extreme_numbers(key, value):
    text = str(value) if isinstance(value, str) else repr(value) if not (isinstance(value, float) and
                                                                          math.isnan(value)) else ".nan"
    _check_text(_dump(toy_profile_dict(_WORK)), [f"{key}={text}"])


@pytest.mark.slow
@SLOW
@given(mutated_profiles())
def test_mutated_shipped_profiles_long(data):
    _check_text(_dump(data))


@pytest.mark.slow
@SLOW
@given(documents)
def test_random_yaml_documents_long(doc):
    _check_text(_dump(doc))
