"""Policy latency: camera frame -> trajectory through the running ROS node, and model.act alone.

    .venv/bin/python benchmarks/policy_latency.py                 # both, on the CPU (writes the JSON)
    .venv/bin/python benchmarks/policy_latency.py --only act --device cuda   # model.act on a GPU, no ROS
    .venv/bin/python benchmarks/policy_latency.py --only act --compile       # also act after compile_act (act_cpu_compiled)

End to end: this script plays the robot. It publishes one frame per camera (same stamp) every
--frame-period seconds plus joint states at 50 Hz, the policy server (a real process with the
default FedVLAConfig, random weights) runs a goal whose control loop waits for each new frame
set, and the latency is the time from publishing the frames to receiving the JointTrajectory
(DDS both ways, image conversion, model.act, motion planning, serialization).

Results are merged into benchmarks/results/policy_latency.json, so a GPU run adds its numbers
next to the CPU ones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "policy_latency.json"
HOME = np.array([0.0, -0.2656, 0.0, -2.4239, 0.0, 0.5883, 0.0])
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
INSTRUCTION = "put the red block in the bowl"


def stats(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=float)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2),
            "min_ms": round(float(a.min()), 2), "max_ms": round(float(a.max()), 2)}


def make_policy(seed: int = 0):
    import torch

    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    torch.manual_seed(seed)
    policy = FedVLAPolicy(FedVLAConfig())
    policy.set_normalization(np.r_[HOME, 1.0].astype(np.float32), np.full(8, 1e-2, np.float32),
                             np.zeros(8, np.float32), np.ones(8, np.float32))
    return policy


def observation(policy, rng) -> dict:
    size = policy.config.image_size
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in policy.config.camera_names},
            "instruction": INSTRUCTION, "proprio": np.r_[HOME, 0.04].astype(np.float32)}


def bench_act(device: str, n: int, warmup: int, compiled: bool = False, cpu_threads: int = 1) -> dict:
    """model.act alone (a fresh observation each call, same instruction); compiled: after compile_act()."""
    import torch

    policy = make_policy().to(device).eval()
    compile_s = policy.compile_act(cpu_threads=cpu_threads) if compiled else None
    rng = np.random.default_rng(0)
    for _ in range(warmup):
        policy.act(observation(policy, rng), cpu_threads=cpu_threads)
    times = []
    for _ in range(n):
        obs = observation(policy, rng)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        policy.act(obs, cpu_threads=cpu_threads)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    out = stats(times)
    out["device"] = device
    out["device_name"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    out["torch_threads"] = torch.get_num_threads()
    out["act_cpu_threads"] = cpu_threads
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    if compiled:
        out["compile_warmup_s"] = round(compile_s, 1)
    return out


def bench_node(n: int, warmup: int, frame_period: float, workdir: Path) -> dict:
    """Camera frames published -> JointTrajectory received, through a real policy_server process."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from fedvla_policy.goal_client import GoalClient
    from fedvla_ros.image_conversion import numpy_to_image

    policy = make_policy()
    ckpt = workdir / "ckpt"
    policy.save_pretrained(str(ckpt))
    cameras, size = list(policy.config.camera_names), policy.config.image_size
    del policy

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(101, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(workdir / "ros_log"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    log = open(workdir / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "fedvla_policy.server_node", "--ros-args", "--params-file",
         str(REPO / "src/fedvla_policy/config/policy_server.yaml"), "-p", f"checkpoint:={ckpt}",
         "-p", "control_rate_hz:=50.0", "-p", f"stale_input_timeout_s:={max(2.0, 4 * frame_period)}",
         "-p", "default_time_limit_s:=3600.0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    rclpy.init()
    node = rclpy.create_node("latency_bench_robot")
    cam_pubs = {c: node.create_publisher(type(numpy_to_image(np.zeros((2, 2, 3), np.uint8))),
                                         f"camera/{c}/image_raw", 5) for c in cameras}
    joint_pub = node.create_publisher(JointState, "joint_states", 5)
    received: list[float] = []
    cond = threading.Condition()

    def on_traj(_msg):
        with cond:
            received.append(time.perf_counter())
            cond.notify_all()

    node.create_subscription(JointTrajectory, "arm_controller/joint_trajectory", on_traj, 50)

    def publish_joints():
        node.get_logger()  # keep the node referenced
        msg = JointState(name=JOINTS, position=[float(x) for x in np.r_[HOME, 0.04]], velocity=[0.0] * 8)
        msg.header.stamp = node.get_clock().now().to_msg()
        joint_pub.publish(msg)

    rng = np.random.default_rng(1)
    frames = [{c: numpy_to_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "rgb8", frame_id=c)
               for c in cameras} for _ in range(8)]

    def publish_frames(k: int) -> float:
        stamp = node.get_clock().now().to_msg()
        msgs = frames[k % len(frames)]
        for c in cameras:
            msgs[c].header.stamp = stamp
        t = time.perf_counter()
        for c in cameras:
            cam_pubs[c].publish(msgs[c])
        return t

    node.create_timer(0.02, publish_joints)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    client = GoalClient()
    latencies, inference = [], []
    try:
        deadline = time.monotonic() + 120
        while not client.wait_for_server(1.0):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("policy server did not start:\n" + (workdir / "server.log").read_text())
        run = None
        for k in range(200):  # frames must have arrived before a goal is accepted
            publish_frames(k)
            time.sleep(0.1)
            run = client.send(INSTRUCTION, max_steps=n + warmup + 10)
            if run.wait_accepted(5.0):
                break
        if not run or not run.accepted:
            raise RuntimeError(f"goal not accepted: {run.rejection_reason if run else ''}")
        time.sleep(1.0)  # let the steps triggered by the acceptance frames pass
        for k in range(n + warmup):
            with cond:
                before = len(received)
            t_pub = publish_frames(k)
            with cond:
                got = cond.wait_for(lambda: len(received) > before, timeout=10.0)
                t_traj = received[before] if got else None
            if t_traj is not None and k >= warmup:
                latencies.append((t_traj - t_pub) * 1e3)
            time.sleep(max(0.0, frame_period - (time.perf_counter() - t_pub)))
        inference = [fb.inference_latency_ms for fb in run.feedback if fb.phase == "running"][warmup:]
        client.cancel(run)
        run.wait(10.0)
    finally:
        client.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.shutdown()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    out = stats(latencies)
    out["lost_frames"] = n - len(latencies)
    out["inference_in_node"] = stats(inference) if inference else {}
    out["frame_period_s"] = frame_period
    out["cameras"], out["image_size"] = cameras, size
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["all", "node", "act"], default="all", help="what to measure")
    parser.add_argument("--device", default="cpu", help="torch device for the model.act benchmark (cpu, cuda)")
    parser.add_argument("--n", type=int, default=100, help="measured samples per benchmark")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured samples first")
    parser.add_argument("--frame-period", type=float, default=0.25, help="seconds between frame sets (node bench)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to merge the results into")
    parser.add_argument("--compile", action="store_true",
                        help="also measure act after policy.compile_act() (key act_<device>_compiled)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="act()'s cpu_threads (1 is its default; rows for another count get the key suffix _t<N>)")
    parser.add_argument("--note", default="", help="text stored as the act row's 'note' (what changed)")
    args = parser.parse_args(argv)

    import torch

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["targets"] = {"end_to_end_cpu_p50_ms": 50.0, "act_h100_p50_ms": 5.0}
    results.setdefault("machines", {})
    results["machines"][args.device] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                        "load_average_1m": os.getloadavg()[0], "torch": torch.__version__,
                                        "torch_threads": torch.get_num_threads(),
                                        "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.only in ("all", "act"):
        key = "act_" + args.device.replace(":", "") + ("" if args.cpu_threads == 1 else f"_t{args.cpu_threads}")
        keys = [(key, False)] + ([(key + "_compiled", True)] if args.compile else [])
        for k, compiled in keys:
            results[k] = bench_act(args.device, args.n, args.warmup, compiled, args.cpu_threads)
            if args.note:
                results[k]["note"] = args.note
            print(f"{k}: {results[k]}")
    if args.only in ("all", "node"):
        if args.device != "cpu":
            print("the end-to-end benchmark runs the node on the CPU; skipping it for", args.device)
        else:
            with tempfile.TemporaryDirectory(prefix="fedvla_latency_") as tmp:
                results["end_to_end_cpu"] = bench_node(args.n, args.warmup, args.frame_period, Path(tmp))
            print(f"end_to_end_cpu: {results['end_to_end_cpu']}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.device == "cpu":
        results["notes"] = (
            f"CPU numbers measured with a 1-minute load average of {load:.1f} on {cores} cores (other jobs "
            "shared the machine); p50/p99 are pessimistic when the load exceeds the core count, and min_ms "
            "approximates an idle machine. end_to_end_cpu.inference_in_node is model.act inside the node.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
