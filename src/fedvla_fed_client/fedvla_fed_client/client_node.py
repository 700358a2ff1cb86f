"""The fed client node: one per robot, beside the policy server.

* Logs every ExecuteInstruction goal as an episode (it watches the action's feedback and status
  topics, the cameras, the joint states and the controller's JointTrajectory).
* Demonstration mode: `~/record_demonstration` (RunExpert) records the sim's scripted expert;
  a teleoperator starts/stops a recording on `~/demonstration/start` (String: instruction) and
  `~/demonstration/stop` (Bool: success).
* Schedules rounds (interval, new episodes, only while idle) through the round gate that its
  Flower ClientApp waits on, supervises the robot's Flower SuperNode, publishes RoundStatus,
  and after each round asks the policy server to load the new checkpoint.
A thin shell: recording, scheduling and the gate live in ROS-free modules.

Every callback checks what it receives (fedvla_core.episodes.input_checks) and survives it: a
malformed message is refused with one bounded log line (rate-limited per callback), the last good
input is kept, and the node keeps running; an unexpected error in a callback is logged the same
way instead of ending the executor (and with `fedvla up robot`, the robot).
With federation_enabled:=false (or no SuperNode credentials) rounds are off: the node only logs
episodes, says so at start and in RoundStatus (state "off"), and never starts a SuperNode.
Parameters: fedvla_fed_client.node_config.FedClientConfig (mirrored in config/fed_client.yaml), declared
by fedvla_ros.params.declare_config. RoundStatus.state is always one of RoundStatus.STATE_*.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections import deque
from pathlib import Path

from action_msgs.msg import GoalStatus, GoalStatusArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_action_status_default, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from fedvla_core.episodes.recorder import GoalEpisodeRecorder, TrajectoryTracker
from fedvla_core.episodes import list_episodes
from fedvla_core.episodes.ros_schemas import typestore
from fedvla_core.episodes.input_checks import (InputRejected, bounded, check_episode_id, check_image_header,
                                            check_instruction, check_joint_state)
from fedvla_fed_client.node_config import FedClientConfig
from fedvla_core.federated.round_gate import read_report, write_gate
from fedvla_core.federated.round_scheduler import RoundScheduler, ScheduleConfig
from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import MetricValue, RoundStatus
from fedvla_msgs.srv import LoadCheckpoint, RunExpert, TriggerRound
from fedvla_ros.gil import use_short_gil_switch_interval
from fedvla_ros.image_conversion import image_to_numpy, to_rgb
from fedvla_core.control.input_sync import StampedHistory, stamp_seconds
from fedvla_ros.node_main import run_node
from fedvla_ros import params

TERMINAL = {GoalStatus.STATUS_SUCCEEDED: "succeeded", GoalStatus.STATUS_CANCELED: "canceled",
            GoalStatus.STATUS_ABORTED: "aborted"}

_LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)

#: RoundStatus.state of a closed gate: the code that starts the scheduler's reason ("<code>: <detail>").
SCHEDULE_STATES = frozenset({RoundStatus.STATE_WAITING_FOR_IDLE_ROBOT, RoundStatus.STATE_WAITING_FOR_INTERVAL,
                             RoundStatus.STATE_WAITING_FOR_EPISODES})
#: RoundStatus.state of a round's outcome, by the round report's state (round_gate.RoundReport).
REPORT_STATES = {"done": RoundStatus.STATE_DONE, "failed": RoundStatus.STATE_FAILED}
#: A refused input of one callback is logged at most this often (the count of the others is reported).
REFUSAL_LOG_PERIOD_S = 5.0
#: How long ~/record_demonstration waits for the sim's expert before giving up.
EXPERT_TIMEOUT_S = 600.0
#: How long a demonstration waits for the sim's first task_info (a sim without one just records without it).
TASK_INFO_WAIT_S = 3.0
#: Task metadata keys taken from the sim's task_info topic (fedvla_sim.robot_node publishes them).
TASK_INFO_KEYS = ("task", "seed", "suite")


def declare_config(node: Node) -> FedClientConfig:
    """Declare every FedClientConfig field as a typed, described ROS parameter; the validated config.

    Raises fedvla_ros.params.ParameterError (naming the parameter) for a bad value.
    """
    return params.declare_config(node, FedClientConfig)


def gate_state(reason: str) -> str:
    """RoundStatus.state of a closed round gate, from the scheduler's reason."""
    code = reason.split(":")[0]
    if code not in SCHEDULE_STATES:  # tests/fedvla_msgs holds the scheduler to these codes
        raise ValueError(f"the round scheduler's reason {reason!r} starts with no RoundStatus state")
    return code


def guarded(name: str, service: bool = False):
    """Callback decorator: a refused input or an unexpected error is logged (bounded, rate-limited), never raised.

    rclpy's executor re-raises a callback's exception out of spin(), which ends the node; a
    service callback gets its (default) response back, so the caller is not left waiting.
    """
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args):
            try:
                return method(self, *args)
            except InputRejected as err:
                self._refused(name, str(err), error=False)
            except Exception as err:  # noqa: BLE001 - the node must outlive any one message
                self._refused(name, f"{type(err).__name__}: {err}", error=True)
            if service:  # (request, response): answer why instead of leaving the caller waiting
                args[1].message = bounded(f"refused: {self._last_refusal.get(name, '')}")
                return args[1]
            return None
        return run
    return wrap


class FedClientNode(Node):
    def __init__(self):
        super().__init__("fed_client")
        self._refusal_log: dict[str, tuple[float, int]] = {}  # callback -> (last logged, suppressed since)
        self._last_refusal: dict[str, str] = {}
        self.config = p = declare_config(self)
        self.rounds_off = self.config.rounds_off_reason()
        self.robot_id = p.robot_id
        self.episode_dir = Path(p.episode_dir or f"runs/episodes/{self.robot_id}").expanduser().resolve()
        self.episode_dir.mkdir(parents=True, exist_ok=True)
        self.cameras = list(p.camera_names)
        self.recorder = GoalEpisodeRecorder(self.episode_dir, self.cameras, self.robot_id,
                                            max_bytes=int(p.retention_max_bytes),
                                            max_episodes=int(p.retention_max_episodes))
        self.scheduler = RoundScheduler(ScheduleConfig(float(p.round_interval_s), int(p.min_new_episodes),
                                                       bool(p.only_while_idle)), now=time.time())
        self.tracker = TrajectoryTracker()
        self._lock = threading.Lock()
        self._images: dict[str, object] = {}
        self._joints: dict[str, float] = {}
        self._new_trajectory = False
        self._goal_id: bytes | None = None
        self._finished_goals: deque[bytes] = deque(maxlen=64)  # feedback can arrive after the terminal status
        self._round_mark = time.time()  # episodes finished after this count as new
        self._last_report_time = 0.0
        self._round = 0
        self._state, self._message = "", ""  # set by the first schedule tick, before the first RoundStatus
        self._last_report = None
        self._sim_instruction = ""
        self._task_info: dict = {}  # the sim's current task/seed/suite (task_info topic), stored in episode metadata
        self._task_info_seen = threading.Event()
        self._joint_history = StampedHistory()
        self._recorded_joints = set(self.recorder.layout.joint_names)

        sensors = MutuallyExclusiveCallbackGroup()
        for cam in self.cameras:
            self.create_subscription(Image, p.camera_topic_format.format(name=cam),
                                     lambda msg, cam=cam: self._on_image(cam, msg), qos_profile_sensor_data,
                                     callback_group=sensors)
        self.create_subscription(JointState, p.joint_states_topic, self._on_joints, 10, callback_group=sensors)
        self.create_subscription(JointTrajectory, p.controller_topic, self._on_trajectory, 10, callback_group=sensors)
        action = p.action_name
        self.create_subscription(ExecuteInstruction.Impl.FeedbackMessage, f"{action}/_action/feedback",
                                 self._on_feedback, 10)
        self.create_subscription(GoalStatusArray, f"{action}/_action/status", self._on_status,
                                 qos_profile_action_status_default)
        self._get_result = self.create_client(ExecuteInstruction.Impl.GetResultService, f"{action}/_action/get_result")
        self.create_subscription(String, p.task_instruction_topic, self._on_task_instruction, _LATCHED)
        if p.task_info_topic:
            self.create_subscription(String, p.task_info_topic, self._on_task_info, _LATCHED)
        self.create_subscription(String, "~/demonstration/start", self._on_teleop_start, 10)
        self.create_subscription(Bool, "~/demonstration/stop", self._on_teleop_stop, 10)

        services = ReentrantCallbackGroup()
        self._run_expert = self.create_client(RunExpert, p.sim_run_expert_service, callback_group=services)
        self._load_checkpoint = self.create_client(LoadCheckpoint, p.load_checkpoint_service, callback_group=services)
        self.create_service(RunExpert, "~/record_demonstration", self._record_demonstration, callback_group=services)
        self.create_service(TriggerRound, "~/trigger_round", self._trigger_round, callback_group=services)
        self.status_pub = self.create_publisher(RoundStatus, "round_status", 10)

        self.create_timer(1.0 / float(p.record_rate_hz), self._record_tick,
                          callback_group=MutuallyExclusiveCallbackGroup())
        # Own group: the schedule (gate, status, supervision) never waits behind goal or sensor callbacks.
        self.create_timer(1.0 / float(p.status_rate_hz), self._schedule_tick,
                          callback_group=MutuallyExclusiveCallbackGroup())
        typestore()  # build the episode format's message types now, not when the first goal starts
        if self.rounds_off:
            self._state, self._message = RoundStatus.STATE_OFF, self.rounds_off
            write_gate(self.episode_dir, False, self.rounds_off)  # an external SuperNode's ClientApp waits, then skips
            self.get_logger().warning(self.rounds_off)
        self.supervisor = self._start_supernode() if p.supernode_enabled and not self.rounds_off else None
        self.get_logger().info(f"logging episodes of {self.robot_id} to {self.episode_dir}; "
                               f"{'rounds are off' if self.rounds_off else 'rounds are on'}")

    def _refused(self, callback: str, reason: str, error: bool) -> None:
        """One bounded log line per refused input, at most every REFUSAL_LOG_PERIOD_S per callback."""
        reason = bounded(reason)
        self._last_refusal[callback] = reason
        now = time.monotonic()
        last, suppressed = self._refusal_log.get(callback, (-float("inf"), 0))
        if now - last < REFUSAL_LOG_PERIOD_S:
            self._refusal_log[callback] = (last, suppressed + 1)
            return
        self._refusal_log[callback] = (now, 0)
        more = f" ({suppressed} more refused since the last line)" if suppressed else ""
        log = self.get_logger().error if error else self.get_logger().warning
        log(bounded(f"{callback}: refused: {reason}{more}", 2 * len(callback) + 320))

    # ---- sensors -------------------------------------------------------------------------------
    @guarded("image")
    def _on_image(self, cam: str, msg: Image) -> None:
        # decoded only when a step is recorded (most frames never are); the cheap checks now, so a bad
        # frame never replaces the last good one
        check_image_header(msg.encoding, int(msg.height), int(msg.width), int(msg.step), len(msg.data))
        with self._lock:
            self._images[cam] = msg

    @guarded("joint_states")
    def _on_joints(self, msg: JointState) -> None:
        state = check_joint_state(msg.name, msg.position, msg.velocity, msg.effort)
        state = {n: v for n, v in state.items() if n in self._recorded_joints}
        if not state:
            return  # another part of the robot (e.g. a tool) publishing its own joints: nothing we record
        with self._lock:
            self._joints.update(state)
            joints = dict(self._joints)
        self._joint_history.add(stamp_seconds(msg.header.stamp), joints)

    @guarded("trajectory")
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        times = [pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9 for pt in msg.points]
        with self._lock:
            self.tracker.set(msg.joint_names, times, [list(pt.positions) for pt in msg.points],
                             time.monotonic(), dict(self._joints))
            self._new_trajectory = True

    @guarded("record_tick")
    def _record_tick(self) -> None:
        with self._lock:
            if not self.recorder.active or len(self._images) < len(self.cameras) or not self._joints:
                return
            try:
                images = {cam: to_rgb(image_to_numpy(msg), msg.encoding) for cam, msg in self._images.items()}
            except ValueError as err:
                self._refused("episode step", f"skipped: {err}", error=False)
                return
            # the joint state and commanded target of the frames' instant (input_sync), as `fedvla-sim record`
            # pairs them; the newest ones when the topics are unstamped
            frame_stamp = max(stamp_seconds(m.header.stamp) for m in self._images.values())
            at_frames = self._joint_history.nearest(frame_stamp, 0.1)
            joints = dict(at_frames if at_frames is not None else self._joints)
            age = min(max(0.0, time.time() - frame_stamp), 0.1) if at_frames is not None else 0.0
            commanded = self.tracker.target(time.monotonic() - age + 1.0 / float(self.config.record_rate_hz), joints)
            trajectory = self.tracker.last_trajectory if self._new_trajectory else None
            self._new_trajectory = False
            try:
                self.recorder.step(time.time_ns(), images, joints, commanded, trajectory)
            except (KeyError, ValueError) as err:
                self._refused("episode step", f"skipped: {err!r}", error=False)

    # ---- goals as episodes -------------------------------------------------------------------------
    @guarded("feedback")
    def _on_feedback(self, msg) -> None:
        gid = bytes(msg.goal_id.uuid)
        if gid == self._goal_id or gid in self._finished_goals:
            return  # feedback of a goal already recording, or late feedback of a finished one
        fb = msg.feedback
        try:
            instruction = check_instruction(fb.instruction, required=False)
        except InputRejected:
            self._finished_goals.append(gid)  # not this goal's later feedback either
            raise
        episode_id, extra = fb.episode_id, {}
        try:
            check_episode_id(episode_id)
        except InputRejected as err:  # keep the goal's data under an id of our own
            self._refused("feedback", f"{err}; recording the goal under a new id", error=False)
            episode_id, extra = "", {"goal_episode_id": bounded(fb.episode_id, 128)}
        with self._lock:
            self._goal_id = gid
            self.recorder.start(episode_id or None, instruction, source="policy", **extra, **self._task_metadata())
            name = self.recorder.writer.episode_id
        self.get_logger().info(bounded(f"recording goal '{instruction}' as episode {name}"))

    @guarded("goal_status")
    def _on_status(self, msg: GoalStatusArray) -> None:
        for status in msg.status_list:
            if bytes(status.goal_info.goal_id.uuid) == self._goal_id and status.status in TERMINAL:
                goal_id, self._goal_id = status.goal_info.goal_id, None
                self._finished_goals.append(bytes(goal_id.uuid))
                with self._lock:  # the goal is over: the next one records into its own episode
                    writer = self.recorder.detach()
                request = ExecuteInstruction.Impl.GetResultService.Request(goal_id=goal_id)
                future = self._get_result.call_async(request)
                future.add_done_callback(lambda f, s=status.status, w=writer: self._finish_goal(f, s, w))

    @guarded("goal_result")
    def _finish_goal(self, future, status: int, writer) -> None:
        try:
            reply = future.result()
        except Exception as err:  # noqa: BLE001 - no result: the episode is kept as not successful
            self._refused("goal_result", f"get_result failed: {err!r}", error=False)
            reply = None
        result = reply.result if reply is not None else None
        success = bool(result and result.success and status == GoalStatus.STATUS_SUCCEEDED)
        reason = bounded((result.reason if result else "") or TERMINAL[status])
        path = self.recorder.close(writer, success, reason)
        self.get_logger().info(f"episode {path.name if path else '(empty, discarded)'}: success={success} ({reason})")

    # ---- demonstrations --------------------------------------------------------------------------------
    @guarded("record_demonstration", service=True)
    def _record_demonstration(self, request, response):
        if self.recorder.active:
            response.success, response.message = False, "busy: an episode is being recorded"
            return response
        if not self._run_expert.wait_for_service(timeout_sec=5.0):
            response.success, response.message = False, f"no {self.config.sim_run_expert_service} service"
            return response
        if self.config.task_info_topic:
            # The sim's expert service and its latched task_info are discovered separately: a demonstration
            # asked for right after start-up would otherwise be recorded without its task and seed.
            self._task_info_seen.wait(TASK_INFO_WAIT_S)
        with self._lock:
            self.recorder.start(None, self._task_instruction(), source="scripted_expert", **self._task_metadata())
        done = threading.Event()
        future = self._run_expert.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(EXPERT_TIMEOUT_S):
            future.cancel()
            with self._lock:
                self.recorder.abort()
            response.success, response.message = False, f"the sim's expert gave no answer in {EXPERT_TIMEOUT_S:.0f} s"
            return response
        try:
            expert = future.result()
        except Exception as err:  # noqa: BLE001 - the sim's service failed: nothing usable was demonstrated
            expert, failure = None, f"{type(err).__name__}: {err}"
        else:
            failure = "" if expert is not None else "no answer from the sim's expert"
        if expert is None:
            with self._lock:
                self.recorder.abort()
            response.success, response.message = False, bounded(f"not recorded: {failure}")
            return response
        time.sleep(2.0 / float(self.config.record_rate_hz))  # let the last commanded positions be recorded
        with self._lock:
            path = self.recorder.finish(expert.success, bounded(expert.message or "demonstration"))
        response.success, response.steps = expert.success, expert.steps
        response.message = bounded(f"recorded {path.name if path else 'nothing'}: {expert.message}")
        return response

    @guarded("task_instruction")
    def _on_task_instruction(self, msg: String) -> None:
        self._sim_instruction = check_instruction(msg.data, required=False)

    def _task_instruction(self) -> str:
        return self._sim_instruction

    @guarded("task_info")
    def _on_task_info(self, msg: String) -> None:
        """The sim's task and seed (JSON), kept for the metadata of the episodes recorded from now on."""
        try:
            info = json.loads(msg.data)
        except ValueError as err:
            raise InputRejected(f"task_info is not JSON: {err}") from None
        if not isinstance(info, dict):
            raise InputRejected("task_info must be a JSON object")
        task, seed, suite = info.get("task", ""), info.get("seed", -1), info.get("suite", "")
        if not (isinstance(task, str) and isinstance(suite, str) and isinstance(seed, int) and not isinstance(seed, bool)):
            raise InputRejected(f"task_info: task and suite must be strings, seed an integer: {bounded(msg.data, 120)}")
        self._task_info = {"task": bounded(task, 128), "seed": seed, "suite": bounded(suite, 64)}
        self._task_info_seen.set()

    def _task_metadata(self) -> dict:
        """task/seed/suite of the sim's current episode when the sim told us, else nothing."""
        return {k: self._task_info[k] for k in TASK_INFO_KEYS if k in self._task_info}

    @guarded("demonstration/start")
    def _on_teleop_start(self, msg: String) -> None:
        instruction = check_instruction(msg.data)
        with self._lock:
            if self.recorder.active:  # never cut a running goal's (or demonstration's) episode short
                raise InputRejected(f"busy: a {self.recorder.source} episode is being recorded")
            self.recorder.start(None, instruction, source="teleoperation", **self._task_metadata())

    @guarded("demonstration/stop")
    def _on_teleop_stop(self, msg: Bool) -> None:
        with self._lock:
            if self.recorder.source != "teleoperation":
                raise InputRejected(f"no teleoperation is being recorded ({self.recorder.source or 'idle'})")
            self.recorder.finish(bool(msg.data), "teleoperation")

    # ---- rounds ---------------------------------------------------------------------------------------
    def _new_episodes(self) -> int:
        return sum(1 for path in list_episodes(self.episode_dir) if path.stat().st_mtime > self._round_mark)

    @guarded("trigger_round", service=True)
    def _trigger_round(self, request, response):
        if self.rounds_off:
            response.accepted, response.message = False, self.rounds_off
        elif request.ignore_min_episodes or self._new_episodes() >= self.scheduler.config.min_new_episodes:
            self.scheduler.force()
            response.accepted, response.round = True, self._round + 1
            response.message = "the gate opens at the next check (while the robot is idle)"
        else:
            response.accepted, response.message = False, "not enough new episodes (set ignore_min_episodes)"
        return response

    @guarded("schedule")
    def _schedule_tick(self) -> None:
        now = time.time()
        if self.rounds_off:  # no gate to open, no report to wait for: say so, and count the episodes
            self._publish_status(self._new_episodes())
            return
        try:
            report = read_report(self.episode_dir)
        except (TypeError, ValueError, AttributeError) as err:  # a report file of another version, or garbage
            self._refused("round report", f"unreadable {err!r}", error=False)
            report = None
        if report is not None and report.finished > self._last_report_time:
            self._last_report_time = report.finished
            self._on_round_report(report)
        if self.supervisor is not None:
            self.supervisor.poll()
        new = self._new_episodes()
        open_, reason = self.scheduler.decide(now, new, robot_busy=self.recorder.active)
        write_gate(self.episode_dir, open_, reason)
        if self._state not in (RoundStatus.STATE_DONE, RoundStatus.STATE_FAILED) or open_:
            self._state = RoundStatus.STATE_READY if open_ else gate_state(reason)
        self._message = reason
        self._publish_status(new)

    def _on_round_report(self, report) -> None:
        self._round = report.server_round
        # A report other than done/failed ("skipped") has no state of its own: this tick sets the gate's.
        self._state, self._message = REPORT_STATES.get(report.state, ""), report.message
        self._last_report = report
        self._round_mark = report.finished
        self.scheduler.round_finished(time.time())
        if report.state == "done" and report.checkpoint:
            self._request_checkpoint_load(report.checkpoint)

    def _request_checkpoint_load(self, path: str) -> None:
        if not self._load_checkpoint.service_is_ready():
            self.get_logger().warning(f"policy server's load_checkpoint not available; {path} not loaded")
            return
        future = self._load_checkpoint.call_async(LoadCheckpoint.Request(path=path))
        future.add_done_callback(lambda f: self._checkpoint_loaded(f, path))

    @guarded("load_checkpoint")
    def _checkpoint_loaded(self, future, path: str) -> None:
        reply = future.result()
        self.get_logger().info(bounded(f"load_checkpoint {path}: {reply.success} {reply.message}" if reply
                                       else f"load_checkpoint {path}: no answer", 600))

    def _publish_status(self, new_episodes: int) -> None:
        r = self._last_report
        msg = RoundStatus(robot_id=self.robot_id, round=int(self._round), state=self._state,
                          new_episodes=int(new_episodes), message=bounded(self._message, 1000))
        msg.header.stamp = self.get_clock().now().to_msg()
        if r is not None:
            msg.bytes_up, msg.bytes_down = int(r.bytes_up), int(r.bytes_down)
            msg.participants = int(r.metrics.get("participants", 0))
            msg.metrics = [MetricValue(name=str(k), value=float(v)) for k, v in r.metrics.items()
                           if isinstance(v, (int, float))]
        self.status_pub.publish(msg)

    # ---- Flower SuperNode -------------------------------------------------------------------------------
    def _start_supernode(self):
        from fedvla_fed_client.supernode import SuperNodeSupervisor

        p = self.config
        if not p.insecure and not (p.root_certificates and p.auth_private_key):
            raise ValueError("supernode: set root_certificates and auth_private_key (TLS + node authentication), "
                             "or insecure:=true explicitly")
        supervisor = SuperNodeSupervisor(
            superlink=p.superlink_address, node_config={"robot-id": self.robot_id,
                                                           "episode-dir": str(self.episode_dir),
                                                           "base-checkpoint": p.base_checkpoint},
            root_certificates=p.root_certificates or None, auth_private_key=p.auth_private_key or None,
            insecure=bool(p.insecure), port=int(p.supernode_port) or None,
            log_path=self.episode_dir / "supernode.log", env=trainer_thread_env(int(p.trainer_threads)))
        supervisor.start()
        return supervisor

    def destroy_node(self):
        if self.supervisor is not None:
            self.supervisor.stop()
        self.recorder.abort()
        super().destroy_node()


def trainer_thread_env(threads: int) -> dict[str, str]:
    """Environment capping the trainer's (and ClientApp's) OpenMP/MKL threads; 0 = library default.

    On a computer shared with the robot's other nodes (or, in the sim fleet, with other robots), torch's
    default of one busy-waiting OpenMP thread per core oversubscribes it: measured on the 2-core demo
    machine, 30 local steps took 184 s with two robots training at once, 2.5 s for 10 steps alone.
    """
    if threads < 0:
        raise ValueError(f"trainer_threads must be >= 0, got {threads}")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def main(args=None) -> int:
    """Run the fed client until Ctrl-C; exit 0 (fedvla_ros.node_main). 4 threads: sensors, recording,
    schedule, goals/services."""
    use_short_gil_switch_interval()  # the recorder's sensor callbacks must keep up (see fedvla_ros.gil)
    return run_node(FedClientNode, num_threads=4, args=args)


if __name__ == "__main__":
    sys.exit(main())
