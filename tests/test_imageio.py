"""read_rgb / check_image on every kind of file fvloss meets, good and bad."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fvloss.imageio import ImageReadError, check_image, read_rgb

RED_RGB = (255, 0, 0)


def write_cv2(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img), path
    return path


def asymmetric_rgb(h=12, w=10) -> np.ndarray:
    """RGB uint8 with distinct colours in three places, so channel order and flips show."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (10, 20, 30)
    img[0, 0] = (255, 0, 0)  # top-left red
    img[-1, -1] = (0, 0, 255)  # bottom-right blue
    img[0, -1] = (0, 255, 0)  # top-right green
    return img


# ----------------------------------------------------------------------------- good files


def test_good_png_is_rgb(tmp_path):
    rgb = asymmetric_rgb()
    p = write_cv2(tmp_path / "a.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = read_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, rgb)
    assert check_image(p) is None


def test_pure_red_jpeg_reads_red(tmp_path):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR
    p = tmp_path / "red.jpg"
    assert cv2.imwrite(str(p), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = read_rgb(p)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), RED_RGB, atol=3)
    assert check_image(p) is None


def test_grayscale_png(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    p = write_cv2(tmp_path / "g.png", gray)
    out = read_rgb(p)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    assert check_image(p) is None


def test_rgba_png_drops_alpha(tmp_path):
    rgb = asymmetric_rgb()
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(rgb.shape[:2], 7, np.uint8)])
    p = write_cv2(tmp_path / "rgba.png", bgra)
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[2] == 4  # really RGBA on disk
    out = read_rgb(p)
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, rgb)


def test_gray_alpha_png(tmp_path):
    p = tmp_path / "la.png"
    gray = np.full((6, 5), 200, np.uint8)
    Image.fromarray(np.dstack([gray, np.full_like(gray, 9)]), mode="LA").save(p)
    out = read_rgb(p)
    assert out.shape == (6, 5, 3)
    assert (out == 200).all()


def test_palette_png(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = RED_RGB
    rgb[4:] = (0, 0, 255)
    p = tmp_path / "pal.png"
    Image.fromarray(rgb).convert("P").save(p)
    with Image.open(p) as im:
        assert im.mode == "P"  # really a palette file
    out = read_rgb(p)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[:4] == RED_RGB).all() and (out[4:] == (0, 0, 255)).all()


def test_16bit_png(tmp_path):
    bgr16 = np.zeros((5, 7, 3), np.uint16)
    bgr16[..., 2] = 65535  # red
    bgr16[..., 1] = 0x8000  # half green
    bgr16[..., 0] = 0x10FF  # a little blue
    p = write_cv2(tmp_path / "deep.png", bgr16)
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = read_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert (out == (255, 0x80, 0x10)).all()


def test_16bit_grayscale_png(tmp_path):
    p = write_cv2(tmp_path / "g16.png", np.full((4, 4), 0x4000, np.uint16))
    out = read_rgb(p)
    assert out.shape == (4, 4, 3) and (out == 0x40).all()


def test_non_ascii_path(tmp_path):
    d = tmp_path / "Zoë Ångström"
    d.mkdir()
    rgb = asymmetric_rgb()
    p = d / "visage.png"
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    p.write_bytes(buf.tobytes())
    np.testing.assert_array_equal(read_rgb(p), rgb)


# ----------------------------------------------------------------------------- bad files


def good_bytes(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "truncated_jpeg": good_bytes(".jpg")[: len(good_bytes(".jpg")) // 2],
        "truncated_png": good_bytes(".png")[: len(good_bytes(".png")) // 2],
        "empty": b"",
        "random": np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    ext = {"truncated_jpeg": ".jpg", "truncated_png": ".png", "empty": ".jpg", "random": ".png"}
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name}{ext[name]}"
        p.write_bytes(data)
        out[name] = p
    out["missing"] = tmp_path / "nope" / "missing.jpg"
    return out


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated_jpeg", "truncated JPEG"),
        ("truncated_png", "truncated PNG"),
        ("empty", "empty"),
        ("random", "not"),
        ("missing", "cannot read"),
    ],
)
def test_bad_file_raises_naming_the_file(tmp_path, name, reason):
    p = bad_files(tmp_path)[name]
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    assert str(p) in str(e.value)
    assert e.value.path == str(p)
    assert reason in e.value.reason
    assert isinstance(e.value, OSError)
    # check_image gives a reason for every one of them
    why = check_image(p)
    assert isinstance(why, str) and why


def test_check_image_reasons(tmp_path):
    bad = bad_files(tmp_path)
    assert "truncated JPEG" in check_image(bad["truncated_jpeg"])
    assert "truncated PNG" in check_image(bad["truncated_png"])
    assert check_image(bad["empty"]) == "empty file"
    assert "signature" in check_image(bad["random"])
    assert "cannot read" in check_image(bad["missing"])


def test_truncated_jpeg_is_named_as_truncated(tmp_path):
    # some OpenCV builds decode a cut JPEG into a half-grey image without error; read_rgb
    # checks for the end-of-image marker itself, whatever the build does
    data = good_bytes(".jpg")
    cut = data[: len(data) * 3 // 4]
    p = tmp_path / "cut.jpg"
    p.write_bytes(cut)
    with pytest.raises(ImageReadError, match="truncated"):
        read_rgb(p)


def test_jpeg_with_trailing_padding_is_fine(tmp_path):
    p = tmp_path / "padded.jpg"
    p.write_bytes(good_bytes(".jpg") + b"\x00" * 10)
    assert check_image(p) is None
    assert read_rgb(p).shape == (40, 40, 3)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match=str(tmp_path)):
        read_rgb(tmp_path)
    assert check_image(tmp_path) is not None
