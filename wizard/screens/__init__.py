"""Provides the wizard's screens, in the order the user meets them."""

from wizard.screens.dashboard import DashboardScreen
from wizard.screens.data import DataScreen
from wizard.screens.hardware import HardwareScreen
from wizard.screens.model import ModelScreen
from wizard.screens.plan import PlanScreen
from wizard.screens.review import ReviewScreen

__all__ = ["DashboardScreen", "DataScreen", "HardwareScreen", "ModelScreen", "PlanScreen", "ReviewScreen"]
