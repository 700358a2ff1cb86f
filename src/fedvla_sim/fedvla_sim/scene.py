"""The tabletop scene: a Franka Panda (gymnasium-robotics MJCF) on a table with three blocks and a bowl.

The robot's MJCF ships inside the `gymnasium-robotics` wheel, so nothing is downloaded or vendored.
We rewrite its text before compiling because two things only work when they are in the XML itself:
`gravcomp` on the links (setting it after compile has no effect) and the joint damping (the kitchen
model's damping is too high to track a reference). We also rename the joints to the ROS names
(`panda_joint1..7`, `panda_finger_joint1/2`), add a wrist camera and a grasp site, and turn off
shadows and reflections, which dominate rendering cost on a CPU (llvmpipe).
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np

# The joints and their limits are the embodiment's. ROS_JOINT_NAMES (published: the 7 arm joints +
# the first finger, the second mirrors it like the real hand) is its JOINT_NAMES, kept under the
# sim's name for the sim's nodes and tests.
from fedvla_core.embodiment import ARM_JOINTS
from fedvla_core.embodiment import JOINT_NAMES as ROS_JOINT_NAMES  # noqa: F401

# A comfortable home pose, gripper pointing down; also the IK seed (a bad seed sticks at joint 5's limit).
ARM_HOME = np.array([0.0, -0.2656, 0.0, -2.4239, 0.0, 0.5883, 0.0])
OBJECTS = ("red_block", "green_block", "blue_block", "bowl")
BLOCK_HALF = 0.02
TABLE_TOP_Z = 0.0
# Colour of every object, used in the XML and available to task code.
OBJECT_RGBA = {
    "red_block": "0.85 0.15 0.12 1",
    "green_block": "0.15 0.7 0.2 1",
    "blue_block": "0.15 0.3 0.85 1",
    "bowl": "0.85 0.85 0.9 1",
}


def franka_assets_dir() -> Path:
    """Folder of the Panda MJCF inside the installed gymnasium-robotics wheel (found without importing it).

    FEDVLA_PANDA_ASSETS may point at a copy of that folder instead (e.g. on a GPU machine where
    carrying the whole 26 MB wheel is wasteful).
    """
    override = os.environ.get("FEDVLA_PANDA_ASSETS")
    if override:
        path = Path(override)
        if not (path / "chain.xml").exists():
            raise RuntimeError(f"FEDVLA_PANDA_ASSETS={override} has no chain.xml")
        return path
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or spec.origin is None:
        raise RuntimeError("gymnasium-robotics is not installed: it provides the Franka Panda MJCF")
    path = Path(spec.origin).parent / "envs" / "assets" / "kitchen_franka" / "franka_assets"
    if not (path / "chain.xml").exists():
        raise RuntimeError(f"Panda MJCF not found at {path}")
    return path


def _include_body(text: str) -> str:
    """The contents of a <mujocoinclude> file, without the wrapper and comments."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    match = re.search(r"<mujocoinclude>(.*)</mujocoinclude>", text, flags=re.S)
    if match is None:
        raise RuntimeError("unexpected Panda MJCF layout: no <mujocoinclude>")
    return match.group(1)


def _robot_xml(assets: Path, arm_damping: float, forearm_damping: float,
               visual_meshes: str = "fast") -> tuple[str, str, str]:
    """(asset+default block, kinematic chain, actuators) of the Panda, rewritten for this scene."""
    asset_xml = _include_body((assets / "assets.xml").read_text())
    asset_xml = re.sub(r"<compiler[^>]*/>", "", asset_xml)
    asset_xml = re.sub(r"<option[^>]*/>", "", asset_xml)
    asset_xml = re.sub(r"<size[^>]*/>", "", asset_xml)
    asset_xml = asset_xml.replace('file="collision/', f'file="{assets}/meshes/collision/')
    # The visual meshes have ~134k triangles, which llvmpipe rasterises at a third of the speed of the
    # ~2.5k-triangle collision meshes; at 128x128 the difference is hardly visible, so "fast" uses those.
    visual_dir = "visual" if visual_meshes == "detailed" else "collision"
    asset_xml = asset_xml.replace('file="visual/', f'file="{assets}/meshes/{visual_dir}/')
    asset_xml = re.sub(r'(<default class="panda_arm">\s*<joint damping=")[^"]*"', rf'\g<1>{arm_damping}"', asset_xml)
    asset_xml = re.sub(r'(<default class="panda_forearm">\s*<joint damping=")[^"]*"', rf'\g<1>{forearm_damping}"', asset_xml)
    # Fingers: the kitchen model's armature of 5 makes them crawl; keep a modest damping.
    asset_xml = asset_xml.replace("<joint damping=\"100\" armature='5'/>", '<joint damping="10" armature="0.1"/>')

    chain = _include_body((assets / "chain.xml").read_text())
    chain = chain.replace("robot:panda0_", "panda_")
    chain = re.sub(r'<body name="(panda0_[a-z0-9]+)"', r'<body name="\1" gravcomp="1"', chain)
    # Wrist camera behind the hand, looking down the gripper; grasp site between the finger pads.
    wrist_pos = (0.055, -0.055, 0.11)
    wrist_xyaxes = _lookat_xyaxes(wrist_pos, (0.0, 0.0, 0.32), up=(0.707, -0.707, 0.0))
    hand_extras = (
        '<site name="grasp" pos="0 0 0.235" quat="0.92388 0 0 -0.382683" size="0.005" rgba="1 0 0 0" group="4"/>'
        f'<camera name="wrist" pos="{wrist_pos[0]} {wrist_pos[1]} {wrist_pos[2]}" xyaxes="{wrist_xyaxes}" fovy="80"/>'
    )
    chain = chain.replace("<site name='end_effector'", hand_extras + "<site name='end_effector'", 1)

    actuator = _include_body((assets / "actuator.xml").read_text()).replace("robot:panda0_", "panda_")
    return asset_xml, chain, actuator


def _lookat_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> str:
    """MJCF `xyaxes` for a camera at `pos` looking at `target`, `up` pointing up in the image."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def _block_xml(name: str) -> str:
    h = BLOCK_HALF
    return (
        f'<body name="{name}" pos="0.5 0 {h}"><freejoint name="{name}_joint"/>'
        f'<geom name="{name}_geom" type="box" size="{h} {h} {h}" rgba="{OBJECT_RGBA[name]}" mass="0.05" '
        f'friction="1.5 0.01 0.001" condim="4" solref="0.01 1"/></body>'
    )


def _bowl_xml() -> str:
    """An open square bowl (a tray): floor plus four low walls, heavy so the arm does not drag it."""
    inner, wall, height = 0.06, 0.008, 0.03
    o = inner + wall
    rgba = OBJECT_RGBA["bowl"]
    geoms = [f'<geom name="bowl_floor" type="box" size="{o} {o} 0.004" pos="0 0 0.004" rgba="{rgba}" mass="0.5"/>']
    for i, (x, y, sx, sy) in enumerate([(o, 0, wall, o), (-o, 0, wall, o), (0, o, o, wall), (0, -o, o, wall)]):
        geoms.append(
            f'<geom name="bowl_wall{i}" type="box" size="{sx} {sy} {height / 2}" pos="{x} {y} {height / 2}" '
            f'rgba="{rgba}" mass="0.2"/>'
        )
    return f'<body name="bowl" pos="0.5 0.2 0"><freejoint name="bowl_joint"/>{"".join(geoms)}</body>'


def build_scene_xml(arm_damping: float = 5.0, forearm_damping: float = 2.0, with_objects: bool = True,
                    visual_meshes: str = "fast") -> str:
    """The full MJCF of the tabletop scene as a string (meshes referenced by absolute path).

    `with_objects=False` gives the robot and table only: the model the IK solver works on, so
    that its configuration is exactly the robot's joints. `visual_meshes` is "fast" (the
    low-poly collision meshes, 3x faster to render on a CPU) or "detailed" (the visual meshes).
    """
    if visual_meshes not in ("fast", "detailed"):
        raise ValueError(f"visual_meshes must be 'fast' or 'detailed', got {visual_meshes!r}")
    assets = franka_assets_dir()
    asset_xml, chain, actuator = _robot_xml(assets, arm_damping, forearm_damping, visual_meshes)
    agent_pos = np.array([1.05, 0.0, 0.55])
    agent_xyaxes = _lookat_xyaxes(agent_pos, np.array([0.45, 0.0, 0.08]))
    objects = "".join(_block_xml(n) for n in OBJECTS if n != "bowl") + _bowl_xml() if with_objects else ""
    return f"""<mujoco model="fedvla_panda_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <quality shadowsize="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <global offwidth="640" offheight="640"/>
  </visual>
  {asset_xml}
  <asset>
    <material name="table_mat" rgba="0.55 0.42 0.3 1" reflectance="0"/>
    <material name="floor_mat" rgba="0.3 0.3 0.32 1" reflectance="0"/>
  </asset>
  <worldbody>
    <light name="top" pos="0.4 0 1.5" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor_mat"/>
    <geom name="table" type="box" size="0.5 0.6 0.02" pos="0.45 0 -0.02" material="table_mat" friction="1 0.01 0.001"/>
    <camera name="agentview" pos="{agent_pos[0]} {agent_pos[1]} {agent_pos[2]}" xyaxes="{agent_xyaxes}" fovy="55"/>
    {chain}
    {objects}
  </worldbody>
  {actuator}
</mujoco>
"""


def load_model(with_objects: bool = True, visual_meshes: str = "fast"):
    """Compile the scene into a `mujoco.MjModel`."""
    import mujoco

    return mujoco.MjModel.from_xml_string(build_scene_xml(with_objects=with_objects, visual_meshes=visual_meshes))


def arm_position_limits() -> tuple[list[float], list[float]]:
    """(lower, upper) range in rad of each arm joint of the sim Panda, from its compiled MJCF.

    The MJCF's ranges differ from the Panda datasheet (joint 4 stops at -0.4, joint 6 spans
    [-1.66, 2.11]), and the sim's trajectory follower rejects points outside them, so a policy
    server driving the sim must plan within these (the bringup passes them as parameters).
    """
    model = load_model(with_objects=False)
    ranges = [model.joint(name).range for name in ARM_JOINTS]
    return [float(r[0]) for r in ranges], [float(r[1]) for r in ranges]

