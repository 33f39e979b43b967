"""Safe image loading and result saving."""

import json

import pytest
import torch
from PIL import Image

from thinkgen.imageio import load_image, pil_to_tensor, save_with_sidecar, tensor_to_pil


def test_load_rejects_images_over_the_pixel_limit_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300), "red").save(path)
    with pytest.raises(ValueError, match=r"300x300 = 90000 pixels; the limit is 10000"):
        load_image(path, max_pixels=10_000)
    assert load_image(path).size == (300, 300)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds none: what a decompression bomb shows first."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_load_refuses_decompression_bombs_of_any_size(tmp_path):
    for side in (5000, 20000):  # under and over twice PIL's own limit, where PIL raises before we see the size
        path = tmp_path / f"bomb_{side}.png"
        path.write_bytes(_png_header_only(side, side))
        with pytest.raises(ValueError, match=f"bomb_{side}.png.*the limit is 16777216"):
            load_image(path)
        with pytest.raises(ValueError, match="image bytes"):
            load_image(path.read_bytes())


def test_load_names_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="image bytes"):
        load_image(b"\x89PNG garbage")


def test_load_converts_to_rgb():
    assert load_image(Image.new("L", (4, 4), 7)).mode == "RGB"


def test_tensor_conversion_roundtrips_exactly():
    image = Image.frombytes("RGB", (4, 2), bytes(range(24)))
    tensor = pil_to_tensor([image])
    assert tensor.shape == (1, 3, 2, 4) and tensor.min() >= -1 and tensor.max() <= 1
    assert tensor_to_pil(tensor)[0].tobytes() == image.tobytes()
    assert tensor_to_pil(torch.full((1, 3, 1, 1), 5.0))[0].getpixel((0, 0)) == (255, 255, 255)


def test_save_writes_png_and_sidecar(tmp_path):
    path = save_with_sidecar(Image.new("RGB", (2, 2)), tmp_path / "out" / "img", {"prompt": "a red circle", "seed": 3})
    assert path.suffix == ".png" and path.is_file()
    assert json.loads(path.with_suffix(".json").read_text()) == {"prompt": "a red circle", "seed": 3}
    assert not list((tmp_path / "out").glob("*.tmp"))
