"""Per-robot fleet-learning node: episode logging, round scheduling, and the Flower ClientApp."""
