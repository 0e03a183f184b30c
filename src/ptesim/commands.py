"""Model commands: ``presets``, ``explain``, ``trace``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("presets", help="list kernel presets and their flags")
    p.set_defaults(handler=lambda a: print("(presets arrive with the kernel model)"))
