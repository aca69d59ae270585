"""`bioindex`: a thin command-line shell over bioindex.Collection.

Heavy libraries (torch, open_clip, faiss) are imported inside commands so that
`bioindex --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import click

from bioindex.errors import BioindexError
from bioindex.output import (
    FORMATS,
    absent_columns,
    csv_value,
    parse_columns,
    render,
    render_mapping,
    render_predictions,
    render_sections,
    terminal_width,
)
from bioindex.search.defaults import (
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_OUTSIDE_WEIGHT,
    DEFAULT_RADIUS_KM,
    TEMPLATE_CHOICES,
)

# What a search table shows unless --columns says otherwise (empty columns drop out).
HIT_COLUMNS = ("rank", "score", "match", "image_id", "scientific_name", "vernacular_name",
               "catalog_number", "institution_code", "country_code", "event_date", "file_missing",
               "path")
DEDUP_COLUMNS = ("group", "image_id", "kind", "score", "path")


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn BioindexError into a one-line message and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BioindexError as exc:
            click.echo(f"error: {exc.explain('cli', _command_options())}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; committed work is kept, rerun to resume", err=True)
            sys.exit(130)

    return wrapper


def _command_options() -> set[str]:
    """The options of the command being run (a remedy only suggests one it has)."""
    context = click.get_current_context(silent=True)
    if context is None:
        return set()
    return {opt for param in context.command.params for opt in param.opts}


def given(name: str) -> bool:
    """Whether the running command's option `name` came from the command line or the
    environment, not its default (an option that only means something beside another)."""
    context = click.get_current_context()
    return context.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT,
                                                      None)  # fmt: skip


def warn_absent_columns(rows: Sequence[dict[str, Any]], columns: str | None) -> None:
    """Say which --columns no result has a value in, and which columns they do have."""
    asked = parse_columns(columns, None)
    absent = absent_columns(rows, asked)
    if absent:
        filled = sorted({c for row in rows for c, v in row.items() if v not in (None, "")})
        click.echo(f"warning: no result has a value in {', '.join(map(repr, absent))}; "
                   f"these do: {', '.join(filled)}", err=True)  # fmt: skip


# A store given once per shell (export BIOINDEX_STORE=my-store), as rclip needs none.
STORE_ENV = "BIOINDEX_STORE"
store_option = click.option(
    "--store", "-s", required=True, metavar="DIR", envvar=STORE_ENV, show_envvar=True,
    help="The store directory.",
)  # fmt: skip
device_option = click.option(
    "--device", default="auto", show_default=True,
    type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where the model runs.",
)  # fmt: skip
k_option = click.option(
    "--k", "-k", "k", default=10, show_default=True, type=int, help="How many results."
)

wait_option = click.option(
    "--wait", is_flag=True,
    help="When another process is writing the store, wait for it instead of stopping.",
)  # fmt: skip


def engine_option(help: str) -> Callable[..., Any]:
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                        show_default=True, help=help)  # fmt: skip


columns_option = click.option(
    "--columns", default=None, metavar="A,B,…",
    help="Columns to show, comma-separated, or 'all' (default: a short set; tables fit the "
    "terminal width).",
)  # fmt: skip
format_option = click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(FORMATS),
    help="Output format.",
)
model_option = click.option(
    "--model", "-m", default=None, metavar="NAME",
    help="bioclip, bioclip-2, bioclip-demo, hf-hub:ORG/REPO, local-dir:PATH or an open_clip "
    "architecture with --checkpoint. Default: the store's model (bioclip for a new store).",
)  # fmt: skip
checkpoint_option = click.option(
    "--checkpoint", default=None, metavar="FILE",
    help="Weights file for an architecture name given as --model ('random' for speed tests).",
)  # fmt: skip


def _set_verbose(context: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        logging.getLogger("bioindex").setLevel(logging.DEBUG)


verbose_option = click.option(
    "--verbose", "-v", is_flag=True, expose_value=False, callback=_set_verbose,
    help="Say more: debug lines, and the engine's own logs (Ray's start-up messages).",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bioindex")
@verbose_option
def main() -> None:
    """Index biological image collections with BioCLIP and search them.

    \b
    Examples:
      bioindex demo                                  # offline demo, no downloads
      bioindex index photos/ --store my-store        # embed a folder (BioCLIP)
      bioindex search "Cardinalis cardinalis" --store my-store
      bioindex search query.jpg --store my-store --k 5
      bioindex serve --store my-store                # a search page for a browser
      export BIOINDEX_STORE=my-store                 # then --store can be left out
    """
    # Library warnings (a writer waited for, a file rebuilt) reach the user as one line each.
    logger = logging.getLogger("bioindex")
    if not any(getattr(h, "bioindex_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
        handler.addFilter(_lower_level)
        handler.bioindex_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # Training a head is a wait the user should hear about (search.fewshot says so once).
    fewshot_log = logging.getLogger("bioindex.search.fewshot")
    if fewshot_log.level == logging.NOTSET:  # --verbose (DEBUG) keeps its own
        fewshot_log.setLevel(min(logging.INFO, logger.getEffectiveLevel()))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


@main.command()
@click.argument("sources", nargs=-1, required=True)
@store_option
@model_option
@checkpoint_option
@click.option(
    "--preprocess",
    type=click.Choice(["eval", "squash"]),
    default=None,
    help="eval: open_clip's resize+centre crop (BioCLIP paper). squash: pybioclip's "
    "whole-image resize. Fixed when the store is created. [default: eval]",
)
@click.option(
    "--metadata",
    default=None,
    metavar="TABLE",
    help="CSV/TSV/Parquet/XLSX of Darwin Core columns keyed by a 'file' column (file name or "
    "path relative to the source folder), or a SpeciesNet instances or predictions .json "
    "(its country, admin1_region, latitude and longitude) or a COCO Camera Traps .json "
    "(LILA's: datetime, location, sequence, category); a path from elsewhere finds the one "
    "photo of its name.",
)
@device_option
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Images per model batch (default 256 on CUDA, 32 on CPU).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Decode worker processes (default: every core on a CPU, cores - 1 beside a GPU).",
)
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Images per atomic commit; a killed run redoes at most about three commits' worth "
    "(one being written, one queued, one being gathered).",
)
@click.option(
    "--source-type",
    type=click.Choice(["auto", "folder", "file", "manifest", "dwca", "zip", "webdataset", "iiif",
                       "speciesnet", "coco", "camtrap-dp"]),
    default="auto",
    show_default=True,
    help="What SOURCES are; auto: folders, images, .csv/.tsv/.parquet manifests, .zip or "
    "meta.xml folders (Darwin Core Archives; a .zip without meta.xml: its photos), .tar or "
    "{..} shard patterns, .json files or URLs (IIIF manifests and collections; a SpeciesNet "
    "instances or predictions .json or a COCO Camera Traps .json: its photos), a folder "
    "with a Camtrap DP datapackage.json.",
)
@click.option(
    "--media-root",
    default=None,
    metavar="DIR|URL",
    help="Where relative media paths in manifests and archives are found: a folder, or a "
    "URL the paths are under (photos on a web server or in a bucket, e.g. a LILA "
    "dataset's; fetched, checked and cached as any media URL).",
)
@click.option(
    "--allow-private-urls", is_flag=True,
    help="Fetch media URLs on private networks too (loopback, 10/8, 192.168/16, …): for a "
    "museum's own intranet media server. Off by default: archives come from strangers.",
)
@click.option(
    "--allow-outside-paths", is_flag=True,
    help="Read media paths of manifests and archives wherever they point (by default only "
    "inside the manifest's or archive's folder, or --media-root).",
)
@click.option(
    "--download-timeout", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
    help="Seconds one media URL may take, every attempt and redirect included.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Try again files and URLs that failed before (by default they are skipped until "
    "they change).",
)
@click.option(
    "--fast-decode",
    is_flag=True,
    help="Let large JPEGs decode at 1/2-1/8 scale (DCT domain), and JPEG 2000s at a lower "
    "resolution level, before resizing: much faster on big photos (JPEG 2000 ~9x), "
    "embeddings within cosine 0.99 of the exact path.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the image tower: tens of seconds to start, faster batches on a GPU.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bf16"]),
    default="auto",
    show_default=True,
    help="The image tower's numbers. auto: bf16 autocast on CUDA, float32 elsewhere; bf16: "
    "bf16 weights (CPUs with AVX512-BF16/AMX or CUDA; ~1.8x on such a CPU, cosine to "
    "float32 >= 0.999); float32: no autocast anywhere.",
)
@click.option(
    "--gpu-decode/--no-gpu-decode",
    default=None,
    help="Decode baseline JPEGs on the model's device (nvJPEG), resize and crop there; "
    "default: on with CUDA, off otherwise.",
)
@engine_option(
    "ray: decode as Ray Data tasks and embed in model actors on a Ray cluster "
    "(pip install 'bioindex[distributed]')."
)
@click.option(
    "--address",
    default=None,
    help="With --engine ray: the cluster ('auto', 'ray://head:10001'); default starts a "
    "local Ray runtime.",
)
@click.option(
    "--num-gpus",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --engine ray: GPU model actors (one GPU each); 0 runs CPU actors.",
)
@click.option(
    "--exif/--no-exif", default=True, show_default=True,
    help="Take each photo's date and GPS position from its EXIF (a camera trap's clock, a "
    "phone's GPS) where its metadata gives none (never for a specimen's photo). --no-exif: "
    "for scans of specimens not yet described, or where a phone's GPS would place a rare "
    "species more exactly than a collection publishes; on a store indexed with EXIF read, "
    "also removes the dates and places earlier runs took from the photos.",
)
@click.option(
    "--reread-exif", is_flag=True,
    help="Read the EXIF date and place of photos already indexed too, once, for a store "
    "made before bioindex read them (each file is read again; nothing is re-embedded).",
)
@click.option(
    "--names-from-folders", is_flag=True,
    help="Name each photo for the nearest of its folders named for a species "
    "('Panthera leo/', 'Panthera_leo/2023/', or the seven ranks joined by '_'), where its "
    "metadata names nothing; where no folder is named for a species, the folders just "
    "below the source are common names ('zebra/cam2/'). The run says which names it gave.",
)
@click.option(
    "--names-table", metavar="TABLE", default=None,
    help="What the photos' common names mean: a CSV/TSV/XLSX with a common-name column "
    "(query, vernacularName, common_name) and scientificName and/or kingdom … genus, "
    "species — LILA's lila-taxonomy-mapping_release.csv, or your own. A photo called by a "
    "name it gives, and named nothing else, gets that taxon.",
)
@click.option(
    "--names-dataset", metavar="NAME", default=None,
    help="With --names-table: only its rows of this dataset_name (LILA's table maps one "
    "category to other taxa in other datasets, e.g. 'Snapshot Serengeti').",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@verbose_option
@wait_option
@_friendly
def index(
    sources: Sequence[str],
    store: str,
    model: str | None,
    checkpoint: str | None,
    preprocess: str | None,
    metadata: str | None,
    device: str,
    batch_size: int | None,
    workers: int | None,
    commit_every: int,
    source_type: str,
    media_root: str | None,
    allow_private_urls: bool,
    allow_outside_paths: bool,
    download_timeout: float,
    retry_failed: bool,
    fast_decode: bool,
    compile_model: bool,
    precision: str,
    gpu_decode: bool | None,
    engine: str,
    address: str | None,
    num_gpus: int,
    exif: bool,
    reread_exif: bool,
    names_from_folders: bool,
    names_table: str | None,
    names_dataset: str | None,
    quiet: bool,
    wait: bool,
) -> None:
    """Embed the images under SOURCES (folders or files) into a store.

    SOURCES are folders, image files, manifests (CSV/TSV/Parquet/XLSX with a path or URL
    column), Darwin Core Archives (occurrence core + multimedia extension; records without
    images are imported too), zips of photos (no meta.xml: read in place), webdataset tar
    shards (TreeOfLife-10M keys), IIIF manifests, camera traps' SpeciesNet or COCO Camera
    Traps JSON and Camera Trap Data Packages. Remote media are downloaded once into the
    store's media cache.

    Re-running embeds only new or changed files (path, size, mtime) and drops files that
    vanished from the folders given. Unreadable files are recorded, not fatal
    (see `bioindex info --failures`).

    \b
    Examples:
      bioindex index photos/ --store my-store
      bioindex index herbarium/ --store herb --model bioclip-2 --preprocess squash
      bioindex index sheets/ --store s --model local-dir:~/models/bioclip --device cpu
      bioindex index imgs/ --store s --metadata occurrences.csv
      bioindex index trap/ --store s --metadata trap/instances.json   # SpeciesNet's places
      bioindex index photos/ --store s --names-from-folders   # photos/Panthera leo/*.jpg
      bioindex index trap/ --store s --metadata trap.json --names-table names.csv   # taxa
      bioindex index camtrap-package/ --store s          # Camtrap DP (datapackage.json)
      bioindex index big-jpegs/ --store s --fast-decode --device cuda --batch-size 512
      bioindex index photos/ --store s --precision bf16     # CPUs with bf16: ~1.8x
      bioindex index gbif-download.zip --store s          # Darwin Core Archive, fetches media
      bioindex index trap-export.zip --store s            # a zip of photos, read in place
      bioindex index manifest.parquet --store s --media-root /data/images
      bioindex index cct.json --store s --media-root https://storage.googleapis.com/public-datasets-lila/caltech-unzipped/cct_images/
      bioindex index 'tol/shard-{000000..000165}.tar' --store s   # webdataset shards
      bioindex index https://example.org/iiif/manifest.json --store s   # IIIF, by canvas
      bioindex index /shared/photos --store s --engine ray --address auto --num-gpus 8
    """
    from bioindex.collection import Collection, scan_sources
    from bioindex.indexer.names_table import read_names_table
    from bioindex.indexer.remote import FetchPolicy

    if names_dataset is not None and names_table is None:
        raise click.UsageError("--names-dataset chooses rows of a --names-table")
    table = read_names_table(names_table, names_dataset) if names_table else None
    scan = scan_sources(sources, metadata, source_type, media_root, allow_outside_paths,
                        FetchPolicy(timeout=download_timeout,
                                    allow_private=allow_private_urls),
                        names_from_folders, table)  # fmt: skip
    for warning in scan.warnings:
        click.echo(f"warning: {warning}", err=True)
    for note in scan.notes:
        click.echo(f"note: {note}", err=True)
    with Collection.open(
        store, model=model, checkpoint=checkpoint, preprocess=preprocess, device=device,
        create=True, wait=wait,
    ) as collection:
        summary = collection.index(
            scan,
            batch_size=batch_size,
            workers=workers,
            commit_every=commit_every,
            progress=not quiet,
            fast_decode=fast_decode,
            retry_failed=retry_failed,
            download_timeout=download_timeout,
            allow_private_urls=allow_private_urls,
            engine=engine,
            address=address,
            num_gpus=num_gpus,
            gpu_decode=gpu_decode,
            compile=compile_model,
            precision=precision,
            exif=exif,
            reread_exif=reread_exif,
        )
    click.echo(summary.line())
    if summary.exif_unread:
        click.echo(f"note: {summary.exif_unread} unchanged photos were indexed with --no-exif: "
                   f"their EXIF dates and places stay unread; --reread-exif reads them "
                   f"(--no-exif keeps every photo's out)", err=True)  # fmt: skip


class _SearchGroup(click.Group):
    """`bioindex search QUERY …` asks what the page's search box asks (a taxon the catalog
    names, else the text), and `search image` when one of its words is an image file: what a
    new user types first (rclip's one command) was "No such command 'elephant'"."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:  # fmt: skip
        if not args or args[0] in self.commands:
            return super().resolve_command(ctx, args)
        from bioindex.images import names_a_picture

        # An option's value (--store DIR, --add photo.jpg) is not the query.
        words = [a for i, a in enumerate(args)
                 if not (i and args[i - 1].startswith("-") and "=" not in args[i - 1])]
        pictures = any(names_a_picture(a) for a in words)
        arithmetic = any(a.split("=")[0] in ("--add", "--subtract") for a in args)
        name = "image" if pictures else "text" if arithmetic else "box"
        return name, self.commands[name], args


@main.group(cls=_SearchGroup, context_settings={"ignore_unknown_options": True},
            subcommand_metavar="QUERY | COMMAND [ARGS]...")
def search() -> None:
    """Find images by text, by example image, or by an indexed image's id.

    \b
    Examples:
      bioindex search "Cardinalis cardinalis" --store my-store  # the page's search box
      bioindex search query.jpg --store my-store                # an image (search image)
      bioindex search taxon Felidae --store my-store
      bioindex search id 42 --store my-store
    """


RANK_CHOICES = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
where_option = click.option(
    "--where", "-w", "where", multiple=True, metavar="COND",
    help="Filter, repeatable (AND): family=Felidae, species='Felis catus', country_code=KE, "
    "institution_code=FMNH, event_date>=2010-01-01, bbox=W,S,E,N, license=CC0-1.0, "
    "folder=site3 (a folder of that name at any depth), extra.locationID=L1 (a field kept "
    "beside the Darwin Core columns: a metadata file's own column, Camtrap DP's "
    "observationType), extra.speciesnetScore>=0.9 (compared as a number), "
    "vernacular_name~zebra (~: contains).",
)  # fmt: skip
templates_option = click.option(
    "--templates", type=click.Choice(TEMPLATE_CHOICES), default="openai", show_default=True,
    help="With --labels: the prompts each label is put into. openai: 80, averaged "
    "(pybioclip's recipe); one: 'a photo of X.', 80x fewer texts for a first run over a "
    "long list on a CPU, at some accuracy. The vectors are kept either way.",
)  # fmt: skip


group_option = click.option(
    "--group-by", "group_by", type=click.Choice(["occurrence"]), default=None,
    help="One row per specimen (occurrence_id), its best image, with an image count.",
)  # fmt: skip
arithmetic_options = (
    click.option("--add", "add", multiple=True, metavar="[W:]TERM",
                 help="Add a text or image term to the query (weight W, default 1)."),
    click.option("--subtract", "subtract", multiple=True, metavar="[W:]TERM",
                 help="Subtract a text or image term from the query."),
)  # fmt: skip


def _search_command(
    name: str, argument: Callable[..., Any], run: Callable[..., Any], doc: str,
    extra: Sequence[Callable[..., Any]] = (), hidden: bool = False,
) -> None:  # fmt: skip
    def command(store: str, k: int, fmt: str, columns: str | None, model: str | None,
                device: str, where: Sequence[str], group_by: str | None,
                **kwargs: Any) -> None:  # fmt: skip
        from bioindex.collection import Collection
        from bioindex.search.filters import parse_where
        from bioindex.search.query import check_k

        check_k(k)
        conditions = parse_where(where)  # before loading anything: bad filters fail fast
        fetch = k * 5 if group_by else k  # several images per specimen: ask for more
        with Collection.open(store, model=model, device=device, read_only=True,
                             map_index=True) as collection:  # fmt: skip
            hits = run(collection, k=fetch, where=conditions or None, **kwargs)
            empty = not hits and collection.store.live_count() == 0
            gone = _missing_note(hits, collection.store.runs(), store)
        if group_by:
            from bioindex.search.query import group_by_occurrence

            hits = group_by_occurrence(hits, k)
        # The short default set is for eyes; JSON and CSV keep every field for programs.
        shown = parse_columns(columns, HIT_COLUMNS if fmt == "table" else None)
        click.echo(render_hits(hits, fmt, shown), nl=False)
        warn_absent_columns([h.to_dict() for h in hits], columns)
        if gone:
            click.echo(gone, err=True)
        if empty:  # an archive of records without media embeds nothing: say where to go
            click.echo(f"note: {store} holds no images yet: bioindex index PHOTOS --store "
                       f"{store}", err=True)  # fmt: skip
        elif not hits and conditions:  # a filtered search comes back empty only when so
            click.echo(f"note: no image of {store} matches --where {' and '.join(where)}",
                       err=True)  # fmt: skip

    for decorate in (_friendly, *extra, group_option, where_option, device_option, model_option,
                     columns_option, format_option, k_option, store_option,
                     argument):  # fmt: skip
        command = decorate(command)
    search.command(name=name, help=doc, hidden=hidden)(command)


def _missing_note(hits: Sequence[Any], runs: list[dict[str, Any]], store: str) -> str | None:
    """What to do when results name photos no longer where they were indexed."""
    from bioindex.search.query import source_roots

    gone = [h for h in hits if h.missing]
    if not gone:
        return None
    roots = [r for r in source_roots(runs) if gone[0].uri.startswith(r.rstrip(os.sep) + os.sep)]
    where = f" (indexed from {roots[0]})" if roots else ""
    return (f"note: {len(gone)} of these {len(hits)} images' files are gone from where they "
            f"were indexed{where}: moved or deleted? `bioindex index FOLDER --store {store}` "
            f"again finds moved photos and drops deleted ones")


def render_hits(hits: Sequence[Any], fmt: str, columns: Sequence[str] | None) -> str:
    """Catalog matches and look-alikes as two titled lists: each is ranked by its own
    score, and a look-alike is never read as a record of the taxon."""
    from bioindex.collection import LOOK_ALIKE

    rows = [h.to_dict() for h in hits]
    labelled = [r for r in rows if r.get("match") != LOOK_ALIKE]
    alike = [r for r in rows if r.get("match") == LOOK_ALIKE]
    return render_sections([("catalog matches", labelled),
                            ("look-alikes (found by the model, not labelled so)", alike)],
                           fmt, columns, terminal_width())  # fmt: skip


def _text_query(c: Any, k: int, where: Any, query: str, add: Sequence[str],
                subtract: Sequence[str]) -> Any:  # fmt: skip
    if not add and not subtract:
        return c.search_text(query, k=k, where=where)
    return c.search_query([query, *add], subtract, k=k, where=where)


def _image_query(c: Any, k: int, where: Any, paths: Sequence[str], add: Sequence[str],
                 subtract: Sequence[str]) -> Any:  # fmt: skip
    from bioindex.images import not_an_image_file

    if not add and not subtract:
        return c.search_image(paths[0] if len(paths) == 1 else list(paths), k=k, where=where)
    for path in paths:
        if not os.path.isfile(path):
            raise not_an_image_file(path)
    return c.search_query([*paths, *add], subtract, k=k, where=where)


def _query_given(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """The search box's QUERY, or a usage error in `bioindex search`'s own terms: the
    command is hidden, and "Usage: bioindex search box" named one the help does not list."""
    if value is None:
        group = ctx.parent.command
        commands = ", ".join(name for name in group.list_commands(ctx.parent)
                             if not group.get_command(ctx.parent, name).hidden)  # fmt: skip
        raise click.UsageError(f"give a QUERY (a name, a text or an image file) or a command: "
                               f"{commands}", ctx=ctx.parent)  # fmt: skip
    return value


_search_command(
    "box", click.argument("query", required=False, callback=_query_given),
    lambda c, k, where, query: c.search(query, k, where).hits,
    """Images for QUERY as the page's search box finds them: a taxon the catalog names
    (its images, then look-alikes), else a text search. `bioindex search QUERY` runs this.

    \b
    Examples:
      bioindex search Felidae --store my-store
      bioindex search "a frog on a leaf" --store my-store --k 20
    """,
    hidden=True,
)  # fmt: skip
_search_command(
    "text", click.argument("query"), _text_query,
    """Images that best match a text QUERY.

    \b
    Examples:
      bioindex search text "a photo of Cardinalis cardinalis." --store my-store
      bioindex search text "herbarium sheet" --store herb --k 20 --format json
      bioindex search text "a photo of a frog" -s s --where country_code=BR
      bioindex search text "a bird" -s s --add "with red feathers" --subtract "2:in a cage"
    """,
    extra=arithmetic_options,
)  # fmt: skip
_search_command(
    "image", click.argument("paths", nargs=-1, required=True, metavar="PATH..."), _image_query,
    """Images most similar to the picture at PATH (several: views of one specimen, searched
    as one).

    \b
    Examples:
      bioindex search image specimen.jpg --store my-store --k 5 --format csv
      bioindex search image dorsal.jpg ventral.jpg lateral.jpg --store my-store
      bioindex search image leaf.jpg -s herb --where family=Rosaceae --where bbox=-10,35,30,60
      bioindex search image bird.jpg -s s --add "in flight" --subtract "0.5:other.jpg"
    """,
    extra=arithmetic_options,
)  # fmt: skip
_search_command(
    "id", click.argument("image_id", type=int),
    lambda c, k, where, image_id: c.search_id(image_id, k=k, where=where),
    """Nearest neighbours of the indexed image IMAGE_ID (itself left out).

    \b
    Example:
      bioindex search id 42 --store my-store --where institution_code=FMNH
    """,
)  # fmt: skip
_search_command(
    "taxon", click.argument("name"),
    lambda c, k, where, name, mode, taxonomy: c.search_taxon(
        name, k=k, mode=mode, where=where, taxonomy=_taxonomy(taxonomy)),
    """Images of a taxon NAME: a rank name, a binomial, a common name or a lineage prefix.

    The name is resolved against the store's catalog (or --taxonomy). Modes: catalog (images
    labelled so), semantic (the model's text embedding of the taxon; finds unlabelled
    images), hybrid (labelled first, then look-alikes not yet shown; each row says why).

    \b
    Examples:
      bioindex search taxon "Panthera leo" --store my-store
      bioindex search taxon Felidae --store my-store --mode semantic --k 50
      bioindex search taxon "Animalia Chordata Mammalia" -s s --where country_code=KE
      bioindex search taxon lion -s s --taxonomy tol-labels/
    """,
    extra=(
        click.option("--mode", type=click.Choice(["hybrid", "catalog", "semantic"]),
                     default="hybrid", show_default=True),
        click.option("--taxonomy", default=None, metavar="PATH",
                     help="Resolve names against a TreeOfLife label folder or a CSV with "
                     "rank columns instead of the catalog."),
    ),
)  # fmt: skip


def _taxonomy(path: str | None) -> Any:
    if path is None:
        return None
    from pathlib import Path

    from bioindex.errors import BioindexError
    from bioindex.taxonomy import Taxonomy

    if Path(path).is_dir():
        return Taxonomy.from_tree_of_life(path)
    if Path(path).is_file():
        return Taxonomy.from_csv(path)
    raise BioindexError(f"taxonomy {path} does not exist")


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--store",
    "-s",
    default=None,
    metavar="DIR",
    envvar=STORE_ENV,
    show_envvar=True,
    help="Store whose catalog gives the labels and, for knn, the neighbours.",
)
@click.option(
    "--rank",
    type=click.Choice(["kingdom", "phylum", "class", "order", "family", "genus", "species"]),
    default="species",
    show_default=True,
)
@click.option(
    "--method",
    type=click.Choice(["zero-shot", "knn", "combined", "few-shot", "linear-probe"]),
    default="zero-shot",
    show_default=True,
    help="knn: vote of the store's labelled neighbours; combined: zero-shot and that vote, "
    "weighted by what each is worth on the store's labelled images; few-shot: nearest "
    "centroid of the store's own labelled images (SimpleShot); linear-probe: logistic "
    "regression on them. Both learn the collection's look, are calibrated on held-out "
    "labelled images and are cached in the store.",
)
@click.option(
    "--train",
    default=None,
    metavar="FOLDER|TABLE",
    help="few-shot/linear-probe learn from these labelled images instead of the store's: a "
    "folder with a subfolder per species ('Genus epithet'), or a CSV/TSV/XLSX with a file column "
    "and scientificName (or kingdom … specificEpithet); folders named by common names "
    "('zebra/') or a vernacularName column, where none names a species.",
)
@click.option(
    "--labels",
    default=None,
    metavar="FILE|A,B,C",
    help="Custom labels: a file with one per line, or a comma-separated list (with knn: "
    "the store's images called by those common names vote).",
)
@templates_option
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MIN_CONFIDENCE,
    show_default=True,
    help="Answer at the deepest rank whose probability reaches this; below it the rank is "
    "'unknown' (bands: confident, uncertain = backed off to a higher rank, unknown).",
)
@click.option(
    "--near",
    default=None,
    metavar="LAT,LON",
    help="Where the specimen was found: taxa the store records within --radius-km keep "
    "their probability, others keep --outside-weight of it. Leave out to ignore location.",
)
@click.option("--radius-km", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_RADIUS_KM, show_default=True)  # fmt: skip
@click.option(
    "--where",
    "-w",
    "place_where",
    multiple=True,
    metavar="COND",
    help="Where it was found, as catalog conditions (country_code=KE, bbox=W,S,E,N): "
    "re-weights like --near.",
)
@click.option(
    "--species-list",
    default=None,
    metavar="FILE",
    help="Where it was found, as a checklist: a CSV/TSV with a species or scientificName "
    "column (e.g. a GBIF species-list download); re-weights like --near.",
)
@click.option(
    "--outside-weight",
    type=click.FloatRange(0, 1),
    default=DEFAULT_OUTSIDE_WEIGHT,
    show_default=True,
    help="Share of its probability a taxon not recorded at the place keeps (0: only "
    "recorded taxa).",
)
@click.option(
    "--specimen",
    is_flag=True,
    help="IMAGES are views of one specimen: answer once for all of them.",
)
@click.option(
    "--by-event",
    is_flag=True,
    help="A camera trap's frames: those of one folder taken within a minute of each other "
    "(their EXIF time) that show something are answered together, from all of them.",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Zero-shot over the store's taxa: a temperature fitted on the store's labelled "
    "images, so scores mean what they say; --no-calibrate gives the model's own scores "
    "(as pybioclip does).",
)
@click.option(
    "--tol",
    "tol",
    default=None,
    metavar="DIR",
    help="TreeOfLife label folder (txt_emb_species.npy + txt_emb_species.json).",
)
@click.option("--neighbours", default=20, show_default=True, type=click.IntRange(min=1))
@k_option
@format_option
@columns_option
@model_option
@device_option
@_friendly
def classify(images: Sequence[str], store: str | None, rank: str, method: str,
             train: str | None, labels: str | None, templates: str, min_confidence: float,
             near: str | None,
             radius_km: float,
             place_where: Sequence[str], species_list: str | None, outside_weight: float,
             specimen: bool, by_event: bool, calibrate: bool, tol: str | None,
             neighbours: int, k: int, fmt: str, columns: str | None, model: str | None,
             device: str) -> None:  # fmt: skip
    """What is in IMAGES (files, folders of them, webdataset .tar shards)? Zero-shot over a
    label set, a vote of labelled neighbours, both, or a few-shot classifier trained on the
    store's own labelled images.

    Labels: --labels, --tol, or (default) the species named in the store's catalog — or,
    where it names none, the common names its records carry (a camera trap's "zebra"),
    which every method learns as it learns species. Species probabilities are summed by
    lineage up to --rank, as pybioclip does. Each file gets an
    answer at the deepest rank whose probability reaches --min-confidence, and a band. A
    file that cannot be read gets a warning (and an `error` row in JSON/CSV); the others
    are answered.

    \b
    Examples:
      bioindex classify photo.jpg --store my-store --rank family
      bioindex classify *.jpg --tol ~/tol-labels --model bioclip --k 3 --format csv
      bioindex classify new-photos/ --store my-store --format csv > names.csv
      bioindex classify cat.jpg --labels "cat,dog,bear" --model bioclip
      bioindex classify photos/ --labels 10000-names.txt --templates one --model bioclip
      bioindex classify photo.jpg --store my-store --method few-shot
      bioindex classify photo.jpg --store my-store --method few-shot --train labelled/
      bioindex classify photo.jpg --store my-store --near -1.29,36.82 --radius-km 300
      bioindex classify photo.jpg --store my-store --species-list kenya-checklist.csv
      bioindex classify --specimen front.jpg back.jpg label.jpg --store my-store
      bioindex classify sd-card/ --store traps --method few-shot --by-event
    """
    from bioindex.collection import Collection, classify_images
    from bioindex.errors import BioindexError
    from bioindex.models import load_model
    from bioindex.search.labels import (
        labels_from_taxa,
        labels_from_tree_of_life,
        read_labels_argument,
        templated,
    )
    from bioindex.search.place import parse_near, species_list_prior
    from bioindex.search.query import check_k

    check_k(k)
    if labels and tol:
        raise BioindexError("give --labels or --tol, not both")
    if sum(bool(p) for p in (near, place_where, species_list)) > 1:
        raise BioindexError("give one place: --near, --where or --species-list")
    if given("radius_km") and not near:
        raise BioindexError("--radius-km is the distance from --near; give --near LAT,LON")
    if given("outside_weight") and not (near or place_where or species_list):
        raise BioindexError("--outside-weight re-weights taxa by a place; give --near, "
                            "--where or --species-list with it")  # fmt: skip
    label_set = templated(read_labels_argument(labels) if labels else None, templates)
    place = species_list_prior(species_list, outside_weight) if species_list else None
    if train and method not in ("few-shot", "linear-probe"):
        raise BioindexError("--train is for --method few-shot or linear-probe")
    if store is None:
        if method != "zero-shot":
            raise BioindexError(f"--method {method} needs --store")
        if near or place_where:
            raise BioindexError("--near and --where look up where taxa are recorded in a "
                                "store's catalog; give --store, or --species-list")  # fmt: skip
        if label_set is None and tol is None and place is not None and place.taxa:
            label_set, place = labels_from_taxa(place.taxa, place.source), None  # the list's
        if label_set is None and tol is None:
            raise BioindexError("give --labels, --tol, --species-list or --store to classify "
                                "against")  # fmt: skip
        loaded = load_model(model or "bioclip", device=device)
        if tol:
            label_set = labels_from_tree_of_life(tol, loaded.identity.dim)
        predictions = classify_images(
            loaded, images, rank=rank, k=k, method=method, labels=label_set,
            min_confidence=min_confidence, place=place, specimen=specimen, by_event=by_event,
        )  # fmt: skip
    else:
        with Collection.open(store, model=model, device=device, read_only=True,
                             map_index=True) as collection:  # fmt: skip
            if tol:
                label_set = labels_from_tree_of_life(tol, collection.store.dim)
            if near:
                place = collection.place_near(*parse_near(near), radius_km, outside_weight)
            elif place_where:
                place = collection.place_where(place_where, outside_weight)
            predictions = collection.classify(
                images, rank=rank, k=k, method=method, labels=label_set, neighbours=neighbours,
                min_confidence=min_confidence, place=place, specimen=specimen,
                calibrate=calibrate, train=train, by_event=by_event,
            )  # fmt: skip
            if label_set is None and place is not None and place.taxa and (
                    not collection.catalog_names_taxa()):  # the list's species were the labels
                label_set, place = labels_from_taxa(place.taxa, place.source), None
            elif (label_set is None and fmt == "table" and not collection.catalog_names_taxa()
                  and train is None):  # fmt: skip
                learnt = method in ("knn", "few-shot", "linear-probe")
                blank = (", and blank: its empty frames"
                         if learnt and collection.has_empty_frames() else "")  # fmt: skip
                click.echo(f"labels: the {len(collection.common_names())} common names the "
                           f"catalog gives its images (it names no taxa){blank}",
                           err=True)  # fmt: skip
    if label_set is not None and place is None and species_list and fmt == "table":
        click.echo(f"labels: the {len(label_set)} species of {os.path.basename(species_list)}",
                   err=True)  # fmt: skip
    rows = [p.to_dict() for p in predictions]
    if fmt == "table":
        for row in rows:
            if "error" in row:
                click.echo(f"warning: cannot read {row['file']}: {row['error']}", err=True)
        rows = [r for r in rows if "error" not in r]
        if place is not None:
            click.echo(f"place: {place.source} (others weighted {place.outside:g})", err=True)
    click.echo(render_predictions(rows, fmt, parse_columns(columns, None),
                                  terminal_width()), nl=False)  # fmt: skip
    warn_absent_columns(rows, columns)


@main.command()
@store_option
@click.option(
    "--threshold",
    "-t",
    default=0.95,
    show_default=True,
    type=float,
    help="Cosine similarity at or above which two images count as duplicates.",
)
@format_option
@columns_option
@_friendly
def dedup(store: str, threshold: float, fmt: str, columns: str | None) -> None:
    """Groups of duplicate images around an anchor: its identical files (score 1.0), then
    images whose cosine to the anchor is at least --threshold. Groups do not chain.

    \b
    Examples:
      bioindex dedup --store my-store
      bioindex dedup --store my-store --threshold 0.98 --format csv > dups.csv
    """
    from bioindex.search.dedup import find_duplicates
    from bioindex.store import Store

    with Store.open(store, read_only=True) as opened:
        members = find_duplicates(opened, threshold)
    rows = [m.to_dict() for m in members]
    click.echo(render(rows, fmt, parse_columns(columns, DEDUP_COLUMNS if fmt == "table"
                                               else None), terminal_width()), nl=False)
    warn_absent_columns(rows, columns)


@main.command()
@format_option
@columns_option
@_friendly
def models(fmt: str, columns: str | None) -> None:
    """The models a short name stands for (give one to --model): hub name, architecture,
    embedding dim, input size and whether its weights are in the local cache. Nothing is
    downloaded; any other open_clip model works by hf-hub:ORG/REPO or local-dir:PATH.

    \b
    Examples:
      bioindex models
      bioindex models --format json
    """
    from bioindex.models import model_catalog

    default = ["alias", "hub", "architecture", "dim", "image_size", "cached"]
    rows = model_catalog()
    click.echo(render(rows, fmt, parse_columns(columns, default if fmt == "table" else None),
                      terminal_width()), nl=False)  # fmt: skip
    warn_absent_columns(rows, columns)


@main.command()
@store_option
@click.option("--format", "fmt", type=click.Choice(["dwca", "parquet", "npy"]), default="dwca",
              show_default=True,
              help="dwca: a Darwin Core Archive (.zip); parquet/npy: the embeddings.")
@click.option("--output", "-o", required=True, metavar="FILE",
              help="Where to write (npy also writes FILE's .csv with the rows' keys).")
@where_option
@click.option("--from", "from_file", default=None, metavar="FILE",
              help="Only the images of a search or classify result saved with --format json "
              "or csv; a classify result's top predictions become the identifications.")
@click.option("--identify", is_flag=True,
              help="dwca: add bioindex's prediction for each image (Identification extension).")
@click.option("--method",
              type=click.Choice(["zero-shot", "knn", "combined", "few-shot", "linear-probe"]),
              default="zero-shot", show_default=True,
              help="With --identify: as classify's (few-shot and linear-probe learn from the "
              "store's labelled images).")
@click.option("--rank", type=click.Choice(RANK_CHOICES), default="species",
              show_default=True, help="With --identify: the rank to name.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=DEFAULT_MIN_CONFIDENCE,
              show_default=True,
              help="With --identify: each image is named at the deepest rank from --rank up "
              "whose probability reaches this; an image that reaches it at no rank gets no "
              "identification.")
@click.option("--labels", default=None, metavar="FILE|A,B,C",
              help="With --identify: the labels (default: the catalog's species).")
@templates_option
@click.option("--tol", "tol", default=None, metavar="DIR",
              help="With --identify: TreeOfLife label folder.")
@click.option("--by-event", is_flag=True,
              help="With --identify: a camera trap's frames of one trigger (one eventID, as "
              "COCO Camera Traps' seq_id is read; without one, the frames of a folder taken "
              "within a minute of each other by their EXIF time) that show an animal are "
              "named together, from all of them; empty frames stay empty.")
@click.option("--with-media", is_flag=True,
              help="dwca: copy local image files into the archive so it stands alone.")
@_friendly
def export(store: str, fmt: str, output: str, where: Sequence[str], from_file: str | None,
           identify: bool, method: str, rank: str, min_confidence: float, labels: str | None,
           templates: str, tol: str | None, by_event: bool, with_media: bool
           ) -> None:  # fmt: skip
    """Hand a store on: a Darwin Core Archive of its occurrences and images (with
    bioindex's identifications when asked) for a collection database or GBIF, or its
    embeddings (L2-normalised float32) for your own tools.

    \b
    Examples:
      bioindex export -s herb -o herb-dwca.zip --identify --rank genus --with-media
      bioindex export -s herb -o sheets.zip --where institution_code=BR --identify
      bioindex export -s traps -o frames.zip --identify --method few-shot --by-event
      bioindex export -s herb --format parquet -o vectors.parquet
      bioindex search text "orchid" -s herb -k 100 --format json > hits.json
      bioindex export -s herb --format npy -o orchids.npy --from hits.json
      bioindex classify sheets/*.jpg -s herb --rank genus --format json > ids.json
      bioindex export -s herb -o identified.zip --from ids.json
    """
    from bioindex.collection import Collection
    from bioindex.search.labels import (
        labels_from_tree_of_life,
        read_labels_argument,
        templated,
    )

    if (labels or tol or method != "zero-shot" or rank != "species" or by_event
            or templates != "openai" or min_confidence != DEFAULT_MIN_CONFIDENCE
            ) and not identify:  # fmt: skip
        raise click.UsageError("--method, --rank, --min-confidence, --labels, --templates, "
                               "--tol and --by-event go with --identify")  # fmt: skip
    rows = _result_rows(from_file) if from_file else None
    with Collection.open(store, read_only=True) as collection:
        ids, predictions = collection.from_results(rows) if rows is not None else (None, None)
        label_set = templated(read_labels_argument(labels) if labels else None, templates)
        if tol:
            label_set = labels_from_tree_of_life(tol, collection.store.dim)
        written = collection.export(output, fmt, where=list(where) or None, image_ids=ids,
                                    identify=identify, method=method, rank=rank,
                                    labels=label_set, with_media=with_media,
                                    identifications=predictions, by_event=by_event,
                                    min_confidence=min_confidence)  # fmt: skip
    if written.get("unidentified"):
        click.echo(f"note: {written['unidentified']} of the {written['images']} images have no "
                   f"identification: the classifier reached --min-confidence at no rank "
                   f"(\"unknown\"), or called them empty frames", err=True)  # fmt: skip
    if by_event and not written.get("images_in_events"):
        click.echo("note: no image has an eventID (a camera trap's burst, as COCO Camera Traps' "
                   "seq_id is read) or a time within a minute of another frame of its folder, "
                   "so --by-event named each one alone", err=True)  # fmt: skip
    if written.get("media_referenced"):
        click.echo(f"note: {written['media_referenced']} local images are named by path; "
                   f"give --with-media for an archive that stands alone", err=True)
    click.echo(render_mapping(written, "table", terminal_width()), nl=False)


def _result_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a saved search or classify result (JSON list, or CSV)."""
    import csv
    import json

    from bioindex.errors import BioindexError

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise BioindexError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # a photo or an archive named by mistake
        text = ""
    try:
        rows = json.loads(text) if text.lstrip().startswith(("[", "{")) else [
            {k: csv_value(v) if isinstance(v, str) else v for k, v in row.items()}
            for row in csv.DictReader(text.splitlines())]
        if isinstance(rows, dict):
            rows = rows.get("hits") or rows.get("results") or []
        rows = [row for row in rows if isinstance(row, dict)]
    except ValueError:
        rows = []
    if not any(row.get("image_id") not in (None, "") or row.get("file") for row in rows):
        raise BioindexError(f"{path} is not a search or classify result saved with --format "
                            f"json or csv (rows with an image_id or a file)")
    return rows


@main.command("build-index")
@store_option
@click.option(
    "--kind",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivf-pq"]),
    help="auto: exact flat while it fits and stays fast, then IVF (8-bit codes), then IVF-PQ.",
)
@click.option(
    "--memory",
    default="4G",
    show_default=True,
    help="Memory the index may take (e.g. 512M, 16G); guides auto and the PQ code size.",
)
@click.option(
    "--target-recall",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="recall@10 against exact search that nprobe / efSearch are tuned to reach.",
)
@click.option(
    "--rerank/--no-rerank",
    default=None,
    help="Re-rank candidates against the stored float16 vectors (default: on for "
    "approximate kinds; an HNSW graph holds the vectors themselves, so its scores are "
    "already exact and it re-ranks only after an image it holds was replaced).",
)
@click.option(
    "--tune-on",
    "tune_on",
    multiple=True,
    type=click.Path(exists=True),
    help="Images (files or folders) like the ones you will search with, to tune on instead "
    "of held-out stored images; repeatable. Worth it when stored images come in groups "
    "(camera-trap bursts, several views of a specimen) and queries do not.",
)
@engine_option("ray: add the shards in parallel Ray tasks and merge (after a --engine ray ingest).")
@click.option("--address", default=None, help="With --engine ray: the cluster to join.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@verbose_option
@wait_option
@format_option
@_friendly
def build_index(store: str, kind: str, memory: str, target_recall: float,
                rerank: bool | None, tune_on: tuple[str, ...], engine: str,
                address: str | None, quiet: bool, wait: bool, fmt: str) -> None:  # fmt: skip
    """Build the FAISS index from the stored vectors, tune it, and record its recall.

    auto: exact flat search while the store is small; past that, each candidate kind is
    built and tuned on samples of the store's own vectors and the fastest that meets
    --target-recall within --memory is built (`bioindex info` shows the comparison).
    Streams the embedding shards (training IVF kinds on a sample), then measures recall@10
    against exact search on held-out stored vectors (or on the --tune-on pictures) and
    keeps the smallest nprobe / efSearch that reaches --target-recall. Text queries get
    their own setting, tuned the same way on texts like the store's own (captions of its
    taxa, everyday group names): they land away from every picture, where a search tuned
    on pictures finds less.
    `bioindex info` shows the result.

    \b
    Examples:
      bioindex build-index --store my-store
      bioindex build-index --store my-store --kind ivf-pq --memory 2G
      bioindex build-index --store my-store --kind hnsw --target-recall 0.99
      bioindex build-index --store my-store --tune-on new-photos/
    """
    from bioindex.collection import Collection

    with Collection.open(store, wait=wait) as collection:
        spec = collection.build_index(kind, memory, target_recall, rerank, progress=not quiet,
                                      engine=engine, address=address,
                                      tune_on=list(tune_on) or None)  # fmt: skip
    built = spec.get("built", {})
    row = {
        "kind": spec["kind"], "vectors": built.get("ntotal"),
        "search": ", ".join(f"{k}={v}" for k, v in spec["search"].items()) or "exact",
        "rerank": spec["rerank"], "recall@10": built.get("recall_at_10"),
        "p50_ms": built.get("latency_ms_p50"), "p99_ms": built.get("latency_ms_p99"),
        "build_s": built.get("build_seconds"), "index_mb": round(built["index_bytes"] / 2**20, 1),
    }  # fmt: skip
    click.echo(render([row], fmt), nl=False)
    if built.get("tuned_on") == "pictures given" and fmt == "table":
        count = built.get("queries")
        click.echo(f"tuned on {count} picture{'' if count == 1 else 's'} given (--tune-on), "
                   "not on held-out stored ones")  # fmt: skip
    if built.get("candidates") and fmt == "table":
        from bioindex.index_choice import describe

        click.echo(f"auto measured candidates on samples of this store; "
                   f"{describe(built['candidates'])} (at {built.get('ntotal')} vectors; the "
                   f"p50 above is the built index's own)")
    text = built.get("text_tuning")
    if text and fmt == "table":
        setting = ", ".join(f"{k}={v}" for k, v in spec.get("search_text", {}).items())
        short = "" if text["met_target"] else f", short of {target_recall} at the widest"
        click.echo(f"text queries: {setting} (recall@10 {text['recall_at_10']} on "
                   f"{text['queries']} text probes{short}, p50 {text['latency_ms_p50']} ms)")
    if built.get("met_target") is False:
        click.echo(build_warning(built, target_recall), err=True)


def build_warning(built: dict[str, Any], target: float) -> str:
    """The target is met by recall@10's 95% lower bound, not by the estimate: say so."""
    return (f"warning: even at the widest search the 95% lower bound of recall@10 "
            f"({built.get('recall_lower_bound')}) stays below the target {target} "
            f"(estimate {built.get('recall_at_10')}); --kind flat searches exactly")  # fmt: skip


@main.command()
@store_option
@click.option("--rank", type=click.Choice(RANK_CHOICES), default="species",
              show_default=True, help="Count the taxa at this rank.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@_friendly
def names(store: str, rank: str, fmt: str) -> None:
    """What the catalog names its images, and how many each: its species (or taxa at
    --rank) — or, where it names no taxa, its common names and empty frames. The check
    that --metadata, --names-from-folders or --names-table were read as meant.

    \b
    Examples:
      bioindex names --store my-store
      bioindex names --store my-store --rank family --format csv
    """
    from bioindex.collection import Collection

    with Collection.open(store, read_only=True) as collection:
        rows = collection.name_counts(rank)
    click.echo(render(rows, fmt, None, terminal_width()), nl=False)


@main.command()
@store_option
@click.option("--failures", is_flag=True, help="List the files that could not be indexed.")
@click.option(
    "--format", "fmt", default="table", type=click.Choice(["table", "json"]), show_default=True
)
@_friendly
def info(store: str, failures: bool, fmt: str) -> None:
    """Model, counts, index and last run of a store.

    \b
    Examples:
      bioindex info --store my-store
      bioindex info --store my-store --failures --format json
    """
    from bioindex.store import Store

    with Store.open(store, read_only=True, map_index=True) as opened:
        data: Any = opened.failures() if failures else opened.info()
    if failures and not data and fmt == "table":
        click.echo("no failures: every file the runs listed was indexed")
    elif failures:
        click.echo(render(data, fmt, None, terminal_width()), nl=False)
    else:
        click.echo(render_mapping(data, fmt, terminal_width()), nl=False)


@main.command()
@store_option
@click.option("--full", is_flag=True, help="Also verify every file's sha256 (reads it all).")
@click.option("--repair", is_flag=True,
              help="Mend what is found: rebuild the index, drop lost files, mark images whose "
              "vectors were lost for re-embedding by the next `bioindex index`.")
@_friendly
def check(store: str, full: bool, repair: bool) -> None:
    """Verify a store: every file of its current generation against its size and checksum.

    Prints one line per problem and exits 1 when there is any (0 after a repair).

    \b
    Examples:
      bioindex check --store my-store
      bioindex check --store my-store --full
      bioindex check --store my-store --repair && bioindex index photos/ --store my-store
    """
    from pathlib import Path

    from bioindex.store import check as checking

    report = (checking.repair if repair else checking.check)(Path(store), full)
    for line in report.problems:
        click.echo(f"problem: {line}")
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    if report.ok:
        click.echo(f"ok: generation {report.generation}, every file checks out")
    elif not repair:
        click.echo(f"run bioindex check --store {store} --repair to mend it", err=True)
        sys.exit(1)


@main.command()
@store_option
@click.argument("query", required=False)
@click.option("--views", is_flag=True,
              help="Print CREATE VIEW statements that open the catalog in the duckdb CLI.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@_friendly
def sql(store: str, query: str | None, views: bool, fmt: str) -> None:
    """Run a read-only DuckDB QUERY on the catalog's current generation.

    Tables: images (one row per image, Darwin Core columns), failures, occurrences.

    \b
    Examples:
      bioindex sql --store s "SELECT family, count(*) FROM images GROUP BY 1 ORDER BY 2 DESC"
      bioindex sql --store s "SELECT uri, error FROM failures" --format csv
      bioindex sql --store s --views > views.sql && duckdb -init views.sql
    """
    from bioindex.store import Store

    with Store.open(store, read_only=True) as opened:
        if views:
            click.echo(opened.catalog.view_sql())
            return
        if not query:
            raise BioindexError("give a QUERY, or --views")
        names, rows = opened.catalog.query(query)
    click.echo(render([dict(zip(names, row)) for row in rows], fmt, None, terminal_width()),
               nl=False)  # fmt: skip


@main.command()
@store_option
@_friendly
def migrate(store: str) -> None:
    """Bring a store made by an older bioindex to this version's format, in place.

    The vector shards stay; the catalog becomes Parquet segments; the old catalog file
    is kept as catalog.v1.duckdb. Opening an old store with any command does the same.

    \b
    Examples:
      bioindex migrate --store my-store
    """
    from pathlib import Path

    from bioindex.store import legacy

    click.echo(legacy.migrate(Path(store)))


@main.command()
@click.option(
    "--dir",
    "workdir",
    default="bioindex-demo",
    show_default=True,
    help="Where the demo collection and its store are written.",
)
@click.option(
    "--species",
    "images_per_species",
    default=6,
    show_default=True,
    type=int,
    help="Images drawn per species.",
)
@click.option("--seed", default=7, show_default=True, type=int)
@device_option
@_friendly
def demo(workdir: str, images_per_species: int, seed: int, device: str) -> None:
    """Offline demo: draw a small synthetic collection, index it with the demo model, query it.

    \b
    Example:
      bioindex demo --dir /tmp/demo
    """
    from bioindex.demo.run import run_demo

    run_demo(
        workdir, images_per_species=images_per_species, seed=seed, device=device, echo=click.echo
    )


@main.command()
@store_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; anything but loopback needs --token or --public.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="0: any free port (the ready line says which).")
@click.option("--token", default=None, metavar="SECRET", envvar="BIOINDEX_TOKEN",
              help="Every API call must send 'Authorization: Bearer SECRET' (the page asks "
              "for it once). Also read from $BIOINDEX_TOKEN.")  # fmt: skip
@click.option("--public", is_flag=True,
              help="Serve beyond loopback without a token: anyone who reaches the port can "
              "search the collection and see its records.")  # fmt: skip
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another Host name the server answers to (a DNS name or proxy in front); "
              "the bound address and localhost always are.")  # fmt: skip
@click.option("--max-upload-mb", default=20, show_default=True, type=click.IntRange(1, 1024))
@click.option("--max-megapixels", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="Uploads are decoded to at most this: a larger JPEG, JPEG 2000 or pyramidal "
              "TIFF at reduced scale, any other format refused from its header.")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests answered at once; their model calls are batched together. "
              "1: one request at a time.")
@click.option("--max-label-texts", default=4096, show_default=True, type=click.IntRange(0),
              help="Texts one classify request's custom labels may take to encode (80 a "
              "label, 1 with templates=one; labels asked before are free). 0: no limit.")
@model_option
@device_option
@_friendly
def serve(store: str, host: str, port: int, token: str | None, public: bool,
          allowed_hosts: Sequence[str], max_upload_mb: int, max_megapixels: int,
          workers: int, max_label_texts: int, model: str | None,
          device: str) -> None:  # fmt: skip
    """HTTP API (JSON, OpenAPI at /docs) and a search page over a store, read-only.

    \b
    Examples:
      bioindex serve --store my-store
      bioindex serve --store my-store --port 9000 --device cuda
      bioindex serve --store my-store --host 0.0.0.0 --token "$(openssl rand -hex 16)"
      curl 'http://127.0.0.1:8000/api/search?q=Felidae&k=5'
    """
    from bioindex.serve.app import create_app
    from bioindex.serve.guard import LOOPBACK_NAMES
    from bioindex.serve.run import serve_app

    exposed = host not in LOOPBACK_NAMES
    if exposed and not token and not public:
        raise BioindexError(f"--host {host} serves the collection to the network; give "
                            f"--token SECRET (clients send it as a bearer token), or --public "
                            f"to serve it to anyone")  # fmt: skip
    hosts = (*LOOPBACK_NAMES, *allowed_hosts) + ((host,) if host not in ("0.0.0.0", "::") else ())
    if exposed:
        import socket

        hosts += (socket.gethostname(), socket.getfqdn())
        click.echo(f"warning: listening on {host}: "
                   + ("only clients with the token are answered" if token else
                      "anyone who can reach this port can search the collection"),
                   err=True)  # fmt: skip
    if workers > 1:
        import faiss

        # Requests search side by side: one OpenMP team per search would oversubscribe
        # the cores (every team spins up all cores for one small query).
        faiss.omp_set_num_threads(1)
    app = create_app(store, model=model, device=device, token=token, hosts=hosts,
                     max_upload_bytes=max_upload_mb * 1024 * 1024,
                     max_pixels=max_megapixels * 1_000_000, workers=workers,
                     max_label_texts=max_label_texts)  # fmt: skip
    collection = app.state.collection
    click.echo(f"store {store}: {collection.store.live_count()} images, model "
               f"{collection.identity.name} on {collection.model.device}", err=True)  # fmt: skip
    checked, missing = collection.store.missing_files()
    if missing:  # the page would show empty frames: say why before anyone asks
        click.echo(f"warning: {missing} of {checked} photos checked are gone from where they "
                   f"were indexed (moved or deleted?); `bioindex index FOLDER --store {store}` "
                   f"again finds moved photos and drops deleted ones", err=True)  # fmt: skip
    served = serve_app(app, host, port, echo=lambda line: click.echo(line, err=True))
    click.echo(f"stopped after {served} requests; goodbye", err=True)


if __name__ == "__main__":
    main()
