"""The control loop without ROS: input checks and synchronisation, motion planning, goal refusal and grounding."""
