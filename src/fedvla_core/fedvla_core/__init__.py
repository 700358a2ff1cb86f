"""The FedVLA core: model, training, episodes, the control loop and federated aggregation.

Plain Python and PyTorch. Nothing under this package imports rclpy or flwr (a test checks it):
the ROS packages (fedvla_policy, fedvla_fed_client, fedvla_sim, fedvla_ros) and the Flower app
(fedvla_flower) are adapters around it, and its dependencies point only outwards to libraries.

    fedvla_core.model       FedVLAConfig, FedVLAPolicy (IOSP + DGMoE), encoders, experts
    fedvla_core.training    the training engine (device-resident data, static MoE dispatch)
    fedvla_core.episodes    the MCAP episode format: writer, reader, dataset, recorder
    fedvla_core.control     inputs, motion, the goal runner: goal text + snapshots -> trajectories
    fedvla_core.federated   the stem/trunk/head split on the wire, EDA, update validation, local rounds
"""
