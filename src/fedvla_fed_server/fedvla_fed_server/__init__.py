"""Flower ServerApp and strategies: Expert-Driven Aggregation, FedAvg, FedProx, FedPart."""
