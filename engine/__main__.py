"""Provides `python -m engine` (and `accelerate launch -m engine train PROFILE`)."""

import sys

from engine.cli import main

sys.exit(main())
