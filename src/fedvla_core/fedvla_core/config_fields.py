"""The convention every config dataclass of the stack follows, and the range check it implies (no ROS).

A node's parameters are one dataclass; each field says what it is in its metadata:

    camera_size: int = field(default=128, metadata={"help": "Image height and width, pixels.",
                                                    "range": (16, 1024)})

* ``"help"`` (every field): one or two sentences; ``ros2 param describe`` shows it.
* ``"range"`` (optional, int and float fields): ``(low, high)``, both inclusive, ``None`` for an open
  end. ``check_ranges`` enforces it in ``__post_init__`` (so a config built without ROS is checked
  the same way), and ``fedvla_ros.params`` turns it into the parameter's integer/floating-point range.
* ``"dynamic"`` (optional, default False): the node reacts when the parameter changes at run time.
  Without it the parameter is read once, at start, and ``fedvla_ros.params`` declares it read-only.

Checks a range cannot say (``> 0``, one of a few words, two fields together) stay in ``__post_init__``
as ``ValueError`` whose message names the field.
"""
from __future__ import annotations

from dataclasses import Field, fields


def field_help(f: Field) -> str:
    return str(f.metadata.get("help", ""))


def field_range(f: Field) -> tuple[float | None, float | None] | None:
    """(low, high) of a field with a "range", else None."""
    bounds = f.metadata.get("range")
    if bounds is None:
        return None
    low, high = bounds
    return low, high


def check_ranges(config) -> None:
    """ValueError naming the first field of ``config`` outside its metadata range."""
    for f in fields(config):
        bounds = field_range(f)
        if bounds is None:
            continue
        low, high = bounds
        value = getattr(config, f.name)
        if (low is not None and value < low) or (high is not None and value > high):
            shown = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise ValueError(f"{type(config).__name__}.{f.name} must be in {shown}, got {value}")
