"""Simulation rates on this machine: physics steps/s and control steps/s with cameras rendering.

For the Panda tabletop (2 cameras) and one Meta-World task (its 3 cameras, and 2 of them for a
like-for-like comparison), at 128x128 by default:

- physics_steps_per_s: bare `mj_step` on the scene's model;
- control_steps_per_s_no_render: env.step (Panda: 50 physics steps per 0.1 s control step);
- control_steps_per_s_<n>cams: env.step plus rendering n cameras, the rate at which
  demonstrations are recorded and a policy can be evaluated;
- expert_control_steps_per_s_2cams (Panda): the same with the scripted expert's IK in the loop.

Actions are a recorded expert trajectory replayed in a loop, so the arm really moves.
With --expert-seeds N it also records every task's scripted-expert success rate over seeds
0..N-1 (no rendering), the numbers the issue's closing note asks for.
Writes benchmarks/results/sim_rate.json.
    MUJOCO_GL=egl python benchmarks/sim_rate.py [--size 128] [--seconds 5] [--expert-seeds 50]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "sim_rate.json"


def _rate(fn, seconds: float, min_iters: int = 5) -> float:
    """Calls of `fn` per second, timed over at least `seconds` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def _physics_rate(model: mujoco.MjModel, data: mujoco.MjData, seconds: float) -> float:
    return 1000 * _rate(lambda: mujoco.mj_step(model, data, nstep=1000), seconds)


def bench_panda(size: int, seconds: float, task: str) -> dict:
    from fedvla_sim.env import PandaTabletopEnv
    from fedvla_sim.experts import ScriptedExpert, rollout_expert

    env = PandaTabletopEnv(task, 0, camera_size=size)
    actions: list[np.ndarray] = []
    env._want_render = False
    rollout_expert(env, on_step=lambda obs, a: actions.append(a))
    env._want_render = True
    data = mujoco.MjData(env.model)
    mujoco.mj_copyData(data, env.model, env.data)
    physics = _physics_rate(env.model, data, seconds)

    def replay(render: bool):
        state = {"k": 0}

        def one():
            if state["k"] == len(actions):
                env.reset(0)
                state["k"] = 0
            env._want_render = render
            env.step(actions[state["k"]])
            state["k"] += 1
        return one

    env.reset(0)
    no_render = _rate(replay(False), seconds)
    env.reset(0)
    with_cams = _rate(replay(True), seconds)

    env.reset(0)
    expert = {"e": ScriptedExpert(env)}

    def expert_step():
        action = expert["e"].act()
        if action is None:
            env.reset(0)
            expert["e"] = ScriptedExpert(env)
            action = expert["e"].act()
        env.step(action)

    env._want_render = True
    with_expert = _rate(expert_step, seconds)
    env.close()
    return {"task": task, "cameras": list(env.config.camera_names), "camera_size": size,
            "physics_dt_s": env.physics_dt, "control_dt_s": env.config.control_dt,
            "physics_steps_per_s": round(physics), "control_steps_per_s_no_render": round(no_render, 1),
            "control_steps_per_s_2cams": round(with_cams, 1),
            "expert_control_steps_per_s_2cams": round(with_expert, 1),
            "real_time_factor_2cams": round(with_cams * env.config.control_dt, 2)}


def bench_metaworld(size: int, seconds: float, task: str) -> dict:
    from fedvla_sim.metaworld_env import DEFAULT_CAMERAS, MetaWorldEnv

    env = MetaWorldEnv(task, 0, camera_size=size, render=False)
    policy = env.expert()
    data = mujoco.MjData(env.env.model)
    mujoco.mj_copyData(data, env.env.model, env.env.data)
    physics = _physics_rate(env.env.model, data, seconds)

    def stepper(cameras):
        def one():
            if env.steps >= 400 or env.success():
                env.reset(0)
            env.step(policy.act())
            for cam in cameras:
                env.render(cam)
        return one

    env.reset(0)
    no_render = _rate(stepper(()), seconds)
    env.reset(0)
    three = _rate(stepper(DEFAULT_CAMERAS), seconds)
    env.reset(0)
    two = _rate(stepper(DEFAULT_CAMERAS[:2]), seconds)
    dt_s = env.control_dt
    env.close()
    return {"task": task, "cameras": list(DEFAULT_CAMERAS), "camera_size": size, "control_dt_s": dt_s,
            "physics_steps_per_s": round(physics), "control_steps_per_s_no_render": round(no_render, 1),
            "control_steps_per_s_3cams": round(three, 1), "control_steps_per_s_2cams": round(two, 1)}


def expert_success(seeds: int, metaworld_seeds: int) -> dict:
    """Scripted-expert success rate of every task (Panda over `seeds` seeds, Meta-World over `metaworld_seeds`)."""
    from fedvla_sim.env import PandaTabletopEnv
    from fedvla_sim.experts import rollout_expert
    from fedvla_sim.metaworld_env import METAWORLD_TASKS, MetaWorldEnv, rollout_metaworld_expert
    from fedvla_sim.tasks import TASKS

    out = {"panda": {}, "metaworld": {}}
    for name in TASKS:
        env = PandaTabletopEnv(name, 0, render=False)
        ok = []
        for seed in range(seeds):
            env.reset(seed)
            ok.append(rollout_expert(env)["success"])
        out["panda"][name] = {"seeds": seeds, "success_rate": sum(ok) / seeds,
                              "failed_seeds": [s for s, good in enumerate(ok) if not good]}
        print(name, out["panda"][name])
    for name in METAWORLD_TASKS:
        env = MetaWorldEnv(name, 0, render=False)
        ok = []
        for seed in range(metaworld_seeds):
            env.reset(seed)
            ok.append(rollout_metaworld_expert(env)["success"])
        out["metaworld"][name] = {"seeds": metaworld_seeds, "success_rate": sum(ok) / metaworld_seeds,
                                  "failed_seeds": [s for s, good in enumerate(ok) if not good]}
        print(name, out["metaworld"][name])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="Camera height and width, pixels.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Timing window per measurement, seconds.")
    parser.add_argument("--panda-task", default="put_red_block_in_bowl", help="Panda task to time.")
    parser.add_argument("--metaworld-task", default="door-lock", help="Meta-World task to time.")
    parser.add_argument("--out", default=str(RESULT), help="Output JSON path.")
    parser.add_argument("--expert-seeds", type=int, default=0,
                        help="Also measure expert success over this many seeds per Panda task (0: skip).")
    parser.add_argument("--metaworld-expert-seeds", type=int, default=20,
                        help="Seeds per Meta-World task for the expert success rate (with --expert-seeds).")
    args = parser.parse_args()

    panda = bench_panda(args.size, args.seconds, args.panda_task)
    print("panda", panda)
    metaworld = bench_metaworld(args.size, args.seconds, args.metaworld_task)
    print("metaworld", metaworld)
    result = {
        "benchmark": "sim_rate",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "mujoco": mujoco.__version__,
                    "mujoco_gl": os.environ.get("MUJOCO_GL"), "load_avg_1min": os.getloadavg()[0]},
        "target": {"panda_control_steps_per_s_2cams": 30},
        "meets_target": panda["control_steps_per_s_2cams"] >= 30,
        "panda": panda,
        "metaworld": metaworld,
    }
    if args.expert_seeds > 0:
        result["expert_success"] = expert_success(args.expert_seeds, args.metaworld_expert_seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
