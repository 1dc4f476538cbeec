"""Profiles of both families for the memory planner's tests (resolved recipes, nothing built)."""

from __future__ import annotations

from typing import Any

from engine.families.recipe import resolve_recipe


def scenesplat_profile(points: int = 50_000, **sections: Any) -> Any:
    data: dict[str, Any] = {
        "schema_version": 1,
        "model": {"family": "scenesplat", "backbone": "scenesplat", "task": "semseg"},
        "data": {"synthetic_points": points, "point_budget": points},
        "train": {"batch_size": 2, "grad_accum": 4, "device": "cuda"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return resolve_recipe(data)


def midi_profile(num_tokens: int = 2048, instances: int = 4, **sections: Any) -> Any:
    data: dict[str, Any] = {
        "schema_version": 1,
        "model": {"family": "midi", "num_tokens": num_tokens, "num_instances_per_batch": instances},
        "train": {"batch_size": 2, "grad_accum": 4, "device": "cuda"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return resolve_recipe(data)
