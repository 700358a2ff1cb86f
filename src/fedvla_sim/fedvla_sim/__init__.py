"""MuJoCo Franka Panda tabletop tasks, scripted experts, Meta-World adapter and the simulated robot node.

The core (everything but `robot_node`) never imports rclpy. Main entry points, imported lazily
so that `import fedvla_sim` stays cheap:

- `PandaTabletopEnv(task, seed, camera_size=128, camera_names=("agentview", "wrist"))`
- `TASKS` / `get_task(name)`: the language-conditioned tabletop tasks
- `ScriptedExpert`, `rollout_expert`: the mink-IK experts
- `MetaWorldEnv(task, seed)`, `rollout_metaworld_expert`: Meta-World v3 (door-lock, drawer-close,
  sweep-into, window-open)
- `SimRobot`, `SimRobotConfig`: the physics-paced robot behind the ROS node
"""
from importlib import import_module

_EXPORTS = {
    "PandaTabletopEnv": "fedvla_sim.env",
    "TASKS": "fedvla_sim.tasks",
    "get_task": "fedvla_sim.tasks",
    "ScriptedExpert": "fedvla_sim.experts",
    "rollout_expert": "fedvla_sim.experts",
    "MetaWorldEnv": "fedvla_sim.metaworld_env",
    "METAWORLD_TASKS": "fedvla_sim.metaworld_env",
    "rollout_metaworld_expert": "fedvla_sim.metaworld_env",
    "SimRobot": "fedvla_sim.sim_robot",
    "SimRobotConfig": "fedvla_sim.sim_robot",
    "TrajectoryFollower": "fedvla_sim.trajectory",
    "TrajectoryRejected": "fedvla_sim.trajectory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedvla_sim' has no attribute {name!r}")
