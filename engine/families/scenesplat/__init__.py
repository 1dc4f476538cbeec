"""Provides the SceneSplat family plugin: PTv3 over 3D Gaussian splats (semantic segmentation, language features).

Submodules are imported lazily by their users; the family class lives in `family.py`.
"""
