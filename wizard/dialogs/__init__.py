"""Provides the wizard's modal dialogs."""

from wizard.dialogs.confirm import ConfirmDialog

__all__ = ["ConfirmDialog"]
