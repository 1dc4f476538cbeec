"""Provides the SceneSplat family plugin: PTv3 over 3D Gaussian splats (semantic segmentation, language features).

The public names are loaded on first use (PEP 562), so importing a light submodule such as `data`
does not pull in the model and PEFT.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SceneSplatFamily": "family",
    "SceneSplatModelOptions": "family",
    "SceneSplatDataOptions": "family",
    "SyntheticRoomDataset": "family",
    "BACKBONES": "family",
    "DEMO_TINY_CONFIG": "family",
    "load_adapter": "family",
    "load_base_weights": "family",
    "language_view": "family",
    "model_inputs": "family",
    "semseg_loss": "task",
    "lang_loss": "task",
    "aggregated_contrastive_loss": "task",
    "confusion_matrix": "task",
    "segmentation_metrics": "task",
    "zero_shot_predict": "task",
    "run_demo": "demo",
    "ensure_demo_base": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
