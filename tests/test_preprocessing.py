"""What training and ``mednext predict`` share (``datamodules.preprocessing``): finding and
reading images in every mode, and the intensity normalisations, against values worked out by
hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DataError
from datamodules.preprocessing import list_images, normalize, read_image, zoom_to


def test_list_images_accepts_any_extension_case(tmp_path: Path) -> None:
    names = ["a.png", "b.PNG", "c.jpg", "d.JPEG", "e.Jpg", "f.bmp", "g.tif", "h.TIFF", "i.webp"]
    junk = [".DS_Store", "Thumbs.db", "desktop.ini", "._a.png", ".hidden.png", "notes.txt", "m.csv"]
    for name in names + junk:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == names


def save_modes(tmp_path: Path) -> dict[str, Path]:
    """One small image per Pillow mode, with known pixel values."""
    ramp = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    images = {
        "L": Image.fromarray(ramp),
        "1": Image.fromarray(ramp > 100),
        "LA": Image.fromarray(np.dstack([ramp, np.zeros_like(ramp)]), "LA"),
        "RGB": Image.fromarray(np.dstack([ramp, ramp // 2, 255 - ramp])),
        "RGBA": Image.fromarray(np.dstack([ramp, ramp, ramp, np.zeros_like(ramp)])),
        "I;16": Image.fromarray(ramp.astype(np.uint16) * 100 + 1000),
        "I": Image.fromarray(ramp.astype(np.int32) - 500),
        "CMYK": Image.fromarray(np.dstack([ramp] * 3)).convert("CMYK"),
        "P": Image.fromarray(np.dstack([ramp] * 3)).quantize(colors=16),
    }
    saved = {}
    for mode, image in images.items():
        suffix = ".jpg" if mode == "CMYK" else ".tif" if mode == "I" else ".png"
        saved[mode] = tmp_path / f"{mode.replace(';', '')}{suffix}"
        options = {"transparency": 0} if mode == "P" else {}
        image.save(saved[mode], **options)
    return saved


def test_read_image_gives_uint8_rgb_from_every_mode(tmp_path: Path) -> None:
    saved = save_modes(tmp_path)
    with Image.open(saved["I;16"]) as sixteen, Image.open(saved["P"]) as palette:
        assert sixteen.mode.startswith("I;16") and palette.info.get("transparency") == 0
    ramp = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for mode, path in saved.items():
        image = read_image(path)
        assert image.shape == (3, 4, 3) and image.dtype == np.uint8, mode
        assert image.flags["C_CONTIGUOUS"]
    assert np.array_equal(read_image(saved["L"]), np.dstack([ramp] * 3))
    # alpha is dropped: fully transparent pixels keep their stored colour
    assert np.array_equal(read_image(saved["LA"]), np.dstack([ramp] * 3))
    assert np.array_equal(read_image(saved["RGBA"]), np.dstack([ramp] * 3))
    # 16/32-bit grayscale: rescaled by the image's own range
    expected = np.rint(ramp.astype(float) * 255 / 220).astype(np.uint8)
    assert np.array_equal(read_image(saved["I;16"])[..., 0], expected)
    assert np.array_equal(read_image(saved["I"])[..., 1], expected)
    assert set(np.unique(read_image(saved["1"]))) == {0, 255}
    assert np.abs(read_image(saved["P"])[..., 0].astype(int) - ramp).max() <= 20
    assert np.abs(read_image(saved["CMYK"]).astype(int) - np.dstack([ramp] * 3)).mean() < 12


def test_read_image_applies_the_exif_orientation(tmp_path: Path) -> None:
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:5, :10] = 255  # bright top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise: rotate clockwise to display
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "p.png", exif=exif)
    image = read_image(tmp_path / "p.png")
    assert image.shape == (20, 40, 3)
    assert image[:5, :10].min() == 255 and image[5:, 10:].max() == 0


def test_every_normalisation_scheme_of_the_one_table() -> None:
    image = np.array([[-200.0, 0.0], [100.0, 400.0]])
    ct = normalize(image, {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 100.0, "std": 50.0})
    assert ct.dtype == np.float32 and ct.tolist() == [[-4.0, -2.0], [0.0, 4.0]]
    window = normalize(image, {"scheme": "window", "window": [-100, 300]})
    assert window.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    minmax = normalize(image, {"scheme": "minmax"})
    assert np.allclose(minmax, [[0.0, 200 / 600], [300 / 600, 1.0]])  # (x + 200) / 600
    zscore = normalize(np.array([1.0, 3.0]), {"scheme": "zscore"})
    assert zscore.tolist() == [-1.0, 1.0]
    assert normalize(np.full((2, 2), 7.0), {"scheme": "minmax"}).tolist() == [[0.0, 0.0]] * 2
    with pytest.raises(DataError, match="unknown normalisation scheme 'gamma'"):
        normalize(image, {"scheme": "gamma"})


def test_the_one_zoom_keeps_the_field_of_view_or_the_corner_centres() -> None:
    line = np.array([0.0, 1.0, 2.0, 3.0])
    # Corner centres aligned (TransUNet's zoom): the ends stay the ends.
    assert zoom_to(line, (7,), order=1).tolist() == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3])
    # Voxel boxes (volume resampling): 4 boxes -> 2 boxes average pairs of neighbours' centres.
    assert zoom_to(line, (2,), order=1, voxel_boxes=True).tolist() == pytest.approx([0.5, 2.5])
    assert zoom_to(line, (4,), order=3) is line
