"""Send a natural-language goal to a policy server: a reusable client and `fedvla goal`.

``GoalClient`` runs its own node on a background executor thread, so callers (tests, scripts,
the CLI) simply block on ``GoalRun.wait()``. The server accepts every request and aborts a goal it
will not run at once, with ``"<code>: <why>"`` as the result's reason (goal_refusal.py); such a
goal comes back as ``accepted = False`` with ``refusal`` (the code) and ``rejection_reason`` set.

    fedvla goal "put the red block in the bowl" --ns robot1
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import rclpy
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor

from fedvla_msgs.action import ExecuteInstruction
from fedvla_core.control.goal_refusal import RETRYABLE, refusal_code

STATUS_NAMES = {
    GoalStatus.STATUS_UNKNOWN: "unknown", GoalStatus.STATUS_ACCEPTED: "accepted",
    GoalStatus.STATUS_EXECUTING: "executing", GoalStatus.STATUS_CANCELING: "canceling",
    GoalStatus.STATUS_SUCCEEDED: "succeeded", GoalStatus.STATUS_CANCELED: "canceled",
    GoalStatus.STATUS_ABORTED: "aborted",
}
_node_ids = itertools.count()


@dataclass
class GoalRun:
    """One goal as the client sees it: acceptance, feedback as it arrives, and the result."""

    instruction: str
    accepted: bool | None = None  # None until the server answered: True once it runs, False when refused
    rejection_reason: str = ""  # the server's "<code>: <why>" when refused
    refusal: str | None = None  # the refusal code (goal_refusal), None when the goal ran
    feedback: list = field(default_factory=list)  # ExecuteInstruction.Feedback messages, in order
    status: int = GoalStatus.STATUS_UNKNOWN
    result: object | None = None  # ExecuteInstruction.Result once finished
    _handle: object | None = None
    _answered: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def retryable(self) -> bool:
        """Refused for a reason that may pass when the same goal is sent again later (not ready, busy)."""
        return self.refusal in RETRYABLE

    def wait_accepted(self, timeout: float = 10.0) -> bool | None:
        """Block until the goal runs (first feedback) or was refused (its result); returns ``accepted``."""
        self._answered.wait(timeout)
        return self.accepted

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the goal ended (or was rejected); True when it did within ``timeout``."""
        return self._done.wait(timeout)


class GoalClient:
    """ExecuteInstruction client with its own node and executor thread.

    namespace: the robot's namespace (e.g. "robot1"); action_name and server_node_name as the
    server's parameters set them (defaults: "execute_instruction", "policy_server").
    """

    def __init__(self, namespace: str = "", action_name: str = "execute_instruction",
                 server_node_name: str = "policy_server", context=None):
        self._context = context
        self.server_node_name = server_node_name  # its ~/goal_rejections topic mirrors refusals for observers
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.node = rclpy.create_node(f"fedvla_goal_client_{os.getpid()}_{next(_node_ids)}", namespace=ns,
                                      context=context)
        self._client = ActionClient(self.node, ExecuteInstruction, action_name)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - context shut down under us at exit
            pass

    def wait_for_server(self, timeout: float = 10.0, settle_s: float = 0.5) -> bool:
        """Wait until the action server is discovered.

        Discovery is not symmetric: we may see the server before it sees our response readers,
        and a goal sent in that window can lose its answer. ``settle_s`` gives it time to catch up.
        """
        if not self._client.wait_for_server(timeout_sec=timeout):
            return False
        time.sleep(settle_s)
        return True

    def send(self, instruction: str, max_steps: int = 0, time_limit_s: float = 0.0,
             on_feedback=None) -> GoalRun:
        """Send a goal without blocking; returns the GoalRun that fills in as answers arrive."""
        run = GoalRun(instruction)

        def on_fb(msg):
            run.feedback.append(msg.feedback)
            if run.accepted is None:  # a refused goal gets no feedback: this one runs
                run.accepted = True
                run._answered.set()
            if on_feedback is not None:
                on_feedback(msg.feedback)

        def on_result(future):
            response = future.result()
            run.status, run.result = response.status, response.result
            code = refusal_code(response.result.reason) if response.status == GoalStatus.STATUS_ABORTED else None
            if code is not None and response.result.steps == 0:
                run.refusal, run.rejection_reason, run.accepted = code, response.result.reason, False
            elif run.accepted is None:
                run.accepted = True
            run._answered.set()
            run._done.set()

        def on_goal_response(future):
            handle = future.result()
            run._handle = handle
            if not handle.accepted:  # servers of this stack never do; another implementation might
                run.accepted, run.rejection_reason = False, "rejected by the action server (it gave no reason)"
                run._answered.set()
                run._done.set()
                return
            handle.get_result_async().add_done_callback(on_result)

        goal = ExecuteInstruction.Goal(instruction=instruction, max_steps=int(max_steps),
                                       time_limit_s=float(time_limit_s))
        self._client.send_goal_async(goal, feedback_callback=on_fb).add_done_callback(on_goal_response)
        return run

    def run(self, instruction: str, timeout: float = 120.0, **kwargs) -> GoalRun:
        """Send a goal and block until it ended (or ``timeout``)."""
        goal_run = self.send(instruction, **kwargs)
        goal_run.wait(timeout)
        return goal_run

    def cancel(self, run: GoalRun, timeout: float = 5.0) -> bool:
        """Ask the server to cancel ``run``; True when the cancel request was accepted."""
        if run._handle is None or not run.accepted:
            return False
        event, answer = threading.Event(), {}

        def done(f):
            answer["resp"] = f.result()
            event.set()

        run._handle.cancel_goal_async().add_done_callback(done)
        event.wait(timeout)
        resp = answer.get("resp")
        return bool(resp is not None and len(resp.goals_canceling) > 0)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


# ----------------------------------------------------------------------------- CLI

def format_feedback(fb) -> str:
    """One progress line: bar, step, phase, experts per token, inference latency."""
    width = 20
    filled = int(round(max(0.0, min(1.0, fb.progress)) * width))
    return (f"[{'#' * filled}{'.' * (width - filled)}] {fb.progress * 100:5.1f}%  step {fb.step:4d}  "
            f"{fb.phase:<17s} experts/token {fb.mean_active_experts:4.2f}  inference {fb.inference_latency_ms:6.1f} ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla goal", description=(
        "Send a natural-language goal to a robot's policy server and follow it to the end. "
        "Ctrl-C cancels the goal (the arm holds its position)."))
    parser.add_argument("instruction", help='what the robot should do, e.g. "put the red block in the bowl"')
    parser.add_argument("--ns", default="", help="robot namespace, e.g. robot1 (default: none)")
    parser.add_argument("--max-steps", type=int, default=0, help="step limit (0 = the server's default)")
    parser.add_argument("--time-limit", type=float, default=0.0, help="time limit in s (0 = the server's default)")
    parser.add_argument("--action", default="execute_instruction", help="action name (server parameter action_name)")
    parser.add_argument("--server-node", default="policy_server", help="node name of the policy server")
    parser.add_argument("--wait-server", type=float, default=10.0, help="seconds to wait for the server to appear")
    parser.add_argument("--timeout", type=float, default=0.0, help="give up (and cancel) after this many s (0 = never)")
    return parser


def main_goal(argv: list[str] | None = None) -> int:
    """`fedvla goal ...`: 0 on task success, 1 when the goal ended otherwise, 2 when refused/unreachable."""
    args = build_parser().parse_args(argv)
    rclpy.init()
    client = GoalClient(namespace=args.ns, action_name=args.action, server_node_name=args.server_node)
    interactive = sys.stdout.isatty()
    last_line = [0]

    def show(fb):
        line = format_feedback(fb)
        if interactive:
            sys.stdout.write("\r" + line.ljust(last_line[0]))
            last_line[0] = len(line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        where = f"/{args.ns.strip('/')}/{args.action}" if args.ns else args.action
        if not client.wait_for_server(args.wait_server):
            print(f"no ExecuteInstruction server at {where} after {args.wait_server:.0f} s", file=sys.stderr)
            return 2
        run = client.send(args.instruction, max_steps=args.max_steps, time_limit_s=args.time_limit, on_feedback=show)
        if not run.wait_accepted(args.wait_server):
            if run.accepted is None:
                print("the server did not answer the goal request", file=sys.stderr)
                return 2
            print(f"goal refused: {run.rejection_reason}", file=sys.stderr)
            return 2
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        try:
            while not run.wait(0.2):
                if deadline is not None and time.monotonic() > deadline:
                    print("\ntimeout: canceling the goal", file=sys.stderr)
                    client.cancel(run)
                    deadline = None
        except KeyboardInterrupt:
            print("\ncanceling the goal ...", file=sys.stderr)
            client.cancel(run)
            run.wait(10.0)
        if interactive:
            sys.stdout.write("\n")
        res = run.result
        if res is None:
            print(f"goal ended with status {run.status_name} and no result", file=sys.stderr)
            return 1
        print(f"result: {run.status_name}  success={res.success}  steps={res.steps}  "
              f"reason={res.reason!r}  episode={res.episode_id}")
        return 0 if res.success else 1
    finally:
        client.close()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    raise SystemExit(main_goal())
