"""The contract of a refused ExecuteInstruction goal: codes the server sets and clients test.

Why accept-then-abort: rclpy's goal callback can only answer ACCEPT or REJECT, and a plain
REJECT reaches ``ros2 action send_goal`` as "Goal was rejected." with no reason. So the policy
server accepts every goal request, and a goal it will not run is aborted at once (0 steps, no
episode id, no feedback, the arm untouched, a running goal not preempted) with the result's
``reason`` set to ``"<code>: <what is wrong>"``, e.g. ``"not_ready: no joint state received yet"``.
This is the same "<kind>: <detail>" form the result already uses for ``"stale_input: ..."``.

Clients decide on the code (``refusal_code``), never on the wording of the detail. The codes are also
the ``REFUSAL_*`` constants of fedvla_msgs' ExecuteInstruction result, for clients outside this stack;
tests/fedvla_msgs/test_constants.py holds the two equal (the core cannot import fedvla_msgs).
No rclpy import: the goal client, the CLI and the fleet demo read these without a ROS graph.
"""
from __future__ import annotations

#: The goal itself is unusable (empty / too long / non-printable instruction, bad limits). Do not retry.
INVALID_GOAL = "invalid_goal"
#: The server cannot run any goal yet (no checkpoint, no camera frame or joint state so far). Retry later.
NOT_READY = "not_ready"
#: Another goal is running and the server's on_new_goal is 'reject'. Retry when it ended.
BUSY = "busy"
#: The instruction is far from every instruction the policy was trained on (language embedding). Rephrase.
UNGROUNDED = "ungrounded"

REFUSAL_CODES = (INVALID_GOAL, NOT_READY, BUSY, UNGROUNDED)
#: Codes after which the same goal may succeed when sent again later.
RETRYABLE = (NOT_READY, BUSY)


def refusal_reason(code: str, detail: str) -> str:
    """The result reason of a refused goal."""
    if code not in REFUSAL_CODES:
        raise ValueError(f"unknown refusal code {code!r}; known: {', '.join(REFUSAL_CODES)}")
    return f"{code}: {detail}"


def refusal_code(reason: str) -> str | None:
    """The refusal code of a result reason, or None when the goal was not refused (it ran)."""
    code, sep, _ = str(reason).partition(":")
    return code if sep and code in REFUSAL_CODES else None
