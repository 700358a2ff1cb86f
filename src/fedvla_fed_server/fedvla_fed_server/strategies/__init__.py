"""Server-side aggregation strategies (Flower Message API) for the FedVLA trunk."""
from .eda import cosine_similarity_matrix, expert_client_weights, layer_client_weights
from .strategies import (STRATEGIES, ExpertDrivenAggregation, FedVLAFedAvg, FedVLAFedProx, arrays_to_numpy,
                         make_strategy, numpy_to_arrays)
from .validation import check_update, layer_expert_sizes, parse_counts

__all__ = ["STRATEGIES", "ExpertDrivenAggregation", "FedVLAFedAvg", "FedVLAFedProx", "arrays_to_numpy",
           "check_update", "cosine_similarity_matrix", "expert_client_weights", "layer_client_weights",
           "layer_expert_sizes", "make_strategy", "numpy_to_arrays", "parse_counts"]
