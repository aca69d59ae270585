import io

import pytest
from PIL import Image

from bioindex.images import open_image, to_rgb
from tests.conftest import shared


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    base = Image.new("RGB", (16, 8), (200, 100, 50))
    if mode == "I;16":
        image = Image.new("I;16", (16, 8), 51400)
    else:
        image = base.convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (16, 8)
    if mode == "I;16":
        # 16-bit values are scaled down, not clipped to white.
        assert out.getpixel((0, 0)) == (200, 200, 200)


def test_transparent_pixels_go_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    out = to_rgb(image)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    out = open_image(_bytes(image, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (10, 200, 10)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = open_image(_bytes(image, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_real_camera_trap_variants() -> None:
    folder = shared("camera-trap")
    plain = open_image(folder / "african_elephants.jpg")
    rotated = open_image(folder / "african_elephants_with_exif_orientation.jpg")
    assert open_image(folder / "african_elephants_cmyk.jpg").mode == "RGB"
    assert open_image(folder / "african_elephants_bw.jpg").mode == "RGB"
    assert rotated.size in (plain.size, plain.size[::-1])
    with pytest.raises(OSError, match="truncated"):
        open_image(folder / "african_elephants_truncated_file.jpg")


def test_a_decode_failure_reads_without_the_file_handle_s_repr(tmp_path) -> None:
    # `classify` / `--tune-on` on a text file said "cannot identify image file
    # <_io.BufferedReader name='notes.txt'>".
    from bioindex.images import describe_error, open_image

    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    for source in (path, b"not an image"):
        try:
            open_image(source)
        except Exception as exc:  # noqa: BLE001 - the message is what is tested
            assert describe_error(exc) == "UnidentifiedImageError: cannot identify image file"
        else:
            raise AssertionError("decoded a text file")


def test_iphone_heic_photos_are_indexed_and_shown(tmp_path, tiny_model: str) -> None:
    """A folder of iPhone photos (HEIC, the camera's default) was "no images found": the
    files were not looked at. They are indexed, found by their JPEG twins, shown as
    thumbnails, named in classify, and exported as image/heic."""
    import zipfile

    from bioindex import Collection
    from tests.test_iiif import _thumbnails_served

    source = Image.open(shared("camera-trap", "ocelot.jpg"))
    folder = tmp_path / "DCIM"
    folder.mkdir()
    source.save(folder / "IMG_0001.HEIC", "HEIF", quality=90)
    source.rotate(90, expand=True).save(folder / "IMG_0002.heic", "HEIF", quality=90)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder], progress=False)
        assert (summary.embedded, summary.failed) == (2, 0)
        hit = col.search_image(shared("camera-trap", "ocelot.jpg"), k=1)[0]
        assert hit.uri.endswith("IMG_0001.HEIC") and hit.score > 0.99
        predictions = col.classify([folder / "IMG_0002.heic"], labels=["cat", "dog"], k=1)
        assert predictions[0].error is None
        col.export(tmp_path / "out.zip", with_media=True)
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert "\timage/heic\t" in archive.read("multimedia.txt").decode()
    assert _thumbnails_served(tmp_path / "s") == 2


def test_camera_raw_and_video_left_out_are_said(tmp_path, tiny_model: str) -> None:
    """A camera trap's folder of videos, a photographer's raw files: they were left out
    without a word (or "no images found", naming only what was looked for)."""
    from click.testing import CliRunner

    from bioindex.cli import main

    folder = tmp_path / "card"
    folder.mkdir()
    for name in ("IMG_1.CR2", "IMG_2.cr2", "CLIP_1.MOV", "notes.txt", ".hidden.mov"):
        (folder / name).write_bytes(b"not read")
    run = CliRunner().invoke(main, ["index", str(folder), "-s", str(tmp_path / "s"),
                                    "-m", tiny_model])  # fmt: skip
    assert run.exit_code == 1
    assert "no images found" in run.output and ".cr2 (2), .mov (1)" in run.output
    Image.new("RGB", (64, 64), "green").save(folder / "frame.jpg")
    run = CliRunner().invoke(main, ["index", str(folder), "-s", str(tmp_path / "s"),
                                    "-m", tiny_model])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "left out 3 files that bioindex does not read: .cr2 (2), .mov (1)" in run.output
