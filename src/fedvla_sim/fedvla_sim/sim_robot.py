"""The simulated robot behind the ROS node, with no rclpy: physics pacing, trajectory following, state.

`SimRobot` wraps a `PandaTabletopEnv` with a `TrajectoryFollower` and one lock. The physics
runs in its own thread (`start()`), paced to `real_time_factor` x wall-clock time, and
samples the follower at every physics step, so the arm moves exactly as a
joint_trajectory_controller would drive it. Everything else (publishers, services, the
expert) only takes the lock for short reads and writes, so they never stall the physics.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np

from fedvla_core.config_fields import check_ranges
from fedvla_sim.env import PandaTabletopEnv, action_to_joint_targets
from fedvla_sim.tasks import TASKS
from fedvla_sim.trajectory import TrajectoryFollower


@dataclass
class SimRobotConfig:
    """Parameters of the simulated robot node (mirrored in config/sim_robot.yaml; the field convention is
    fedvla_core.config_fields, declared as ROS parameters by fedvla_ros.params.declare_config)."""

    task: str = field(default="put_red_block_in_bowl", metadata={"help": "Task loaded at start-up."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial layout at start-up."})
    camera_names: list[str] = field(default_factory=lambda: ["agentview", "wrist"],
                                    metadata={"help": "Cameras to publish (agentview, wrist)."})
    camera_size: int = field(default=128, metadata={"help": "Image height and width, pixels.", "range": (16, 1024)})
    camera_rate_hz: float = field(default=10.0, metadata={"help": "Image + camera_info publish rate."})
    joint_state_rate_hz: float = field(default=50.0, metadata={"help": "joint_states publish rate."})
    status_rate_hz: float = field(default=5.0, metadata={"help": "task_success publish rate."})
    real_time_factor: float = field(default=1.0, metadata={"help": "Sim seconds per wall second; <= 0 runs as fast as possible."})
    physics_chunk_s: float = field(default=0.01, metadata={"help": "Sim seconds advanced per physics-loop iteration."})
    max_catch_up_s: float = field(default=0.2, metadata={
        "help": "Largest lag (sim s) the physics catches up on; beyond it the sim drops the lag and runs "
                "slower than real time, like Gazebo at a real-time factor < 1."})
    controller_topic: str = field(default="arm_controller/joint_trajectory",
                                  metadata={"help": "JointTrajectory command topic (relative: the node's namespace applies)."})
    expert_control_dt: float = field(default=0.1, metadata={"help": "Seconds between the scripted expert's commands."})
    frame_prefix: str = field(default="", metadata={"help": "Prefix for image frame_ids (e.g. 'robot1/')."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"SimRobotConfig.task: unknown task {self.task!r}; known: {', '.join(TASKS)}")
        for cam in self.camera_names:
            if cam not in ("agentview", "wrist"):
                raise ValueError(f"SimRobotConfig.camera_names: unknown camera {cam!r}")
        check_ranges(self)  # camera_size
        for name in ("camera_rate_hz", "joint_state_rate_hz", "status_rate_hz", "physics_chunk_s", "expert_control_dt",
                     "max_catch_up_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SimRobotConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.controller_topic:
            raise ValueError("SimRobotConfig.controller_topic must not be empty")


class SimRobot:
    """A `PandaTabletopEnv` driven by joint trajectories in (paced) sim time."""

    def __init__(self, config: SimRobotConfig | None = None):
        self.config = config or SimRobotConfig()
        self.lock = threading.RLock()
        self.env = PandaTabletopEnv(self.config.task, self.config.seed, camera_size=self.config.camera_size,
                                    camera_names=tuple(self.config.camera_names), render=False)
        self.follower = TrajectoryFollower(self.env.joint_names, self.env.position_limits, self.env.joint_targets)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expert_abort = threading.Event()
        self.physics_steps = 0
        self.dropped_lag_s = 0.0  # sim time given up because the physics fell behind real time
        self._pacing_restart = False

    # --- commands (thread-safe) -----------------------------------------------------------------
    def command_trajectory(self, joint_names, times, positions, start_delay: float | None = None) -> None:
        """Follow a trajectory from now (+ `start_delay` sim seconds); raises TrajectoryRejected if bad."""
        with self.lock:
            now = self.env.time
            start = None if start_delay is None else now + max(0.0, start_delay)
            self.follower.command(now, joint_names, times, positions, start_time=start)

    def reset(self, task: str | None = None, seed: int | None = None) -> str:
        """Reset to `task` (None keeps it) and `seed`; returns the episode's instruction."""
        self._expert_abort.set()
        with self.lock:
            self.env.reset(seed=seed, task=task or None)
            self.follower.hold(self.env.joint_targets)
            self._pacing_restart = True  # sim time jumped back: the physics loop re-anchors its pacing
            return self.env.instruction

    # --- state (thread-safe) --------------------------------------------------------------------
    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.env.joint_positions(), self.env.joint_velocities()

    def success(self) -> bool:
        with self.lock:
            return self.env.success()

    @property
    def sim_time(self) -> float:
        with self.lock:
            return self.env.time

    def render_images(self) -> dict[str, np.ndarray]:
        """One RGB image per configured camera. Call from one thread only: it owns the GL context.

        Only building the scene takes the lock; the (slow) rasterisation runs outside it, so
        rendering never stalls the physics.
        """
        import mujoco

        if getattr(self, "_renderer", None) is None:
            size = self.config.camera_size
            self._renderer = mujoco.Renderer(self.env.model, size, size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        images = {}
        for cam in self.config.camera_names:
            with self.lock:
                self._renderer.update_scene(self.env.data, cam)
            images[cam] = self._renderer.render().copy()
        return images

    def close_renderer(self) -> None:
        """Free the GL context (from the thread that rendered)."""
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    # --- scripted expert ------------------------------------------------------------------------
    def run_expert(self, send_trajectory: Callable[[list[str], list[float], np.ndarray], None],
                   max_steps: int = 0, settle_steps: int = 5) -> dict:
        """Drive the arm with the task's scripted expert through `send_trajectory`; blocks until done.

        Every `expert_control_dt` sim seconds the expert's next joint target goes out as a one-point
        trajectory (reached at `time_from_start = expert_control_dt`), exactly what a teleoperator
        would send; the node passes a function that publishes it on the controller topic. Returns
        {"success", "steps", "message"}. A reset aborts a running expert.
        """
        from fedvla_sim.experts import ScriptedExpert

        dt = self.config.expert_control_dt
        self._expert_abort.clear()
        view = _LockedEnvView(self, dt)
        with self.lock:
            expert = ScriptedExpert(view)
            max_steps = max_steps or self.env.task.max_steps
            t_next = self.env.time
        steps, hold_left, hold = 0, settle_steps, None
        names = list(self.env.joint_names)
        while steps < max_steps:
            if self._expert_abort.is_set():
                return {"success": False, "steps": steps, "message": "aborted by a reset"}
            action = expert.act()
            if action is None:
                if hold_left == 0:
                    break
                hold_left -= 1
                hold = expert.hold_action() if hold is None else hold
                action = hold
            send_trajectory(names, [dt], action_to_joint_targets(action)[None])
            steps += 1
            t_next += dt
            if not self.wait_sim_time(t_next, timeout=max(10.0, 100 * dt)):
                return {"success": False, "steps": steps, "message": "physics is not running"}
        ok = self.success()
        return {"success": ok, "steps": steps, "message": "task solved" if ok else "expert finished without success"}

    # --- physics --------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Step the physics `seconds` of sim time, sampling the follower at every physics step."""
        n = max(1, int(round(seconds / self.env.physics_dt)))
        with self.lock:
            for _ in range(n):
                self.env.set_joint_targets(self.follower.sample(self.env.time))
                self.env.physics_step()
            self.physics_steps += n

    def wait_sim_time(self, until: float, timeout: float = 10.0) -> bool:
        """Block (outside the lock) until sim time reaches `until`; False on timeout or stop."""
        deadline = time.monotonic() + timeout
        while self.sim_time < until:
            if self._stop.is_set() or time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def start(self) -> None:
        """Run the physics in a daemon thread, paced to the real-time factor."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sim_physics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        rtf = self.config.real_time_factor
        chunk = self.config.physics_chunk_s
        wall0, sim0 = time.monotonic(), self.sim_time
        while not self._stop.is_set():
            if rtf > 0:
                with self.lock:
                    now_sim, restart, self._pacing_restart = self.env.time, self._pacing_restart, False
                if restart:
                    wall0, sim0 = time.monotonic(), now_sim
                due = sim0 + (time.monotonic() - wall0) * rtf
                lag = due - now_sim
                if lag < chunk:
                    time.sleep(min(0.005, (chunk - lag) / rtf))
                    continue
                if lag > self.config.max_catch_up_s:
                    # Fell behind (a busy machine): give the lag up rather than step flat out, which
                    # starves the camera and joint-state threads of the lock and the GIL (measured: 1 s
                    # without a frame or joint state on a 2-core machine). The sim then runs slower
                    # than real time, like Gazebo at a real-time factor < 1.
                    self.dropped_lag_s += lag
                    wall0, sim0 = time.monotonic(), now_sim
            self.advance(chunk)
            time.sleep(0)  # let the sensor threads take the lock between chunks


class _LockedEnvView:
    """The env accessors the scripted expert reads, each under the robot's lock."""

    def __init__(self, robot: SimRobot, control_dt: float):
        self._robot = robot
        self.config = SimpleNamespace(control_dt=control_dt)

    @property
    def task(self):
        return self._robot.env.task

    def joint_positions(self) -> np.ndarray:
        with self._robot.lock:
            return self._robot.env.joint_positions()

    def grasp_pose(self):
        with self._robot.lock:
            return self._robot.env.grasp_pose()

    def object_poses(self):
        with self._robot.lock:
            return self._robot.env.object_poses()
