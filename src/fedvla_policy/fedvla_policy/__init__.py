"""The FedVLA vision-language-action policy (IOSP + DGMoE) and its ROS 2 ExecuteInstruction action server."""
