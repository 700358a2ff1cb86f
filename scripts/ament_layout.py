"""Give every ament_python package in src/ the install layout that `ros2 launch` and `ros2 run` expect.

    .venv/bin/python scripts/ament_layout.py                  # into this interpreter's prefix (.venv)
    .venv/bin/python scripts/ament_layout.py --prefix /tmp/p  # elsewhere (tests)

scripts/bootstrap.sh runs it after `pip install -e` of the packages. Why it exists: an editable pip
install is not a colcon install, and ROS 2's tools look for three things pip does not make:
  * share/<pkg>/launch/*.py and share/<pkg>/config/*.yaml (setup.py's data_files). ros2launch finds
    a launch file by walking share/<pkg> with os.walk, which does not enter a symlinked folder, so
    the folders are real directories here and each file in them is a link to the source tree (edits
    take effect at once, like `colcon build --symlink-install`);
  * share/<pkg>/package.xml and the ament index marker share/ament_index/resource_index/packages/<pkg>;
  * lib/<pkg>/<exe> for every console script: `ros2 run` and launch_ros's Node(package=, executable=)
    look there (setup.cfg's install_scripts=$base/lib/<pkg>, which colcon honours and pip ignores;
    pip writes the scripts to bin/). Each is a two-line sh wrapper that execs ../../bin/<exe>, so the
    process keeps its pid and gets the signals `ros2 launch` sends.
Idempotent: a re-run changes nothing when nothing changed (links and wrappers are replaced
atomically, only when they differ); links and wrappers of files that are gone are removed. Files
this script did not make are never touched.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: share/<pkg>/<folder> gets the files of src/<pkg>/<folder> that match, as setup.py's data_files install them.
SHARE_FOLDERS = {"launch": "*.py", "config": "*.yaml"}
#: Second line of every wrapper; marks the files in lib/<pkg>/ that this script owns.
WRAPPER_MARK = "# made by scripts/ament_layout.py:"


def wrapper_text(package: str, exe: str) -> str:
    return (f"#!/bin/sh\n{WRAPPER_MARK} `ros2 run {package} {exe}` and launch_ros look in lib/{package}/; "
            f"pip put the script in bin/\nexec \"$(dirname \"$0\")/../../bin/{exe}\" \"$@\"\n")


def ament_python_packages(src: Path) -> list[Path]:
    """Package folders under src/ with a setup.py and a package.xml (fedvla_msgs is ament_cmake: not here)."""
    return sorted(p.parent for p in src.glob("*/setup.py") if (p.parent / "package.xml").exists())


def console_scripts(package: str) -> list[str]:
    """Names of the package's console scripts, from its installed metadata ([] when not installed)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return []
    return sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")


def _link(target: Path, link: Path) -> bool:
    """Make `link` a symlink to `target` (atomically, only when it differs); True when it changed."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return False
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    return True


def _write_executable(path: Path, text: str) -> bool:
    if path.is_file() and not path.is_symlink() and path.read_text() == text and os.access(path, os.X_OK):
        return False
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return True


def _real_dir(path: Path) -> None:
    """`path` as a real directory; a symlink there (the old bootstrap linked whole folders) is removed first."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def layout_package(pkgdir: Path, prefix: Path, log=lambda line: print(line, file=sys.stderr)) -> list[str]:
    """Lay out one package under `prefix`; returns what changed (one line each)."""
    package = pkgdir.name
    changes: list[str] = []
    share = prefix / "share" / package
    _real_dir(share)
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    if not (index / package).exists():
        (index / package).touch()
        changes.append(f"index marker {package}")
    if _link(pkgdir / "package.xml", share / "package.xml"):
        changes.append(f"share/{package}/package.xml")
    for folder, pattern in SHARE_FOLDERS.items():
        wanted = {f.name: f for f in sorted((pkgdir / folder).glob(pattern)) if f.is_file()}
        dest = share / folder
        if not wanted and not dest.is_symlink() and not dest.exists():
            continue
        _real_dir(dest)
        for name, source in wanted.items():
            if _link(source, dest / name):
                changes.append(f"share/{package}/{folder}/{name}")
        for entry in dest.iterdir():  # stale: our links to files that are gone (or no longer match)
            if entry.is_symlink() and entry.name not in wanted:
                entry.unlink()
                changes.append(f"removed share/{package}/{folder}/{entry.name}")
        if not wanted and not any(dest.iterdir()):
            dest.rmdir()
    scripts = console_scripts(package)
    libexec = prefix / "lib" / package
    if scripts:
        libexec.mkdir(parents=True, exist_ok=True)
    for exe in scripts:
        if not (prefix / "bin" / exe).exists():
            log(f"warning: {prefix / 'bin' / exe} does not exist (is {package} installed into {prefix}?)")
        if _write_executable(libexec / exe, wrapper_text(package, exe)):
            changes.append(f"lib/{package}/{exe}")
    if libexec.is_dir():
        for entry in libexec.iterdir():  # stale: our wrappers of console scripts the package no longer has
            if entry.name not in scripts and entry.is_file() and not entry.is_symlink() and _is_wrapper(entry):
                entry.unlink()
                changes.append(f"removed lib/{package}/{entry.name}")
    return changes


def _is_wrapper(path: Path) -> bool:
    try:
        with open(path, "r", errors="replace") as f:
            return WRAPPER_MARK in f.read(400)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default=sys.prefix, help="install prefix (default: this interpreter's, the venv)")
    parser.add_argument("--src", default=str(REPO / "src"), help="folder holding the packages (default: the repo's src/)")
    parser.add_argument("--quiet", action="store_true", help="print nothing when nothing changed")
    args = parser.parse_args(argv)
    prefix, src = Path(args.prefix).resolve(), Path(args.src).resolve()
    changes = [c for pkgdir in ament_python_packages(src) for c in layout_package(pkgdir, prefix)]
    if changes or not args.quiet:
        print(f"ament layout in {prefix}: " + (f"{len(changes)} changes ({'; '.join(changes)})" if changes
                                                 else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
