"""How the base policy fares when its chunks are executed the way the policy server executes them.

    .venv/bin/python benchmarks/realtime_execution.py              # writes benchmarks/results/realtime_execution.json
    .venv/bin/python benchmarks/realtime_execution.py --seeds 2    # quicker

The shipped base checkpoint scores well in synchronous evaluation (`fedvla-sim eval`: the sim waits
for the policy, and each action is applied at once). A robot does not wait: the camera frame is
some tens of ms old when the policy has answered, the arm kept moving meanwhile, and the server
turns the chunk into a JointTrajectory. This benchmark replays that without ROS, deterministically:
the sim Panda (`SimRobot`, its trajectory follower, its own joint ranges) is stepped by hand, and
each control step is the policy server's own (`fedvla_core.control.goal_runner.GoalRunner.step`):

    observe (render + joint state) -> policy.act -> [arm keeps following the last trajectory for
    `latency` s] -> motion.plan(reference setpoint, chunk, observation_age_s) -> follow for the rest
    of the 0.1 s period.

The reference setpoint is the sim follower's own (the server estimates it with ReferenceTracker),
and the latency is sim time the policy's answer takes (`LaggedPolicy`).

Conditions (same tasks, same held-out seeds, same checkpoint):
* `sync`: `fedvla-sim eval`'s rollout (`env.step`), the reference;
* `chunk`: the server's default timing, action k due (k + 1) periods after the observation, at
  several latencies, with the default lead (an action due within 70 ms of planning is skipped) and
  without it;
* `chunk, no compensation`: the same latency, but the chunk timed from when it is planned (what
  ignoring the observation's age does);
* `time_optimal`: the earlier default (toppra along the chunk, at most H periods long);
* `async`: the server with `async_inference` (fedvla_core.control.chunk_scheduler): the next chunk is
  inferred while the current one executes, started when its remaining actions fall to
  `chunk_size_threshold`, and blended with it (`rtc` or `ensemble`). The policy's answer arrives
  `latency` s of sim time after the observation (`SimTimeInference`: computed at once, delivered
  then, so the run stays deterministic), is published at once, and each step is one control period.
The real ROS path adds DDS, jitter and a busy CPU on top; the fleet demo measures that.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvla_bringup.provenance import git_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "realtime_execution.json"

CONTROL_PERIOD_S = 0.1


@dataclass(frozen=True)
class Condition:
    name: str
    timing: str = "chunk"  # "sync" (env.step), "chunk" or "time_optimal"
    latency_s: float = 0.0
    compensate: bool = True  # pass the observation's age to the planner
    min_lead_s: float | None = None  # MotionConfig.min_lead_s (None = its default)
    async_inference: bool = False  # ServerConfig.async_inference (then chunk_blend = blend)
    blend: str = "rtc"


CONDITIONS = (
    Condition("sync", timing="sync"),
    Condition("chunk, latency 0 ms", latency_s=0.0),
    Condition("chunk, latency 40 ms", latency_s=0.04),
    Condition("chunk, latency 70 ms", latency_s=0.07),
    Condition("chunk, latency 40 ms, no lead", latency_s=0.04, min_lead_s=0.0),
    Condition("chunk, latency 70 ms, no lead", latency_s=0.07, min_lead_s=0.0),
    Condition("chunk, latency 70 ms, no compensation", latency_s=0.07, compensate=False),
    Condition("time_optimal, latency 40 ms", timing="time_optimal", latency_s=0.04),
    Condition("chunk, latency 100 ms", latency_s=0.1),
    Condition("async, latency 40 ms", latency_s=0.04, async_inference=True),
    Condition("async, latency 100 ms", latency_s=0.1, async_inference=True),
    Condition("async, latency 200 ms", latency_s=0.2, async_inference=True),
    Condition("async, latency 300 ms", latency_s=0.3, async_inference=True),
    Condition("async, latency 100 ms, ensemble", latency_s=0.1, async_inference=True, blend="ensemble"),
    Condition("async, latency 200 ms, ensemble", latency_s=0.2, async_inference=True, blend="ensemble"),
    Condition("async, latency 200 ms, replace", latency_s=0.2, async_inference=True, blend="replace"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "panda_base"), help="policy to evaluate")
    p.add_argument("--tasks", nargs="+", default=["pick_up_green_block", "put_red_block_in_bowl",
                                                   "put_blue_block_in_bowl"], help="Panda tasks")
    p.add_argument("--seeds", type=int, default=4, help="held-out seeds per task (0..N-1)")
    p.add_argument("--max-steps", type=int, default=150, help="control steps before an episode fails")
    p.add_argument("--out", default=str(RESULTS), help="results JSON")
    p.add_argument("--only", nargs="+", default=None, help="run only the conditions whose name contains one of these")
    return p


def motion_backend(timing: str, min_lead_s: float | None = None):
    """The policy server's joint-space backend with the sim arm's own joint ranges."""
    from fedvla_core.control.motion import PANDA_LIMITS, JointLimits, JointSpaceBackend, MotionConfig
    from fedvla_sim.scene import arm_position_limits

    lower, upper = arm_position_limits()
    limits = JointLimits(PANDA_LIMITS.names, np.array(lower), np.array(upper),
                         PANDA_LIMITS.max_velocity, PANDA_LIMITS.max_acceleration)
    lead = {} if min_lead_s is None else {"min_lead_s": min_lead_s}
    return JointSpaceBackend(limits, MotionConfig(nominal_step_s=CONTROL_PERIOD_S, timing=timing, **lead))


class LaggedPolicy:
    """The policy whose answer comes ``latency_s`` of sim time after the observation: the arm keeps
    following the previous trajectory meanwhile. Everything but ``act`` is the policy's own."""

    def __init__(self, policy, robot, latency_s: float):
        self.policy, self.robot, self.latency_s = policy, robot, latency_s

    def act(self, observation: dict) -> np.ndarray:
        chunk = self.policy.act(observation)
        if self.latency_s > 0:
            self.robot.advance(self.latency_s)
        return chunk

    def __getattr__(self, name: str):
        return getattr(self.policy, name)


class FollowerSetpoint:
    """The sim follower's setpoint at ``now``: the reference the server's ReferenceTracker estimates on a
    real controller. No velocity (the follower reports none; only 'time_optimal' timing would use it)."""

    def __init__(self, robot):
        self.robot = robot

    def state(self, now: float, measured_pos: np.ndarray, measured_vel: np.ndarray):
        with self.robot.lock:
            return self.robot.follower.sample(now), None

    def clear(self) -> None:
        """Nothing to forget: the follower's setpoint is always known."""


def observe(robot):
    """The sim's joint state and camera images as the server's inputs.Snapshot (received and stamped now)."""
    from fedvla_core.control.inputs import JointSample, Snapshot

    q, qd = robot.joint_state()
    now = robot.sim_time
    names = robot.env.joint_names
    joint = JointSample(dict(zip(names, q.tolist())), dict(zip(names, qd.tolist())), now)
    images = robot.render_images()
    return Snapshot(images, joint, now, frames_received={c: now for c in images})


def rollout_server_semantics(robot, policy, motion, task: str, seed: int, cond: Condition, max_steps: int) -> dict:
    """One episode with the policy server's execution: trajectories replace each other every period."""
    from fedvla_core.control.goal_runner import ChunkRejected, GoalEnd, GoalRunner
    from fedvla_core.control.server_config import ServerConfig
    from fedvla_core.control.motion import hold_trajectory

    instruction = robot.reset(task, seed)
    age = cond.latency_s if cond.compensate else 0.0
    runner = GoalRunner(LaggedPolicy(policy, robot, cond.latency_s), motion,
                        ServerConfig(control_rate_hz=1.0 / CONTROL_PERIOD_S), instruction, max_steps, math.inf,
                        reference=FollowerSetpoint(robot), clock=lambda: robot.sim_time,
                        observation_age=lambda snap: age)
    while runner.budget_end() is None:
        outcome = runner.step(observe(robot))
        if isinstance(outcome, GoalEnd):  # a policy error; stale input cannot happen in sim time
            raise RuntimeError(f"{task} seed {seed}: the goal ended after {runner.steps} steps: {outcome.reason}")
        if isinstance(outcome, ChunkRejected):  # the server holds the arm and goes on
            with robot.lock:
                setpoint = robot.follower.sample(robot.sim_time)
            outcome = hold_trajectory(setpoint, motion.joint_names)
        robot.command_trajectory(outcome.joint_names, outcome.times[1:], outcome.positions[1:])  # as to_joint_trajectory
        robot.advance(CONTROL_PERIOD_S - cond.latency_s)
        if robot.success():
            return {"success": True, "steps": runner.steps}
    return {"success": False, "steps": runner.steps}


class SimTimeInference:
    """The server's inference worker in sim time: ``submit`` computes the chunk at once (deterministic) and
    its future is done ``latency_s`` of sim time later, while the arm executes the last trajectory."""

    def __init__(self, robot, latency_s: float):
        self.robot, self.latency_s = robot, latency_s
        self.last: DelayedFuture | None = None

    def submit(self, fn, *args):
        from concurrent.futures import Future

        inner = Future()
        try:
            inner.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - the runner's collect turns it into a policy error
            inner.set_exception(exc)
        self.last = DelayedFuture(inner, self.robot.sim_time + self.latency_s, self.robot)
        return self.last


@dataclass
class DelayedFuture:
    inner: object
    ready_at: float
    robot: object

    def done(self) -> bool:
        return self.robot.sim_time >= self.ready_at - 1e-9

    def result(self):
        return self.inner.result()


def rollout_async(robot, policy, motion, task: str, seed: int, cond: Condition, max_steps: int) -> dict:
    """One episode with async_inference: a step per control period; a chunk is published when it arrives."""
    from fedvla_core.control.goal_runner import ChunkRejected, GoalEnd, GoalRunner
    from fedvla_core.control.motion import hold_trajectory
    from fedvla_core.control.server_config import ServerConfig

    instruction = robot.reset(task, seed)
    worker = SimTimeInference(robot, cond.latency_s)
    runner = GoalRunner(policy, motion, ServerConfig(control_rate_hz=1.0 / CONTROL_PERIOD_S, async_inference=True,
                                                     chunk_blend=cond.blend),
                        instruction, max_steps, math.inf, reference=FollowerSetpoint(robot),
                        clock=lambda: robot.sim_time, executor=worker,
                        observation_age=lambda snap: robot.sim_time - snap.newest_frame_received)

    def send(outcome) -> None:
        if isinstance(outcome, GoalEnd):
            raise RuntimeError(f"{task} seed {seed}: the goal ended after {runner.steps} steps: {outcome.reason}")
        if outcome is None:
            return
        if isinstance(outcome, ChunkRejected):
            with robot.lock:
                setpoint = robot.follower.sample(robot.sim_time)
            outcome = hold_trajectory(setpoint, motion.joint_names)
        robot.command_trajectory(outcome.joint_names, outcome.times[1:], outcome.positions[1:])

    while runner.budget_end() is None:
        period_end = robot.sim_time + CONTROL_PERIOD_S
        send(runner.step(observe(robot)))
        if runner.inference_pending and worker.last.ready_at < period_end - 1e-9:
            robot.advance(max(worker.last.ready_at - robot.sim_time, 0.0))
            send(runner.collect())  # the node publishes a finished chunk at once, between frames
        robot.advance(max(period_end - robot.sim_time, 0.0))
        if robot.success():
            return {"success": True, "steps": runner.steps, "inferences": runner.inferences}
    return {"success": False, "steps": runner.steps, "inferences": runner.inferences}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from fedvla_sim.policy_eval import PolicySource, load_policy, rollout_policy
    from fedvla_sim.recorder import make_env
    from fedvla_sim.sim_robot import SimRobot, SimRobotConfig

    policy = load_policy(PolicySource(args.checkpoint))
    robot = SimRobot(SimRobotConfig(task=args.tasks[0]))  # stepped by hand: no physics thread
    envs = {}
    results = {}
    t_start = time.monotonic()
    for cond in CONDITIONS:
        if args.only and not any(word in cond.name for word in args.only):
            continue
        rows = []
        motion = None if cond.timing == "sync" else motion_backend(cond.timing, cond.min_lead_s)
        for task in args.tasks:
            for seed in range(args.seeds):
                if cond.timing == "sync":
                    env = envs.setdefault(task, make_env("panda", task, seed, 128))
                    r = rollout_policy(env, policy.act, seed, args.max_steps)
                    row = {"success": r["success"], "steps": r["steps"]}
                elif cond.async_inference:
                    row = rollout_async(robot, policy, motion, task, seed, cond, args.max_steps)
                else:
                    row = rollout_server_semantics(robot, policy, motion, task, seed, cond, args.max_steps)
                rows.append({"task": task, "seed": seed, **row})
        rate = sum(r["success"] for r in rows) / len(rows)
        results[cond.name] = {"condition": cond.__dict__, "success_rate": rate, "episodes": rows}
        print(f"{cond.name:45s} {rate:6.1%} ({sum(r['success'] for r in rows)}/{len(rows)})", flush=True)
    out = {
        "checkpoint": args.checkpoint, "tasks": args.tasks, "seeds": list(range(args.seeds)),
        "max_steps": args.max_steps, "control_period_s": CONTROL_PERIOD_S, "git_commit": git_commit(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "wall_time_s": round(time.monotonic() - t_start, 1), "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
