"""ROS 2 helpers shared by every node of the stack: the node main loop, message conversions, GIL settings."""
