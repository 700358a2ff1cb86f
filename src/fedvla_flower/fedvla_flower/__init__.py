"""The FedVLA Flower app, in the layout `flwr new` makes (the folder above holds its pyproject.toml).

* ``task.py``: what client and server share (the initial model, records <-> numpy, the run config
  turned into the core's LocalRoundConfig);
* ``client_app.py``: the robot's ClientApp; ``server_app.py``: the ServerApp and its run config;
* ``strategies.py``: FedAvg, FedProx, Expert-Driven Aggregation (FedPart an option of each);
* ``local_trainer.py``: the robot's warm local trainer process; ``trainer_ipc.py``: its hand-off
  with the ClientApp (Unix socket, discovery, pickled protocol).

A thin shell on fedvla_core.federated (the wire format and keys, EDA, update validation, local
rounds): `flwr run src/fedvla_flower <federation>` packages it.
"""
