"""io: Pillow's process-wide settings survive concurrent reads (evaluate decodes in threads); the optional
libspng fast path for PNGs gives Pillow's pixels."""

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fcn_label.images import read_image, read_mask


def test_concurrent_reads_leave_pillow_bomb_guard_in_place(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "m.png")
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: (read_image(tmp_path / "a.png").shape, read_mask(tmp_path / "m.png").shape),
                            range(400)))
    assert out == [((8, 8, 3), (8, 8))] * 400
    assert Image.MAX_IMAGE_PIXELS == before and before is not None


def _png_cases(tmp_path):
    """PNGs of every kind read_image meets: the fast path's colour types and those it leaves to Pillow."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cases = {
        "rgb": Image.fromarray(rgb),
        "rgba": Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), mode="RGBA"),
        "grey": Image.fromarray(rgb[..., 0], mode="L"),
        "palette": Image.fromarray(rgb[..., 1], mode="P"),
        "grey16": Image.fromarray(rgb[..., 2].astype(np.uint16) * 251),
        "bilevel": Image.fromarray(rgb[..., 0] > 127),
    }
    cases["palette"].putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    files = {}
    for name, im in cases.items():
        files[name] = tmp_path / f"{name}.png"
        im.save(files[name])
    cases["palette"].save(tmp_path / "palette_trns.png", transparency=7)
    Image.fromarray(rgb).save(tmp_path / "rgb_trns.png", transparency=(1, 2, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow's path applies it
    Image.fromarray(rgb).save(tmp_path / "rotated.png", exif=exif)
    files.update({"palette_trns": tmp_path / "palette_trns.png", "rgb_trns": tmp_path / "rgb_trns.png",
                  "rotated": tmp_path / "rotated.png"})
    # a gAMA chunk of 0.5 right after IHDR: Pillow ignores it, so the fast path must not apply it either
    data = files["rgb"].read_bytes()
    gama = b"gAMA" + struct.pack(">I", 50000)
    files["rgb_gamma"] = tmp_path / "rgb_gamma.png"
    files["rgb_gamma"].write_bytes(data[:33] + struct.pack(">I", 4) + gama + struct.pack(">I", zlib.crc32(gama)) + data[33:])
    return files


def test_libspng_fast_path_gives_pillows_pixels_and_leaves_the_rest_to_pillow(tmp_path, monkeypatch):
    """With pyspng installed, 8-bit grey/RGB/palette/RGBA PNGs are decoded by libspng; every image must
    come out as Pillow's own path gives it (the reference), and 16-bit, 1-bit and EXIF-rotated PNGs
    must not take the fast path at all."""
    pyspng = pytest.importorskip("pyspng", reason="the optional png extra (pyspng) is not installed")
    from fcn_label import images

    files = _png_cases(tmp_path)
    monkeypatch.setattr(images, "_spng", False)
    want = {name: read_image(f) for name, f in files.items()}
    assert want["rotated"].shape == (53, 37, 3)  # the reference did rotate it

    used = []

    class Counting:
        @staticmethod
        def load(data, format=None):
            used.append(data)
            return pyspng.load(data, format=format)

    for name, f in files.items():
        monkeypatch.setattr(images, "_spng", Counting)
        before = len(used)
        got = read_image(f)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, want[name]), name
        fast = len(used) > before
        assert fast == (name in ("rgb", "rgba", "grey", "palette", "palette_trns", "rgb_trns", "rgb_gamma")), name

    # above the pixel cap (huge photos), Pillow decodes, with the same result
    monkeypatch.setattr(images, "_SPNG_MAX_PIXELS", 37 * 53 - 1)
    before = len(used)
    assert np.array_equal(read_image(files["rgb"]), want["rgb"]) and len(used) == before


def test_libspng_errors_fall_back_to_pillows_message(tmp_path, monkeypatch):
    """A truncated PNG gives the same one-line error with and without the fast path."""
    pytest.importorskip("pyspng", reason="the optional png extra (pyspng) is not installed")
    from fcn_label import images
    from fcn_label.errors import InputError

    f = _png_cases(tmp_path)["rgb"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    messages = []
    for spng in (None, False):
        monkeypatch.setattr(images, "_spng", spng)
        with pytest.raises(InputError) as e:
            read_image(f)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and str(f) in messages[0]


def test_pil_to_rgb_converts_an_open_image_as_read_image_converts_the_file(tmp_path):
    """The CVAT function is handed a Pillow image: same pixels as predict reading the file, image left usable."""
    from fcn_label.images import pil_to_rgb

    files = _png_cases(tmp_path)
    for name, f in files.items():
        with Image.open(f) as im:
            mode = im.mode
            got = pil_to_rgb(im)
            assert im.mode == mode and im.load() is not None  # not closed, not converted in place
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, read_image(f)), name
    with Image.open(files["rotated"]) as im:
        assert pil_to_rgb(im).shape == (53, 37, 3)  # EXIF orientation applied
    with Image.open(files["grey16"]) as im:
        raw = np.asarray(im).astype(np.int64)
        assert np.array_equal(pil_to_rgb(im)[..., 1], raw * 255 // 65535)  # 16-bit range scaled, not clipped


def test_fetched_bytes_decode_like_the_file_and_fail_naming_the_url(tmp_path):
    """An object's bytes (a Blob) go through the same readers as the file: same pixels, same header,
    same plain-JPEG verdict; and the same one-line refusals, naming the URL instead of a path."""
    from fcn_label.images import Blob, InputError, image_size, plain_jpeg, read_image

    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (21, 34, 3), dtype=np.uint8)
    files = {"p.png": (Image.fromarray(a), {}), "j.jpg": (Image.fromarray(a), {"quality": 80}),
             "g.png": (Image.fromarray(a[..., 0]), {})}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoded upright by both
    files["r.jpg"] = (Image.fromarray(a), {"exif": exif.tobytes()})
    for name, (im, kw) in files.items():
        im.save(tmp_path / name, **kw)
        blob = Blob((tmp_path / name).read_bytes(), f"s3://b/{name}")
        assert np.array_equal(read_image(blob), read_image(tmp_path / name)), name
        assert image_size(blob) == image_size(tmp_path / name)
        assert (plain_jpeg(blob) is None) == (plain_jpeg(tmp_path / name) is None)
    for data, msg in ((b"", "empty file (0 bytes)"), (b"not an image", "not a recognised image format")):
        with pytest.raises(InputError) as e:
            read_image(Blob(data, "s3://b/x.png"))
        assert str(e.value).startswith(f"s3://b/x.png: {msg}")
    with pytest.raises(InputError, match=r"^s3://b/big.png: .* exceeds the limit"):
        read_image(Blob((tmp_path / "p.png").read_bytes(), "s3://b/big.png"), max_pixels=100)
