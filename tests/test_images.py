import io
import logging
from pathlib import Path

import numpy as np
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


@pytest.mark.slow
def test_a_herbarium_scan_past_pillows_bomb_limit_is_indexed(tmp_path, tiny_model: str) -> None:
    """A 182 MP sheet (1200 dpi) failed to index: Pillow refuses anything over 179 MP from
    its header as a decompression bomb, and warned over 89 MP (a raw Python warning on the
    terminal). A JPEG that large is decoded at reduced scale; nothing warns."""
    import warnings

    from bioindex import Collection
    from bioindex.images import DECODE_PIXELS

    small = Image.open(shared("camera-trap", "ocelot.jpg")).convert("L").resize((1750, 1625))
    folder = tmp_path / "sheets"
    folder.mkdir()
    small.resize((14000, 13000), Image.NEAREST).save(folder / "sheet.jpg", quality=60)
    Image.new("1", (10000, 9500)).save(folder / "mask.png")  # 95 MP: decoded in full
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning among them
        sheet = open_image(folder / "sheet.jpg")
        assert sheet.width * sheet.height <= DECODE_PIXELS and sheet.size == (7000, 6500)
        assert open_image(folder / "mask.png").size == (10000, 9500)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder], progress=False)
        assert (summary.embedded, summary.failed) == (2, 0)
        query = tmp_path / "q.png"
        small.save(query)
        hit = col.search_image(query, k=1)[0]
    assert hit.uri.endswith("sheet.jpg") and hit.score > 0.95


def test_jpeg2000_masters_are_indexed_and_shown(tmp_path, tiny_model: str, caplog) -> None:
    """A herbarium's JPEG 2000 masters (and an IIIF server's) were left out as a format
    bioindex does not read. They are indexed, found by their JPEG twins, and shown as
    thumbnails (decoded at a lower resolution, as the page needs); the run says that
    --fast-decode reads them faster."""
    from bioindex import Collection
    from tests.test_iiif import _thumbnails_served

    source = Image.open(shared("camera-trap", "ocelot.jpg"))
    folder = tmp_path / "masters"
    folder.mkdir()
    source.resize((2048, 1600)).save(folder / "sheet-0001.jp2")
    source.rotate(90, expand=True).save(folder / "sheet-0002.j2k", num_resolutions=3)
    logger = logging.getLogger("bioindex.indexer.pipeline")
    logger.addHandler(caplog.handler)  # the CLI's tests leave "bioindex" not propagating
    try:
        with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
            summary = col.index([folder], progress=False)
            assert (summary.embedded, summary.failed) == (2, 0)
            hit = col.search_image(shared("camera-trap", "ocelot.jpg"), k=1)[0]
    finally:
        logger.removeHandler(caplog.handler)
    assert hit.uri.endswith("sheet-0001.jp2") and hit.score > 0.99
    assert "2 JPEG 2000 files are decoded whole" in caplog.text and "--fast-decode" in caplog.text
    assert _thumbnails_served(tmp_path / "s") == 2


def test_a_jpeg2000_over_the_pixel_cap_decodes_at_a_lower_resolution(tmp_path, monkeypatch
                                                                     ) -> None:  # fmt: skip
    """Past the cap a JPEG 2000 decodes at the least reduced resolution under it; where
    Pillow rounds a reduced size otherwise than OpenJPEG (802 px at 1/8: 100 against 101,
    "broken data stream") a coarser level is not asked for, and the image is refused in
    one line if none fits."""
    from bioindex import images
    from bioindex.errors import ImageTooLarge

    source = Image.open(shared("camera-trap", "ocelot.jpg"))  # 1046 x 802
    source.save(tmp_path / "odd.jp2")
    source.resize((1024, 800)).save(tmp_path / "even.jp2")
    monkeypatch.setattr(images, "DECODE_PIXELS", 300_000)
    assert open_image(tmp_path / "odd.jp2").size == (523, 401)
    assert open_image(tmp_path / "even.jp2").size == (512, 400)
    monkeypatch.setattr(images, "DECODE_PIXELS", 50_000)
    assert open_image(tmp_path / "even.jp2").size == (128, 100)
    with pytest.raises(ImageTooLarge, match="262x201 pixels"):
        open_image(tmp_path / "odd.jp2")


def test_a_pyramidal_tiff_decodes_from_its_smaller_pages(tmp_path, monkeypatch) -> None:
    """An IIIF server's master is a TIFF holding the picture again at 1/2, 1/4, … on its
    following pages: past the pixel cap, and for a thumbnail, the smallest page that is
    enough is decoded. A TIFF of two different pictures is read from its first page."""
    from bioindex import images
    from bioindex.errors import ImageTooLarge

    source = Image.open(shared("camera-trap", "ocelot.jpg")).convert("RGB").resize((2000, 1500))
    levels = [source.resize((2000 >> k, 1500 >> k)) for k in range(1, 4)]
    source.save(tmp_path / "pyramid.tif", save_all=True, append_images=levels,
                compression="tiff_lzw")  # fmt: skip
    source.save(tmp_path / "two.tif", save_all=True, append_images=[source.resize((600, 900))])
    assert open_image(tmp_path / "pyramid.tif").size == (2000, 1500)  # under the cap: whole
    assert open_image(tmp_path / "pyramid.tif", draft=(256, 256)).size == (500, 375)
    monkeypatch.setattr(images, "DECODE_PIXELS", 1_000_000)
    assert open_image(tmp_path / "pyramid.tif").size == (1000, 750)
    with pytest.raises(ImageTooLarge, match="2000x1500"):
        open_image(tmp_path / "two.tif")


def test_a_tiff_chaining_thousands_of_pages_is_not_walked_through(monkeypatch) -> None:
    """Counting a TIFF's pages walks its whole chain of directories: a stranger's upload of
    a few MB can chain a million (20,000 took 3.7 s). Only a pyramid's first pages are
    looked at before one over the cap is refused."""
    from PIL import TiffImagePlugin

    from bioindex.errors import ImageTooLarge

    out = io.BytesIO()
    Image.new("L", (1500, 1500), 128).save(out, "TIFF", save_all=True,
                                           append_images=[Image.new("L", (1, 1))] * 2000)
    seeks: list[int] = []
    seek = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek",
                        lambda self, frame: seeks.append(frame) or seek(self, frame))
    with pytest.raises(ImageTooLarge, match="1500x1500"):
        open_image(out.getvalue(), max_pixels=1_000_000)
    assert max(seeks) < 16, max(seeks)  # a pyramid of 16 levels: 1/2 to 1/32768


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
    # The folder given twice (a link to it): its files were counted twice.
    (tmp_path / "link").symlink_to(folder)
    run = CliRunner().invoke(main, ["index", str(folder), f"{folder}/", str(tmp_path / "link"),
                                    "-s", str(tmp_path / "s"), "-m", tiny_model])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "left out 3 files that bioindex does not read: .cr2 (2), .mov (1)" in run.output


def test_a_camera_s_exif_says_when_and_where() -> None:
    """What camera traps and phones write: DateTimeOriginal (real camera-trap fixtures),
    its UTC offset, and a GPS fix; broken or impossible values are left out."""
    from bioindex.images import photo_facts, photo_facts_of

    assert photo_facts(Image.open(shared("camera-trap", "blank.jpg"))) == {
        "eventDate": "2016-09-25T18:35:10"}  # a RECONYX HC550's own stamp
    assert photo_facts(Image.open(shared("camera-trap", "american_black_bear.jpg"))) == {}

    def saved(gps: dict, taken: dict) -> bytes:
        picture = Image.new("RGB", (32, 32), "green")
        exif = picture.getexif()
        exif.get_ifd(0x8825).update(gps)
        exif.get_ifd(0x8769).update(taken)
        out = io.BytesIO()
        picture.save(out, "JPEG", exif=exif)
        return out.getvalue()

    nairobi = {1: "S", 2: (1.0, 17.0, 30.0), 3: "E", 4: (36.0, 49.0, 12.0)}
    assert photo_facts_of(saved(nairobi, {0x9003: "2024:01:21 15:19:15", 0x9011: "+03:00"})) == {
        "eventDate": "2024-01-21T15:19:15+03:00", "decimalLatitude": -1.2916667,
        "decimalLongitude": 36.82}  # fmt: skip
    assert photo_facts_of(saved({1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},
                                {0x9003: "0000:00:00 00:00:00"})) == {}  # no fix, no clock
    assert photo_facts_of(saved({1: "N", 2: (91.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)},
                                {0x9003: "2024:13:01 00:00:00"})) == {}  # impossible
    assert photo_facts_of(saved({2: (1.0, 0.0, 0.0), 4: (1.0, 0.0, 0.0)}, {})) == {}  # no N/S
    assert photo_facts_of(b"not an image") == {}


def test_a_plain_folder_of_camera_trap_photos_has_its_dates(tmp_path, tiny_model: str) -> None:
    """A camera trap's folder, no metadata file: the catalog had no dates, so the page's
    date filters and `--where event_date` found nothing. The photos' own EXIF dates are
    used; a --metadata file's values win, one that gives only names keeps the dates, and
    a photo of a specimen takes none."""
    import shutil

    from bioindex import Collection

    folder = tmp_path / "trap"
    folder.mkdir()
    for name in ("blank.jpg", "domestic_dog.jpg", "american_black_bear.jpg"):
        shutil.copy(shared("camera-trap", name), folder / name)

    def dates(col) -> dict[str, str | None]:
        rows = col.store.catalog.query("SELECT uri, event_date FROM images")[1]
        return {Path(uri).name: date for uri, date in rows}

    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([folder], progress=False)
        assert dates(col) == {"blank.jpg": "2016-09-25T18:35:10", "american_black_bear.jpg": None,
                              "domestic_dog.jpg": "2017-07-13T12:09:23"}  # fmt: skip
        assert (col.info()["images_dated"], col.info()["images_placed"]) == (2, 0)
        found = col.search_text("an animal", k=10, where="event_date>=2017")
        assert [Path(h.uri).name for h in found] == ["domestic_dog.jpg"]
        (tmp_path / "names.csv").write_text("file,scientificName,eventDate\n"
                                            "blank.jpg,Nothing,\n"
                                            "domestic_dog.jpg,Canis familiaris,2017-07\n")
        summary = col.index([folder], metadata=tmp_path / "names.csv", progress=False)
        assert (summary.embedded, summary.updated) == (0, 2)
        assert dates(col) == {"blank.jpg": "2016-09-25T18:35:10", "american_black_bear.jpg": None,
                              "domestic_dog.jpg": "2017-07"}  # fmt: skip
        # A specimen's photo was taken when it was imaged, not when it was collected.
        (tmp_path / "names.csv").write_text("file,basisOfRecord\nblank.jpg,PreservedSpecimen\n")
        col.index([folder], metadata=tmp_path / "names.csv", progress=False)
        assert dates(col)["blank.jpg"] is None
    with Collection.open(tmp_path / "s2", model=tiny_model, create=True) as col:
        col.index([folder], metadata=tmp_path / "names.csv", progress=False)
        assert dates(col) == {"blank.jpg": None, "american_black_bear.jpg": None,
                              "domestic_dog.jpg": "2017-07-13T12:09:23"}  # fmt: skip


def _photo_with_a_place(path: Path) -> None:
    """A camera-trap photo (dated by its EXIF) with a phone's GPS position added."""
    picture = Image.open(shared("camera-trap", "blank.jpg"))
    exif = picture.getexif()
    exif.get_ifd(0x8825).update({1: "S", 2: (1.0, 17.0, 30.0), 3: "E", 4: (36.0, 49.0, 12.0)})
    picture.save(path, exif=exif)


def test_no_exif_reads_no_date_or_place(tmp_path, tiny_model: str) -> None:
    """`--no-exif`: nothing is taken from the photos (a phone's GPS may place a rare
    species more exactly than a collection publishes), and a --metadata file then sets
    dates and places as it gives them."""
    import shutil

    from click.testing import CliRunner

    from bioindex import Collection
    from bioindex.cli import main

    folder = tmp_path / "phone"
    folder.mkdir()
    _photo_with_a_place(folder / "orchid.jpg")
    shutil.copy(shared("camera-trap", "domestic_dog.jpg"), folder / "dog.jpg")
    (tmp_path / "names.csv").write_text("file,scientificName\norchid.jpg,Orchis mascula\n")

    def rows(store: str) -> dict[str, tuple]:
        with Collection.open(tmp_path / store, read_only=True) as col:
            found = col.store.catalog.query("SELECT uri, event_date, decimal_latitude "
                                            "FROM images")[1]  # fmt: skip
        return {Path(uri).name: (date, lat) for uri, date, lat in found}

    for store, flags in (("with", []), ("without", ["--no-exif"])):
        for extra in ([], ["--metadata", str(tmp_path / "names.csv")]):
            run = CliRunner().invoke(main, ["index", str(folder), "-s", str(tmp_path / store),
                                            "-m", tiny_model, "-q", *flags, *extra])  # fmt: skip
            assert run.exit_code == 0, run.output
    assert rows("with") == {"orchid.jpg": ("2016-09-25T18:35:10", -1.2916667),
                            "dog.jpg": ("2017-07-13T12:09:23", None)}  # fmt: skip
    assert rows("without") == {"orchid.jpg": (None, None), "dog.jpg": (None, None)}


def test_no_exif_removes_what_earlier_runs_took_from_the_photos(tmp_path, tiny_model: str,
                                                                monkeypatch) -> None:  # fmt: skip
    """A store indexed with EXIF read, then again with `--no-exif` (the curator saw a
    phone's GPS place a rare orchid on the page): the dates and places the photos gave
    go, while one a metadata file gave (unlike the photo's) stays. Before, --no-exif read
    nothing and removed nothing: the orchid's place stayed searchable and on the page.
    Once cleared, a photo is read again only after a run that read EXIF: every rerun with
    --no-exif read each photo whose date a metadata file had given."""
    import shutil

    from bioindex import Collection
    from bioindex.images import photo_facts_of
    from bioindex.indexer import pipeline

    read: list[int] = []

    def counted(data: bytes):
        read.append(len(data))
        return photo_facts_of(data)

    monkeypatch.setattr(pipeline, "photo_facts_of", counted)

    folder = tmp_path / "phone"
    folder.mkdir()
    _photo_with_a_place(folder / "orchid.jpg")
    for name in ("domestic_dog.jpg", "american_black_bear.jpg"):
        shutil.copy(shared("camera-trap", name), folder / name)
    (tmp_path / "dates.csv").write_text("file,eventDate\ndomestic_dog.jpg,2017-07\n")

    def rows(col) -> dict[str, tuple]:
        found = col.store.catalog.query("SELECT uri, event_date, decimal_latitude, "
                                        "decimal_longitude FROM images")[1]  # fmt: skip
        return {Path(uri).name: tuple(values) for uri, *values in found}

    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([folder], metadata=tmp_path / "dates.csv", progress=False)
        assert rows(col) == {"orchid.jpg": ("2016-09-25T18:35:10", -1.2916667, 36.82),
                             "domestic_dog.jpg": ("2017-07", None, None),
                             "american_black_bear.jpg": (None, None, None)}  # fmt: skip
        summary = col.index([folder], progress=False, exif=False)
        assert (summary.embedded, summary.updated) == (0, 1)
        assert rows(col) == {"orchid.jpg": (None, None, None),
                             "domestic_dog.jpg": ("2017-07", None, None),
                             "american_black_bear.jpg": (None, None, None)}  # fmt: skip
        assert col.info()["images_placed"] == 0
        read.clear()
        assert col.index([folder], progress=False, exif=False).updated == 0
        assert read == []  # the dog's date is the metadata's: nothing to read again
        # Read again, the photos give them back, and the next --no-exif run takes them.
        assert col.index([folder], progress=False, reread_exif=True).updated == 1
        assert rows(col)["orchid.jpg"] == ("2016-09-25T18:35:10", -1.2916667, 36.82)
        assert col.index([folder], progress=False, exif=False).updated == 1
        assert rows(col)["orchid.jpg"] == (None, None, None)
        # A photo added by a run that reads EXIF is cleared by the next that does not.
        _photo_with_a_place(folder / "second.jpg")
        col.index([folder], progress=False)
        assert rows(col)["second.jpg"][1:] == (-1.2916667, 36.82)
        read.clear()
        assert col.index([folder], progress=False, exif=False).updated == 1
        assert rows(col)["second.jpg"] == (None, None, None) and len(read) == 1


@pytest.mark.slow
def test_a_heic_thumbnail_comes_from_the_one_it_holds() -> None:
    """A phone's HEIC carries a small picture of itself; a 12 MP HEIC took ~0.4 s to
    decode for every thumbnail the page asked for, and the one it holds ~6 ms."""
    import pillow_heif

    from bioindex.images import open_image

    photo = Image.open(shared("camera-trap", "blank.jpg")).convert("RGB")
    out = io.BytesIO()
    pillow_heif.from_pillow(photo).save(out, quality=90, thumbnails=[320])
    data = out.getvalue()
    small = open_image(data, draft=(256, 256))
    assert max(small.size) == 320  # the held thumbnail, not the full picture
    full = open_image(data).resize(small.size, Image.BILINEAR)
    difference = np.abs(np.asarray(small, np.int16) - np.asarray(full, np.int16)).mean()
    assert difference < 8, difference  # the same picture
    assert open_image(data, draft=(512, 512)).size == photo.size  # none that large: decoded


def test_reread_exif_fills_a_store_made_before(tmp_path, tiny_model: str) -> None:
    """A store indexed before bioindex read EXIF (here: with --no-exif) gets no dates on
    a rerun, its files being unchanged; `reread_exif` reads them once, fills only empty
    dates and places, never a specimen's, and keeps every other value."""
    import shutil

    from bioindex import Collection

    folder = tmp_path / "trap"
    folder.mkdir()
    for name in ("blank.jpg", "domestic_dog.jpg", "vehicle.jpg", "american_black_bear.jpg"):
        shutil.copy(shared("camera-trap", name), folder / name)
    (tmp_path / "meta.csv").write_text(
        "file,basisOfRecord,eventDate,habitat\n"
        "vehicle.jpg,PreservedSpecimen,,road\n"
        "domestic_dog.jpg,HumanObservation,2017-07,forest\n")

    def rows(col) -> dict[str, tuple]:
        found = col.store.catalog.query("SELECT uri, event_date, extra FROM images")[1]
        return {Path(uri).name: (date, extra) for uri, date, extra in found}

    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([folder], metadata=tmp_path / "meta.csv", progress=False, exif=False)
        before = rows(col)
        assert {name: date for name, (date, _) in before.items()} == {
            "blank.jpg": None, "domestic_dog.jpg": "2017-07", "vehicle.jpg": None,
            "american_black_bear.jpg": None}  # fmt: skip
        assert col.index([folder], progress=False).updated == 0  # unchanged: not read again
        filled = col.index([folder], progress=False, reread_exif=True)
        assert (filled.embedded, filled.updated) == (0, 1)
        after = rows(col)
        assert after["blank.jpg"][0] == "2016-09-25T18:35:10"
        assert after["vehicle.jpg"] == before["vehicle.jpg"]  # a specimen: none taken
        assert after["domestic_dog.jpg"] == before["domestic_dog.jpg"]  # given: kept
        assert col.index([folder], progress=False, reread_exif=True).updated == 0


def test_a_run_reading_exif_says_which_photos_no_exif_left_unread(tmp_path, tiny_model: str,
                                                                   ) -> None:  # fmt: skip
    """A store first indexed with --no-exif, then without it: the new run reads EXIF for
    new photos only, so the old ones stayed without their dates and places and nothing
    said so (a curator takes the flag's absence to mean they were read)."""
    import shutil

    from click.testing import CliRunner

    from bioindex import Collection
    from bioindex.cli import main

    folder = tmp_path / "phone"
    folder.mkdir()
    _photo_with_a_place(folder / "orchid.jpg")
    shutil.copy(shared("camera-trap", "domestic_dog.jpg"), folder / "dog.jpg")
    store = str(tmp_path / "s")
    runner = CliRunner()
    first = runner.invoke(main, ["index", str(folder), "--store", store, "--model", tiny_model,
                                 "--no-exif", "-q"])  # fmt: skip
    assert first.exit_code == 0 and "note:" not in first.output, first.output
    _photo_with_a_place(folder / "new.jpg")
    second = runner.invoke(main, ["index", str(folder), "--store", store, "-q"])
    assert second.exit_code == 0, second.output
    assert "note: 2 unchanged photos were indexed with --no-exif" in second.output
    assert "--reread-exif" in second.output
    with Collection.open(store, read_only=True) as col:
        placed = col.store.catalog.query("SELECT uri FROM images WHERE decimal_latitude "
                                         "IS NOT NULL")[1]  # fmt: skip
    assert [Path(u).name for (u,) in placed] == ["new.jpg"]  # read: it is new
    third = runner.invoke(main, ["index", str(folder), "--store", store, "-q", "--reread-exif"])
    assert "note:" not in third.output and "metadata updated 2" in third.output, third.output
    fourth = runner.invoke(main, ["index", str(folder), "--store", store, "-q"])
    assert "note:" not in fourth.output, fourth.output
