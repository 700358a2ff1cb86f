"""MuJoCo Franka Panda tabletop tasks, scripted experts, Meta-World adapter and the simulated robot node."""
