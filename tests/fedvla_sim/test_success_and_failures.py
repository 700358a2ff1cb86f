"""Strict success (released and at rest, like robosuite's Stack) and failure modes read from the sim state."""
import numpy as np
import pytest

from fedvla_sim.env import PandaTabletopEnv
from fedvla_sim.experts import CLOSED, OPEN, ScriptedExpert, rollout_expert
from fedvla_sim.failure_modes import EpisodeMonitor
from fedvla_sim.ik import GraspIK, top_down_rotation
from fedvla_sim.tasks import TASKS, SceneState, in_bowl, on_top_of


def _expert_trace(task: str, seed: int):
    """Run the task's expert; per step (geometric goal reached, success, block held)."""
    env = PandaTabletopEnv(task, seed, render=False)
    block = TASKS[task].objects[0]
    trace = []

    def on_step(obs, action):
        state = env.scene_state()
        geometric = (on_top_of(state.poses, "red_block", "green_block") if task == "stack_red_on_green"
                     else in_bowl(state.poses, block))
        trace.append((geometric, env.success(), block in state.robot_contacts))

    result = rollout_expert(env, on_step=on_step)
    return result, trace


@pytest.mark.parametrize("task", ["stack_red_on_green", "put_red_block_in_bowl"])
def test_block_still_held_over_its_goal_is_not_success(task):
    result, trace = _expert_trace(task, 2)
    assert result["success"]
    held_at_goal = [t for t in trace if t[0] and t[2]]
    assert held_at_goal, "the expert lowers the block onto its goal before it opens"
    assert not any(success for _, success, _ in held_at_goal)
    assert any(success for _, success, held in trace if not held)


def test_success_needs_rest_and_release():
    env = PandaTabletopEnv("stack_red_on_green", 0, render=False)
    poses = env.object_poses()
    poses["red_block"][:3] = poses["green_block"][:3] + [0.0, 0.0, 0.04]
    task = TASKS["stack_red_on_green"]
    assert task.success(SceneState(poses=poses))
    assert not task.success(SceneState(poses=poses, robot_contacts=frozenset({"red_block"})))
    assert not task.success(SceneState(poses=poses, speeds={"red_block": 0.2}))
    assert not task.success(SceneState(poses=poses, speeds={"green_block": 0.2}))


def test_pick_up_counts_only_while_held():
    env = PandaTabletopEnv("pick_up_green_block", 1, render=False)
    poses = env.object_poses()
    poses["green_block"][2] = 0.15
    task = TASKS["pick_up_green_block"]
    assert not task.success(SceneState(poses=poses))  # a block in the air that no finger holds: falling
    assert task.success(SceneState(poses=poses, finger_contacts={"green_block": 2},
                                   robot_contacts=frozenset({"green_block"})))


# --- failure modes ----------------------------------------------------------------------------------------
def _run(env, actions, monitor):
    for action in actions:
        env.step(action, render=False)
        monitor.update(env.scene_state(), env.contacts(), env.robot_table_force())
    return monitor


def _expert_actions(env, recipe_task: str, override=None, steps: int = 120):
    """Actions of `recipe_task`'s expert on `env` (whose task may differ); `override(k, action)` edits them."""
    real = env.task
    env.task = TASKS[recipe_task]
    expert = ScriptedExpert(env)
    env.task = real
    for k in range(steps):
        action = expert.act()
        if action is None:
            action = expert.hold_action()
        yield override(k, action) if override else action


def test_wrong_block_is_wrong_object():
    env = PandaTabletopEnv("put_red_block_in_bowl", 3, render=False)
    monitor = EpisodeMonitor(env.task, env.scene_state())
    _run(env, _expert_actions(env, "put_blue_block_in_bowl", steps=90), monitor)
    assert not env.success() and monitor.failure_mode() == "wrong_object"


def test_block_let_go_in_the_air_is_a_drop():
    env = PandaTabletopEnv("pick_up_green_block", 3, render=False)
    monitor = EpisodeMonitor(env.task, env.scene_state())
    lifted_at = []

    def open_when_lifted(k, action):
        if env.object_poses()["green_block"][2] > 0.08 or lifted_at:
            lifted_at.append(k)
            action = action.copy()
            action[7] = OPEN
        return action

    _run(env, _expert_actions(env, "pick_up_green_block", open_when_lifted, steps=70), monitor)
    assert lifted_at and not env.success()
    assert monitor.failure_mode() == "drop" and monitor.summary(False)["grasped"] == {"green_block": True}


def test_frozen_arm_missed_its_grasp_and_expert_has_no_failure():
    env = PandaTabletopEnv("stack_red_on_green", 4, render=False)
    monitor = EpisodeMonitor(env.task, env.scene_state())
    hold = np.concatenate([env.joint_positions()[:7], [OPEN]])
    _run(env, [hold] * 20, monitor)
    assert monitor.failure_mode() == "missed_grasp" and monitor.events == {}

    env.reset(4)
    monitor = EpisodeMonitor(env.task, env.scene_state())
    _run(env, _expert_actions(env, "stack_red_on_green", steps=100), monitor)
    assert env.success() and monitor.events == {}
    assert monitor.summary(True)["failure_mode"] is None


def test_holding_the_block_above_the_goal_is_a_timeout():
    env = PandaTabletopEnv("stack_red_on_green", 5, render=False)
    monitor = EpisodeMonitor(env.task, env.scene_state())

    def never_open(k, action):
        action = action.copy()
        action[7] = min(action[7], CLOSED) if k > 20 else action[7]
        return action

    _run(env, _expert_actions(env, "stack_red_on_green", never_open, steps=100), monitor)
    assert not env.success()
    assert monitor.failure_mode() == "timeout"


def test_pressing_into_the_table_is_a_collision():
    env = PandaTabletopEnv("pick_up_green_block", 0, render=False)
    monitor = EpisodeMonitor(env.task, env.scene_state())
    ik, q = GraspIK(), env.joint_positions()[:7]
    poses = env.object_poses()
    spots = [np.array([x, y]) for x in (0.4, 0.6) for y in (-0.15, 0.0, 0.15)]
    far = max(spots, key=lambda p: min(np.linalg.norm(p - poses[o][:2]) for o in poses))  # away from every object
    actions = []
    for k in range(20):  # the closed fingers lowered onto the table, then driven 13 cm below its top
        q = ik.solve(q, np.array([far[0], far[1], max(0.15 - 0.02 * (k - 5), -0.13) if k > 5 else 0.15]),
                     top_down_rotation(0.0))
        actions.append(np.concatenate([q, [CLOSED]]))
    _run(env, actions, monitor)
    assert monitor.failure_mode() == "collision"
