"""sensor_msgs/Image <-> numpy: round trips, step padding, channel order, clear errors."""
import numpy as np
import pytest
from sensor_msgs.msg import Image

from fedvla_ros.image_conversion import (SUPPORTED_ENCODINGS, UnsupportedEncodingError, image_to_numpy,
                                            numpy_to_image, to_rgb)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("encoding,shape", [("rgb8", (5, 7, 3)), ("bgr8", (4, 6, 3)), ("mono8", (3, 9))])
def test_round_trip_and_step(encoding, shape):
    array = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    msg = numpy_to_image(array, encoding, frame_id="cam")
    channels = 1 if encoding == "mono8" else 3
    assert (msg.height, msg.width, msg.encoding) == (shape[0], shape[1], encoding)
    assert msg.step == shape[1] * channels
    assert len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == "cam"
    back = image_to_numpy(msg)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_row_padding_is_skipped():
    """A publisher may pad rows (step > width * channels); the padding must not leak into pixels."""
    h, w = 3, 4
    array = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    padded = np.zeros((h, w * 3 + 5), np.uint8)
    padded[:, : w * 3] = array.reshape(h, w * 3)
    padded[:, w * 3:] = 255
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3 + 5, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), array)


def test_bgr_to_rgb_and_mono_to_rgb():
    rgb = RNG.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1].copy()
    np.testing.assert_array_equal(to_rgb(image_to_numpy(numpy_to_image(bgr, "bgr8")), "bgr8"), rgb)
    mono = RNG.integers(0, 256, size=(2, 3), dtype=np.uint8)
    out = to_rgb(mono, "mono8")
    assert out.shape == (2, 3, 3) and np.all(out[:, :, 1] == mono)


def test_non_contiguous_input_gets_a_correct_step():
    big = RNG.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    view = big[::2, ::2]  # strides do not match a packed image
    msg = numpy_to_image(view, "rgb8")
    assert msg.step == view.shape[1] * 3
    np.testing.assert_array_equal(image_to_numpy(msg), view)


@pytest.mark.parametrize("encoding", ["rgba8", "16UC1", "yuv422", ""])
def test_unsupported_encodings_raise_clearly(encoding):
    msg = Image(height=1, width=1, encoding=encoding, step=4, data=bytes(4))
    with pytest.raises(UnsupportedEncodingError, match="unsupported image encoding") as info:
        image_to_numpy(msg)
    assert all(e in str(info.value) for e in SUPPORTED_ENCODINGS)
    with pytest.raises(UnsupportedEncodingError):
        numpy_to_image(np.zeros((1, 1, 3), np.uint8), encoding)


def test_shape_dtype_and_size_errors():
    with pytest.raises(ValueError, match="does not match encoding"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="uint8"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(ValueError, match="step"):
        image_to_numpy(Image(height=2, width=2, encoding="rgb8", step=3, data=bytes(12)))
    with pytest.raises(ValueError, match="bytes"):
        image_to_numpy(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(6)))
