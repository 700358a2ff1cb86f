"""The GIL switch interval of the stack's ROS processes.

A ROS node here runs one busy thread (the policy's forward pass, the sim's physics, the recorder's
image conversion) beside executor threads that must handle 10 Hz camera frames and 50 Hz joint
states on time. CPython hands the GIL to a waiting thread only every switch interval (5 ms by
default), and a thread that releases it for a short C call (a torch op, a MuJoCo step) waits that
long again to get it back: with hundreds of such calls per control step, the busy thread stalls
and the sensor callbacks run late or in bursts. Measured on the 2-core CI machine, single robot
(2026-11-26): policy steps took 0.6-1.6 s and camera frames went unprocessed for >1 s at 5 ms;
steps took 20-70 ms at 0.5 ms.
"""
from __future__ import annotations

import sys

#: Seconds; CPython's default is 0.005.
GIL_SWITCH_INTERVAL_S = 0.0005


def use_short_gil_switch_interval(seconds: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Call first thing in a node's main(): it applies to the whole process."""
    sys.setswitchinterval(seconds)
