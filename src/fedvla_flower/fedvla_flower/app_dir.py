"""Where the app's pyproject.toml is: the folder `flwr run` packages into a FAB.

In a source checkout (pip install -e, colcon --symlink-install) it is the package's own root,
src/fedvla_flower/. A plain colcon or pip install copies it to <prefix>/share/fedvla_flower/ (setup.py's
data_files); the FAB then holds only the metadata, and the installed package provides the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

PYPROJECT = "pyproject.toml"


def app_dir() -> Path:
    """The folder holding the Flower app's pyproject.toml (FileNotFoundError when neither place has it)."""
    for candidate in (Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "fedvla_flower"):
        if (candidate / PYPROJECT).is_file():
            return candidate
    raise FileNotFoundError(f"fedvla_flower: no {PYPROJECT} next to the package or in {sys.prefix}/share/fedvla_flower")
