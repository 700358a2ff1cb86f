"""sensor_msgs/Image <-> numpy, for the encodings the stack uses (rgb8, bgr8, mono8).

Why our own converter: the only cv_bridge on PyPI (a port of the ROS 1 package) is broken with
numpy 2, which the ROS 2 wheels require. A real ROS 2 install ships a working cv_bridge; we use
it when it imports and behaves, and fall back to the few lines below otherwise. Both paths give
the same arrays: HxWx3 uint8 for colour (channel order as the encoding says), HxW for mono8.

The fallback honours ``step`` (row padding) and ``is_bigendian`` (irrelevant for 8-bit data but
checked so that a 16-bit image is refused instead of misread).
"""
from __future__ import annotations

import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
#: Largest accepted image side (pixels): a bigger header is a fault, not a camera (and would cost memory).
MAX_IMAGE_SIDE = 4096


class UnsupportedEncodingError(ValueError):
    """The image encoding is not one of SUPPORTED_ENCODINGS."""


def _load_cv_bridge():
    """Return a CvBridge instance when a working one is importable, else None."""
    try:
        from cv_bridge import CvBridge  # type: ignore
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    try:
        bridge = CvBridge()
        from sensor_msgs.msg import Image

        probe = bridge.cv2_to_imgmsg(np.zeros((2, 3, 3), np.uint8), encoding="rgb8")
        back = bridge.imgmsg_to_cv2(probe, desired_encoding="passthrough")
        if not isinstance(probe, Image) or back.shape != (2, 3, 3):
            return None
        return bridge
    except Exception:  # noqa: BLE001 - the PyPI port fails here under numpy 2
        return None


_BRIDGE = _load_cv_bridge()


def using_cv_bridge() -> bool:
    """True when conversions go through cv_bridge rather than the built-in converter."""
    return _BRIDGE is not None


def _check_encoding(encoding: str) -> None:
    if encoding not in _CHANNELS:
        raise UnsupportedEncodingError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")


def check_image_layout(encoding: str, height: int, width: int, step: int, data_bytes: int) -> None:
    """Refuse (ValueError, the text says why) a header that does not describe its data exactly:
    unsupported encoding, an empty image or a side over MAX_IMAGE_SIDE, a step shorter than a row,
    or data that is not exactly step * height bytes (ragged)."""
    _check_encoding(encoding)
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise ValueError(f"image size {width}x{height} is outside 1..{MAX_IMAGE_SIDE} pixels per side")
    row_bytes = width * _CHANNELS[encoding]
    if step < row_bytes:
        raise ValueError(f"image step {step} is smaller than width*channels = {row_bytes}")
    if data_bytes != step * height:
        raise ValueError(f"image data has {data_bytes} bytes, expected step*height = {step * height}")


def image_to_numpy(msg) -> np.ndarray:
    """Convert a sensor_msgs/Image to a numpy array (HxWx3 for rgb8/bgr8, HxW for mono8).

    The header is checked first (check_image_layout), on both paths, so a malformed message is a
    ValueError that says why, never an exception from deep inside numpy or cv_bridge.
    The returned array owns its memory (a copy), so it stays valid after the message is reused.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_image_layout(msg.encoding, height, width, step, len(msg.data))
    if _BRIDGE is not None:
        return np.array(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough"), copy=True)
    channels = _CHANNELS[msg.encoding]
    row_bytes = width * channels
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    rows = data.reshape(height, step)[:, :row_bytes]
    if channels == 1:
        return rows.reshape(height, width).copy()
    return rows.reshape(height, width, channels).copy()


def numpy_to_image(array: np.ndarray, encoding: str = "rgb8", frame_id: str = "", stamp=None):
    """Convert a uint8 numpy image to a sensor_msgs/Image with a correct ``step``.

    rgb8/bgr8 expect HxWx3; mono8 expects HxW (or HxWx1). The channel order is not changed:
    pass an RGB array with "rgb8" and a BGR array with "bgr8".
    """
    from sensor_msgs.msg import Image

    _check_encoding(encoding)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"image dtype must be uint8 for {encoding}, got {array.dtype}")
    channels = _CHANNELS[encoding]
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels == 3 and array.shape[2] != 3):
        raise ValueError(f"image shape {array.shape} does not match encoding {encoding}")
    array = np.ascontiguousarray(array)
    if _BRIDGE is not None:
        msg = _BRIDGE.cv2_to_imgmsg(array, encoding=encoding)
    else:
        msg = Image()
        msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
        msg.encoding = encoding
        msg.is_bigendian = 0
        msg.step = int(array.strides[0])
        msg.data = array.tobytes()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Return an HxWx3 RGB uint8 image from an array in ``encoding`` (what the policy consumes)."""
    _check_encoding(encoding)
    if encoding == "rgb8":
        return array
    if encoding == "bgr8":
        return np.ascontiguousarray(array[:, :, ::-1])
    return np.repeat(array[:, :, None], 3, axis=2)
