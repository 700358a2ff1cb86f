"""The FedVLA model: pure PyTorch + transformers (never rclpy).

`FedVLAConfig` holds every architectural choice (FFN kind, IOSP on/off, sizes); `FedVLAPolicy` is the
PreTrainedModel with `forward(batch) -> losses`, `act(observation) -> action chunk`, and accessors
for the stem/trunk/head parameter groups that federation ships (defined in fedvla_core.federated.split).
Beside the architecture: processors (normalization, relative actions, observation -> batch),
expert_stats (routing counts), threads (act()'s CPU thread count).
"""
from ..federated.split import GROUP_NAMES
from .configuration import FFN_KINDS, FedVLAConfig, default_language_model_path
from .modeling import FedVLAPolicy

__all__ = ["FFN_KINDS", "GROUP_NAMES", "FedVLAConfig", "FedVLAPolicy", "default_language_model_path"]
