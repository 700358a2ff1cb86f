"""The FedVLA Flower app: ClientApp, ServerApp, strategies and the robot's warm local trainer.

A thin shell on fedvla_core.federated (the wire format, EDA, update validation, local rounds). The
folder above holds the app's pyproject.toml, so `flwr run src/fedvla_flower <federation>` packages it.
"""
