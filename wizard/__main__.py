"""Provides `python -m wizard`: the same as `lora3d wizard`."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["wizard", *sys.argv[1:]]))
