import io

import numpy as np
import pytest
from PIL import Image

from skinscan.data.imageio import decode_image
from skinscan.errors import ImageDecodeError


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg(w=40, h=30, color=(200, 100, 50)) -> bytes:
    return _encode(Image.new("RGB", (w, h), color), "JPEG", quality=95)


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not_image"),
        (_jpeg(200, 150)[:300], "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_image"),
    ],
)
def test_bad_bytes_raise_one_typed_error_with_uri(data, kind):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, "s3://bucket/x.jpg")
    assert info.value.kind == kind
    assert "s3://bucket/x.jpg" in str(info.value)


def test_decompression_bomb_refused_before_decoding():
    data = _encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, "bomb.png", max_pixels=1_000_000)
    assert info.value.kind == "too_large"


def test_error_pickles_for_ray():
    import pickle

    err = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "empty", "0 bytes")))
    assert (err.uri, err.kind) == ("a.jpg", "empty")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1", "LA"])
def test_modes_become_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "1" else "BMP"
    src = Image.new("RGB", (16, 12), (10, 200, 30)).convert(mode)
    im = decode_image(_encode(src, fmt), "x")
    assert im.mode == "RGB" and im.size == (16, 12)


def test_16bit_scaled_to_8bit():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 0
    src = Image.fromarray(arr)
    assert src.mode == "I;16"
    im = decode_image(_encode(src, "PNG"), "x16.png")
    out = np.asarray(im)
    assert im.mode == "RGB" and out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_rgba_composited_on_black():
    src = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_image(_encode(src, "PNG"), "t.png")).max() == 0


def test_exif_orientation_applied():
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im = decode_image(_encode(src, "JPEG", exif=exif.tobytes()), "rot.jpg")
    assert im.size == (20, 40)


def test_draft_mode_decodes_smaller_but_large_enough():
    im = decode_image(_jpeg(1024, 768), "big.jpg", draft_size=224)
    assert min(im.size) >= 224 and im.size[0] <= 512
