"""Provides the wizard's modal dialogs."""

from wizard.dialogs.confirm import ConfirmDialog
from wizard.dialogs.scene import SceneDialog

__all__ = ["ConfirmDialog", "SceneDialog"]
