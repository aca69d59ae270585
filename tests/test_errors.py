"""Bad input gives one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import draw_images


def bioindex(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process: what a user at a shell sees (used where the process's
    start matters: environment read at import, the help's speed)."""
    return subprocess.run(
        [sys.executable, "-m", "bioindex.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess:
    """The same CLI in this process (torch already imported: ~0.1 s instead of ~5 s a
    call); an escaped exception would show as one here, so "no traceback" still holds."""
    from click.testing import CliRunner

    from bioindex.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception  # fmt: skip
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout,
                                       result.stderr)  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_missing_path(tmp_path: Path, tiny_model: str) -> None:
    result = cli(
        "index", str(tmp_path / "nope"), "--store", str(tmp_path / "s"), "--model", tiny_model
    )
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "s").exists()


def test_empty_folder(tmp_path: Path, tiny_model: str) -> None:
    (tmp_path / "empty").mkdir()
    result = cli(
        "index", str(tmp_path / "empty"), "--store", str(tmp_path / "s"), "--model", tiny_model
    )
    assert_one_line_error(result, "no images found")


def test_store_that_is_a_file(tmp_path: Path, tiny_model: str) -> None:
    draw_images(tmp_path / "p", 2)
    (tmp_path / "file").write_text("x")
    result = cli(
        "index", str(tmp_path / "p"), "--store", str(tmp_path / "file"), "--model", tiny_model
    )
    assert_one_line_error(result, "is not a directory")
    result = cli("search", "text", "x", "--store", str(tmp_path / "file"))
    assert_one_line_error(result, "is not a directory")


def test_k_zero_and_missing_store(tmp_path: Path, tiny_model: str) -> None:
    draw_images(tmp_path / "p", 2)
    assert (
        cli(
            "index", str(tmp_path / "p"), "-s", str(tmp_path / "s"), "-m", tiny_model, "-q"
        ).returncode
        == 0
    )
    assert_one_line_error(
        cli("search", "text", "x", "-s", str(tmp_path / "s"), "--k", "0"), "k must be"
    )
    assert_one_line_error(
        cli("search", "id", "999", "-s", str(tmp_path / "s")),
        "no live image with image_id 999",
    )
    assert_one_line_error(
        cli("search", "image", str(tmp_path / "missing.jpg"), "-s", str(tmp_path / "s")),
        "does not exist",
    )
    assert_one_line_error(
        cli("search", "text", "x", "-s", str(tmp_path / "none")), "no bioindex store"
    )
    assert_one_line_error(cli("info", "-s", str(tmp_path / "none")), "not a bioindex store")


def test_non_store_folder_is_not_overwritten(tmp_path: Path, tiny_model: str) -> None:
    draw_images(tmp_path / "p", 2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = cli("index", str(tmp_path / "p"), "-s", str(tmp_path / "mine"), "-m", tiny_model)
    assert_one_line_error(result, "not a bioindex store")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unreachable_hub_fails_fast_with_advice(tmp_path: Path) -> None:
    draw_images(tmp_path / "p", 1)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = bioindex(
        "index", str(tmp_path / "p"), "-s", str(tmp_path / "s"), "-m", "bioclip", env=env
    )
    assert time.monotonic() - started < 30
    assert_one_line_error(result, "hf-hub:imageomics/bioclip are not in the Hugging Face cache")
    assert "local-dir:" in result.stderr and "huggingface-cli download" in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-m", "ViT-B-16"], "without weights; add --checkpoint"),
        (["-m", "ViT-B-16", "--checkpoint", "/nonexistent.pt"], "does not exist"),
        (["-m", "local-dir:/nonexistent"], "does not exist"),
        (["-m", "tiny", "--device", "cuda"], "no CUDA GPU"),
        (["-m", "tiny", "--batch-size", "0"], "batch size must be at least 1"),
    ],
)
def test_model_errors(tmp_path: Path, tiny_model: str, args: list, expected: str) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    draw_images(tmp_path / "p", 1)
    args = [tiny_model if a == "tiny" else a for a in args]
    result = cli("index", str(tmp_path / "p"), "-s", str(tmp_path / "s"), *args)
    assert_one_line_error(result, expected)


def test_help_is_fast() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bioindex.cli", "--help"], capture_output=True, text=True
    )
    assert time.monotonic() - started < 1.0
    assert result.returncode == 0 and "bioindex demo" in result.stdout
    for command in (["index"], ["search", "text"], ["search", "image"], ["info"], ["demo"]):
        out = subprocess.run(
            [sys.executable, "-m", "bioindex.cli", *command, "--help"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and "Example" in out.stdout, command


def test_build_index_refusals_are_one_line(tmp_path: Path, tiny_model: str) -> None:
    """An index kind the store cannot take (too few vectors to train IVF lists) is refused
    before the progress bar is drawn: the bar's empty "index: 0%" line stood above the
    error (click itself refuses an unknown kind or a recall outside (0, 1])."""
    draw_images(tmp_path / "p", 3)
    store = str(tmp_path / "s")
    assert cli("index", str(tmp_path / "p"), "--store", store, "--model", tiny_model,
               "-q").returncode == 0  # fmt: skip
    assert_one_line_error(cli("build-index", "--store", store, "--kind", "ivf"),
                          "too few to train an ivf index")  # fmt: skip
    assert_one_line_error(cli("build-index", "--store", store, "--kind", "ivf-pq"),
                          "too few to train an ivf-pq index")  # fmt: skip
