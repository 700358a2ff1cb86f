"""The FedVLA model: pure PyTorch + transformers (never rclpy).

`FedVLAConfig` holds every architectural choice (FFN kind, IOSP on/off, sizes); `FedVLAPolicy` is the
PreTrainedModel with `forward(batch) -> losses`, `act(observation) -> action chunk`, and the
stem/trunk/head parameter groups that federation ships.
"""
from .configuration import FFN_KINDS, FedVLAConfig, default_language_model_path
from .modeling import GROUP_NAMES, FedVLAPolicy

__all__ = ["FFN_KINDS", "GROUP_NAMES", "FedVLAConfig", "FedVLAPolicy", "default_language_model_path"]
