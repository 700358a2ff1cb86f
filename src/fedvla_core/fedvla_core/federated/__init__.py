"""Federated learning without Flower: the wire format, Expert-Driven Aggregation, update validation, a robot's local round."""
