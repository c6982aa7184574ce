from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr.data.images import NoImagesError, find_images, load_image, try_load_image, walk_images

from adversarial import float_tiff, grey16_png, needle_png, png_with_a_bad_chunk


def test_find_images_is_recursive_sorted_and_survives_symlink_cycles(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    for name in ("b/deep/2.png", "a/1.JPG", "b/0.webp"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "deep" / "loop").symlink_to(tmp_path / "b")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.JPG", "b/0.webp", "b/deep/2.png"]


def test_a_link_that_loops_fails_alone_and_its_folder_is_walked(tmp_path: Path) -> None:
    (tmp_path / "dogs").mkdir()
    for name in ("dogs/a.jpg", "dogs/b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "dogs" / "loop.jpg").symlink_to("loop.jpg")  # ln -s loop.jpg photos/dogs/loop.jpg
    (tmp_path / "top.jpg").symlink_to("top.jpg")
    walked = {path.relative_to(tmp_path).as_posix(): reason for path, reason in walk_images(tmp_path)}
    assert [name for name, reason in walked.items() if reason is None] == ["c.jpg", "dogs/a.jpg", "dogs/b.jpg"]
    assert "Too many levels of symbolic links" in walked["dogs/loop.jpg"] and walked["top.jpg"]


def test_a_link_out_of_the_folder_is_reported_and_not_followed(tmp_path: Path) -> None:
    (tmp_path / "photos" / "inner").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("photos/inner/a.jpg", "elsewhere/b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "photos" / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "photos" / "out.jpg").symlink_to(tmp_path / "elsewhere" / "b.jpg")
    (tmp_path / "photos" / "in.jpg").symlink_to(tmp_path / "photos" / "inner" / "a.jpg")
    walked = {path.name: reason for path, reason in walk_images(tmp_path / "photos")}
    assert walked["in.jpg"] is None and walked["a.jpg"] is None and "b.jpg" not in walked
    assert "a symbolic link out of" in walked["out"] and "a symbolic link out of" in walked["out.jpg"]


def test_the_walk_streams_in_the_order_of_the_sorted_list(tmp_path: Path) -> None:
    names = ["a/b.jpg", "a.b/c.png", "a b/d.png", "a/z/e.png", "a/y.png", "B/f.png", "a-/g.png", "10/h.png", "9/i.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    walk = walk_images(tmp_path)
    first, _ = next(walk)
    (tmp_path / "a.b" / "late.png").write_bytes(b"")  # a folder not reached yet is listed only when reached
    walked = [first] + [path for path, _ in walk]
    assert walked == sorted(tmp_path / name for name in [*names, "a.b/late.png"])


def test_find_images_names_the_folder_when_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(NoImagesError, match=str(tmp_path)):
        find_images(tmp_path)
    with pytest.raises(NoImagesError, match="not a folder"):
        find_images(tmp_path / "missing")


ORANGE, ORANGE_LUMA = (200, 40, 10), 84  # luma: 0.299 R + 0.587 G + 0.114 B, as PIL's "L"


@pytest.mark.parametrize("mode,colour", [
    ("RGB", ORANGE), ("L", (ORANGE_LUMA,) * 3), ("LA", (ORANGE_LUMA,) * 3), ("RGBA", ORANGE), ("CMYK", ORANGE),
    ("I;16", (ORANGE_LUMA,) * 3), ("P", ORANGE),  # P: dithered to the web palette, right on average
])
def test_every_mode_becomes_rgb_of_the_requested_size_and_colour(tmp_path: Path, mode: str,
                                                                  colour: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (60, 40), ORANGE).convert(mode)
    if mode == "I;16":  # 16-bit grey uses the whole 16-bit range: 8-bit 84 is 84 x 257
        image = Image.fromarray(np.full((40, 60), ORANGE_LUMA * 257, np.uint16))
    path = tmp_path / ("image.tif" if mode in ("CMYK", "I;16") else "image.png")
    image.save(path)
    array = load_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    np.testing.assert_allclose(array.reshape(-1, 3).mean(axis=0), colour, atol=4)


def test_transparent_palette_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    image.save(tmp_path / "clear.png", transparency=0)
    assert (load_image(tmp_path / "clear.png", 8) == 255).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    array = load_image(tmp_path / "rotated.jpg", 20)
    # Displayed upright it is 20 wide and 40 tall, white on top: the centre crop is white above, black below
    # (ignoring EXIF it would be white on the left instead).
    assert array[:8].mean() > 200 and array[12:].mean() < 50


def test_large_jpeg_is_scaled_down_with_the_right_content(tmp_path: Path) -> None:
    image = Image.new("RGB", (1200, 800), (10, 200, 30))
    image.save(tmp_path / "big.jpg", quality=95)
    array = load_image(tmp_path / "big.jpg", 32)
    assert array.shape == (32, 32, 3)
    assert np.abs(array.astype(int) - [10, 200, 30]).max() < 8


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_unreadable_files_give_none_and_a_warning(tmp_path: Path, content: bytes,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with caplog.at_level("WARNING", logger="simclr"):
        assert try_load_image(path, 8) is None
    assert "broken.jpg" in caplog.text


@pytest.mark.parametrize("make,value,expected", [
    (float_tiff, 0.5, 128),  # float 0..1: half is mid-grey, not black
    (float_tiff, 1.0, 255),
    (grey16_png, 1000, 4),  # 1000 of 65535: near black, not stretched to white by its own maximum
    (grey16_png, 65535, 255),
])
def test_high_bit_depth_greys_keep_their_level(tmp_path: Path, make, value: float, expected: int) -> None:
    path = make(tmp_path / ("image.tif" if make is float_tiff else "image.png"), value)
    assert np.abs(load_image(path, 8).astype(int) - expected).max() <= 1


def test_a_damaged_png_is_unreadable_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = png_with_a_bad_chunk(tmp_path / "bad.png")
    with pytest.raises(SyntaxError):  # what Pillow raises: one of the decode errors every reader records
        np.asarray(Image.open(path).convert("RGB"))
    with caplog.at_level("WARNING", logger="simclr"):
        assert try_load_image(path, 8) is None
    assert "bad.png" in caplog.text and "broken PNG file" in caplog.text


def test_a_one_pixel_wide_strip_is_refused_before_decoding(tmp_path: Path) -> None:
    import resource

    path = needle_png(tmp_path / "needle.png")
    assert path.stat().st_size < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="1x1000000 pixels: aspect ratio beyond 50:1"):
        load_image(path, 32)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KB: nothing was decoded


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it skips
def test_fuzzed_files_decode_or_are_unreadable_never_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    originals = []
    for kind in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"):
        path = tmp_path / f"original.{kind.lower()}"
        picture.save(path, format=kind)
        originals.append(path.read_bytes())
    outcomes = {"decoded": 0, "unreadable": 0}
    for index in range(300):
        data = bytearray(originals[index % len(originals)])
        for _ in range(rng.integers(1, 8)):  # flip, cut or insert bytes
            position = int(rng.integers(0, len(data)))
            action = rng.integers(0, 3)
            if action == 0:
                data[position] = int(rng.integers(0, 256))
            elif action == 1:
                del data[position:position + int(rng.integers(1, 64))]
            else:
                data[position:position] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        path = tmp_path / f"fuzz{index}.img"
        path.write_bytes(bytes(data))
        array = try_load_image(path, 8)  # anything but a decode error escaping is a bug
        outcomes["unreadable" if array is None else "decoded"] += 1
        assert array is None or (array.shape == (8, 8, 3) and array.dtype == np.uint8)
    assert outcomes["decoded"] > 0 and outcomes["unreadable"] > 0, outcomes
