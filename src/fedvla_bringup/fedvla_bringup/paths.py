"""Where a package's share files (config/, launch/) live, on a real ROS 2 install and here.

On a colcon/ament install, ament_index knows each package's share directory. Here the packages
are installed editable into .venv, and the bootstrap links share/<pkg>/config to the source tree;
when AMENT_PREFIX_PATH is not set we fall back to the package's source folder.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def share_dir(package: str) -> Path:
    """The package's share directory (ament index first, then the source tree)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            return Path(get_package_share_directory(package))
        except (PackageNotFoundError, KeyError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    venv_share = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[3] / ".venv")) / "share" / package
    if (venv_share / "package.xml").exists():
        return venv_share
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(spec.origin).resolve().parents[1]


def config_file(package: str, name: str) -> Path:
    """Path of config/<name> in the package's share directory; raises if it does not exist."""
    path = share_dir(package) / "config" / name
    if not path.exists():
        raise FileNotFoundError(f"{package} has no config/{name} (looked in {path.parent})")
    return path
