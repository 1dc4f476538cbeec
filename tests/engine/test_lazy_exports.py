"""A package's public names import their submodule on first use, not when the package is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

import engine.memory


def test_a_family_package_imports_its_model_only_when_a_name_is_read():
    code = (
        "import sys, engine.families.midi as m\n"
        "assert 'engine.families.midi.task' not in sys.modules, 'imported eagerly'\n"
        "assert m.FlowTask.__module__ == 'engine.families.midi.task'\n"
        "assert 'engine.families.midi.task' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_unknown_name_is_an_attribute_error_naming_the_package():
    with pytest.raises(AttributeError, match=r"module 'engine.memory' has no attribute 'plan_everything'"):
        engine.memory.plan_everything  # noqa: B018
    assert engine.memory.recommend_tier.__module__ == "engine.memory.tiers"
