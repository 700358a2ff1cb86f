"""Episode log: one crash-safe MCAP file (ROS 2 schemas) per episode, and a torch dataset over them.

The files a robot logs are the files its ClientApp trains on, and the same files that
``fedvla-sim record`` writes for demonstrations. No rclpy here: messages are encoded with the
installed ROS 2 .msg definitions through rosbags, so the files open in ``mcap``, rosbags'
``AnyReader``, Foxglove and ``ros2 bag``. See :mod:`.format` for the topics and metadata.
"""
from .dataset import EpisodeDataset
from .reader import Episode, list_episodes, read_episode, read_metadata
from .retention import apply_retention
from .writer import EpisodeWriter, new_episode_id

__all__ = ["Episode", "EpisodeDataset", "EpisodeWriter", "apply_retention", "list_episodes",
           "new_episode_id", "read_episode", "read_metadata"]
