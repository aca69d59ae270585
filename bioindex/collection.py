"""The Python API: a searchable collection = a store plus the model its vectors came from.

from bioindex import Collection

with Collection.open("my-store", model="bioclip", create=True) as col:
    col.index(["photos/"])
    for hit in col.search_text("a photo of Cardinalis cardinalis.", k=5):
        print(hit.score, hit.uri)
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bioindex import image_tower, text_tower, towers
from bioindex.errors import (
    BioindexError,
    ImageTooLarge,
    NoTaxaError,
    Remedy,
    UnknownTaxonError,
)
from bioindex.export.archive import Identification, write_archive
from bioindex.export.vectors import write_npy, write_parquet
from bioindex.images import (
    IMAGE_EXTENSIONS,
    describe_error,
    expand_folders,
    image_files,
    not_an_image_file,
    open_image,
)
from bioindex.indexer.names_table import NamesTable, read_names_table
from bioindex.indexer.pipeline import IndexSummary, run_index
from bioindex.indexer.remote import FetchPolicy
from bioindex.indexer.sources import Item, Scan, scan_paths, shard_images, zip_photos
from bioindex.indexer.zipped import holds_darwin_core
from bioindex.models import EmbeddingModel, ModelIdentity, check_precision, load_model
from bioindex.search.bursts import group_mates, time_bursts
from bioindex.search.calibration import (
    Pool,
    brier_score,
    fit_pool,
    fit_scale,
    fit_temperature,
    top_label_log_loss,
)
from bioindex.search.classify import (
    DEFAULT_NEIGHBOURS,
    UNKNOWN,
    Prediction,
    classify_vectors,
    knn_label_votes,
    knn_votes,
    label_voters,
    species_voters,
    vote_shares,
)
from bioindex.search.dedup import DuplicateMember, find_duplicates
from bioindex.search.defaults import (
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_OUTSIDE_WEIGHT,
    DEFAULT_RADIUS_KM,
)
from bioindex.search.fewshot import (
    FEW_SHOT_METHODS,
    HEAD_VERSION,
    MIN_HELD_OUT,
    Head,
    cached_head,
    fit_head,
    labelled_common_names,
    labelled_species,
    store_head,
    training_head_places,
)
from bioindex.search.filters import (
    BLANK,
    Filter,
    and_filters,
    blank_filter,
    common_name_filter,
    common_name_key,
    parse_where,
    taxon_filter,
)
from bioindex.search.labels import (
    LabelSet,
    RecentLabels,
    default_cache_root,
    label_vectors,
    labels_from_strings,
    labels_from_taxa,
    taxa_from_rows,
    templated,
)
from bioindex.search.place import (
    PlacePrior,
    catalog_prior,
    within_radius,
)
from bioindex.search.query import Hit, check_k, nearest, search_vector, to_hits
from bioindex.search.training import Example, read_training_set, training_key
from bioindex.store import Store
from bioindex.taxonomy import RANKS, Taxon, Taxonomy, looks_scientific, spellings

log = logging.getLogger(__name__)

# Each tower kept as arrays: how it is written from a loaded model, and read back.
TOWERS = {"text": (text_tower.export, text_tower.TextTower),
          "image": (image_tower.export, image_tower.ImageTower)}  # fmt: skip

Where = str | Sequence[str] | Mapping[str, Any] | Filter | None
# One path or several (a folder, where images are asked for, is the images under it).
Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
Texts = str | Sequence[str]

CLASSIFY_BATCH = 16  # image files decoded and embedded per model call
# At most this many pictures at once go through the kept image tower while the model is not
# loaded (a shell's classify of a specimen's views); more load the model, which is faster
# per picture once loaded (ViT-B-16 on 2 cores: numpy ~0.43 s a picture against a load of
# ~10 s and ~0.1 s a picture).
MOST_TOWER_PICTURES = 8
EMPTY_WORDS = ("blank", "empty")  # what a search box is typed to find a camera trap's empty frames
CALIBRATION_IMAGES = 4096  # labelled images a zero-shot temperature is fitted on, at most
# Labelled images combined's two weights are fitted on, at most: each is voted on by its
# neighbours (512 searched together: ~1 s on a flat store of 300k), and two numbers need far
# fewer than a temperature's 4096.
POOL_IMAGES = 512
EXPORT_FORMATS = ("dwca", "parquet", "npy")
SEARCH_MODES = ("hybrid", "catalog", "semantic")

DEFAULT_MODEL = "bioclip"
LOOK_ALIKE = "look-alike"  # a hit found by the model's eye, not by the catalog's label

# What to do when a store has no taxon names, said for each interface.
NAME_TAXA = Remedy(
    python="pass taxonomy=Taxonomy.from_csv(PATH) or labels=…, or index with metadata= to "
    "name the images' taxa",
    http="search by text, or give labels=A,B,C to classify against",
    cli=(("--taxonomy", "give --taxonomy PATH (a TreeOfLife label folder or a CSV with rank "
                        "columns), or index the images with --metadata FILE"),
         ("--labels", "give --labels A,B,C or --tol DIR (TreeOfLife labels), or index the "
                      "images with --metadata FILE"),
         ("", "index the images with --metadata FILE to name their taxa")),
)  # fmt: skip
NAME_IMAGES = Remedy(
    python="index the images with metadata=, names_from_folders=True or names_table=",
    http="index the images with --metadata FILE",
    cli=(("", "index the images with --metadata FILE, --names-from-folders or --names-table "
              "TABLE"),),
)  # fmt: skip
LOOK_INSTEAD = Remedy(
    python="use mode='semantic' to find look-alikes", http="use mode=semantic",
    cli=(("--mode", "use --mode semantic to find look-alikes"),),
)  # fmt: skip
AS_TEXT = Remedy(
    python="search_text() searches free text", http="use /api/search/text for free text",
    cli=(("", "for free text use bioindex search text"),),
)  # fmt: skip


@dataclass
class Answer:
    """A search box's answer: how the query was read (`taxon` the catalog names, a Latin
    `name` it does not, or free `text`) and the hits (catalog matches first)."""

    kind: str
    hits: list[Hit]
    taxon: dict[str, str] | None = None
    rank: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"query_as": self.kind, "taxon": self.taxon, "rank": self.rank,
                "results": [h.to_dict() for h in self.hits]}  # fmt: skip


def listed(value: Any) -> list[Any]:
    """A lone string or path as a list of one: iterated, its characters would be the items
    (a path's "/" a folder to walk, "cat" three texts)."""
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def scan_sources(
    sources: Paths,
    metadata: str | os.PathLike[str] | None = None,
    source_type: str = "auto",
    media_root: str | os.PathLike[str] | None = None,
    allow_outside_paths: bool = False,
    fetch_policy: FetchPolicy | None = None,
    names_from_folders: bool = False,
    names_table: NamesTable | str | os.PathLike[str] | None = None,
) -> Scan:
    """List what folders, files, manifests, Darwin Core Archives or tar shards hold
    (raises on missing paths or when nothing is found). Media paths in manifests and
    archives outside their folder (or `media_root`) are failures unless
    `allow_outside_paths`. `names_from_folders`: photos in folders named for a species
    ("Panthera leo/", or the seven ranks joined by "_") are named so. `names_table`
    (read_names_table, or its path): photos called by a common name get the taxon it
    gives."""
    if names_table is not None and not isinstance(names_table, NamesTable):
        names_table = read_names_table(names_table)
    return scan_paths(listed(sources), metadata_file=str(metadata) if metadata else None,
                      source_type=source_type, media_root=media_root,
                      allow_outside_paths=allow_outside_paths,
                      fetch_policy=fetch_policy,
                      names_from_folders=names_from_folders,
                      names_table=names_table)  # fmt: skip


class RecentTexts:
    """The latest text vectors in memory (a server is asked the same texts over and over;
    the query cache on disk costs a file read each). Thread-safe, least recently used out.
    A text one caller is encoding is waited for by the others, not encoded again: two
    encodes of one text in model batches of different sizes differ by float rounding, and
    sixteen identical queries at once got two different answers (#18)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def claim(self, texts: Sequence[str]
              ) -> tuple[dict[str, np.ndarray], list[str], dict[str, Future]]:  # fmt: skip
        """(vectors known, texts the caller must encode and `settle`, other callers'
        pending encodes to wait for), each distinct text in one of them."""
        known: dict[str, np.ndarray] = {}
        mine: list[str] = []
        theirs: dict[str, Future] = {}
        with self._lock:
            for text in dict.fromkeys(texts):
                if text in self._vectors:
                    known[text] = self._vectors[text]
                    self._vectors.move_to_end(text)
                elif text in self._pending:
                    theirs[text] = self._pending[text]
                else:
                    self._pending[text] = Future()
                    mine.append(text)
        return known, mine, theirs

    def settle(self, texts: Sequence[str], vectors: np.ndarray | None = None,
               error: BaseException | None = None) -> None:  # fmt: skip
        """The claimed `texts` are encoded (`vectors`) or failed (`error`, handed to whoever
        waits for them)."""
        with self._lock:
            if vectors is not None:
                for text, vector in zip(texts, vectors):
                    self._vectors[text] = vector
                    self._vectors.move_to_end(text)
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
            waiting = [self._pending.pop(text) for text in texts]
        for i, promise in enumerate(waiting):
            if vectors is not None:
                promise.set_result(vectors[i])
            else:
                promise.set_exception(error or RuntimeError("text not encoded"))


class Collection:
    def __init__(self, store: Store, model: EmbeddingModel | None = None, device: str = "auto"):
        self.store = store
        self._model = model
        self._device = device
        self._recent_texts = RecentTexts()
        self._towers: dict[str, Any] = {}  # the model's towers as arrays (_tower)
        self._towers_kept = False  # checked (and written) once per collection (_keep_towers)
        # What is derived from one generation of the store (taxonomy, label vectors, the
        # zero-shot temperature, few-shot heads), and from a training set: computed once,
        # by whichever request asks first; a server's concurrent asks for the same thing
        # wait for that one (six first asks trained a head six times), others do not.
        self._derived: dict[str, tuple[Any, Any]] = {}
        self._deriving: dict[str, threading.Lock] = {}
        self._deriving_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        checkpoint: str | None = None,
        preprocess: str | None = None,
        device: str = "auto",
        create: bool = False,
        read_only: bool = False,
        map_index: bool = False,
        wait: bool | float = False,
    ) -> Collection:
        """Open a store; with create=True make it (with `model`, default bioclip) if missing.

        Naming a model for an existing store checks that it is the store's model. A
        writable store takes the store's writer lock: another writer makes this wait
        (`wait` True, or that many seconds) or raise, naming the holder.
        `map_index` (with read_only) maps the index file instead of reading it: quicker
        for one query on a large store, slower for many (see Store.open).
        """
        if Store.exists(path):
            store = Store.open(path, read_only=read_only, map_index=map_index, wait=wait)
            collection = cls(store, device=device)
            if model is not None or checkpoint is not None:
                try:
                    loaded = load_model(
                        model or store.model["name"],
                        checkpoint=checkpoint,
                        preprocess=preprocess or store.model["preprocess"],
                        device=device,
                    )
                    collection._adopt(loaded)
                except BaseException:
                    store.close()
                    raise
            return collection
        if not create:
            if Path(path).exists() and not Path(path).is_dir():
                raise BioindexError(f"store path {path} exists and is not a directory")
            Store.check_damaged(path)
            raise BioindexError(f"no bioindex store at {path}; create one with bioindex index")
        if Path(path).exists() and not Path(path).is_dir():
            raise BioindexError(f"store path {path} exists and is not a directory")
        loaded = load_model(
            model or DEFAULT_MODEL,
            checkpoint=checkpoint,
            preprocess=preprocess or "eval",
            device=device,
        )
        store = Store.create(path, {**loaded.identity.to_dict(), "checkpoint": checkpoint},
                             wait=wait)  # fmt: skip
        collection = cls(store, device=device)
        try:
            collection._adopt(loaded)  # another run may have made the store meanwhile
        except BaseException:
            store.close()
            raise
        return collection

    def close(self, save_index: bool = True) -> None:
        stop = getattr(type(self._model), "close", None)  # a batching stand-in's thread
        if stop is not None:
            stop(self._model)
        self.store.close(save_index)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close(save_index=kind is None)

    # ---- the model -----------------------------------------------------------------

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.store.model)

    @property
    def model(self) -> EmbeddingModel:
        """The store's own model, loaded on first use and checked against the manifest."""
        if self._model is None:
            manifest = self.store.model
            loaded = load_model(
                manifest["name"],
                checkpoint=manifest.get("checkpoint"),
                preprocess=manifest["preprocess"],
                device=self._device,
            )
            self._adopt(loaded)
        return self._model

    def _adopt(self, loaded: EmbeddingModel) -> None:
        self.identity.require_same(loaded.identity, f"store {self.store.path}")
        self._model = loaded

    # ---- writing -------------------------------------------------------------------

    def index(
        self,
        sources: Paths | Scan,
        *,
        metadata: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        commit_every: int = 2048,
        progress: bool = True,
        fast_decode: bool = False,
        source_type: str = "auto",
        media_root: str | os.PathLike[str] | None = None,
        download_timeout: float = 20.0,
        max_download_bytes: int = 50 * 1024 * 1024,
        allow_private_urls: bool = False,
        allow_outside_paths: bool = False,
        retry_failed: bool = False,
        engine: str = "local",
        address: str | None = None,
        num_gpus: int = 0,
        gpu_decode: bool | None = None,
        compile: bool = False,
        precision: str = "auto",
        exif: bool = True,
        reread_exif: bool = False,
        names_from_folders: bool = False,
        names_table: NamesTable | str | os.PathLike[str] | None = None,
    ) -> IndexSummary:
        """Embed new or changed images, forget vanished ones; returns the run's counts.

        `names_from_folders`: a photo in a folder named for a species ("Panthera leo/",
        "Panthera_leo/", or the seven ranks joined by "_") is named so where its metadata
        names nothing (scan_sources says which folders gave names). `names_table`
        (indexer.names_table.read_names_table: LILA's taxonomy mapping, or a curator's
        table of common names and taxa): a photo called by a common name and named
        nothing else gets the taxon the table gives that name.

        `exif`: a photo's date and GPS position (images.photo_facts) fill eventDate and
        the coordinates where its metadata gives none; off, they are not read (a phone's
        GPS can place a rare species more exactly than a collection publishes), and those
        earlier runs took from the unchanged photos are removed (each photo holding a date
        or place is read again to tell which).
        `reread_exif`: read them for the unchanged photos too, once, for a store indexed
        before bioindex read EXIF (each file is read again; nothing is re-embedded).

        Media URLs are fetched while the local files embed, each within `download_timeout`
        seconds and `max_download_bytes`, from public addresses only unless
        `allow_private_urls` (see indexer.remote).

        engine='ray' decodes and embeds on a Ray cluster (`address` 'auto' or
        'ray://host:port'; none starts a local one) with `num_gpus` GPU actors.
        `gpu_decode` (default: on with CUDA) decodes baseline JPEGs on the model's device;
        `compile` runs the image tower through torch.compile (local engine); `precision`
        'bf16' runs it with bf16 weights (CPUs with bf16 instructions, CUDA), 'float32'
        without CUDA's bf16 autocast (see EmbeddingModel.set_precision)."""
        check_precision(precision)  # before any file is scanned
        policy = FetchPolicy(timeout=download_timeout, max_bytes=max_download_bytes,
                             allow_private=allow_private_urls)  # fmt: skip
        if isinstance(sources, Scan):  # scanned by the caller, who has seen its warnings
            scan = sources
        else:
            scan = scan_sources(sources, metadata, source_type, media_root, allow_outside_paths,
                                policy, names_from_folders, names_table)  # fmt: skip
            for warning in scan.warnings:
                log.warning("%s", warning)
            for note in scan.notes:
                log.info("%s", note)
        if batch_size is not None and batch_size < 1:
            raise BioindexError(f"batch size must be at least 1, got {batch_size}")

        def load() -> EmbeddingModel:
            # Only when there is something to embed: a rerun over unchanged files is
            # answered without loading (or importing) the model.
            model = self.model
            model.set_precision(precision)
            if compile:
                model.compile_visual()
            return model

        summary = run_index(
            self.store,
            load,
            scan,
            batch_size=batch_size,
            workers=workers,
            commit_every=commit_every,
            progress=progress,
            fast_decode=fast_decode,
            fetch_policy=policy,
            retry_failed=retry_failed,
            engine=engine,
            gpu_decode=gpu_decode,
            photo_facts=exif,
            reread_exif=reread_exif,
            ray_options={"address": address, "num_gpus": num_gpus,
                         "checkpoint": self.store.model.get("checkpoint")},
        )  # fmt: skip
        self._keep_towers()  # loaded to embed: the first query need not load it
        return summary

    def rebuild_index(self) -> int:
        return int(self.store.rebuild_index().ntotal)

    def refresh(self) -> bool:
        """Move a reader to the store's newest generation (see Store.refresh)."""
        return self.store.refresh()

    def build_index(
        self,
        kind: str = "auto",
        memory: str | int = "4G",
        target_recall: float = 0.95,
        rerank: bool | None = None,
        progress: bool = False,
        engine: str = "local",
        address: str | None = None,
        tune_on: Paths | None = None,
    ) -> dict[str, Any]:
        """Build (or re-build) the FAISS index of `kind` from the stored vectors and tune it
        to `target_recall`; returns the recorded spec with its measured recall and latency.
        `tune_on`: image files or folders of pictures like those the store will be asked
        about, to tune on instead of held-out stored pictures (Store.build_index)."""
        from bioindex import faiss_index

        budget = faiss_index.parse_memory(memory)
        self.store.check_build(kind, budget, target_recall, rerank)  # before the bar is drawn
        probes = self.tuning_pictures(tune_on) if tune_on else None
        # `auto` on a large store first measures the kinds on samples (a minute at 1M),
        # with nothing added yet: the bar says so rather than sit at 0% unexplained.
        measuring = self.store.measures_kinds(kind)
        bar = tqdm(total=self.store.live_count(), unit="vec", disable=not progress,
                   desc="index (measuring kinds on samples first)" if measuring else "index")

        def added(count: int) -> None:
            bar.set_description("index", refresh=False)
            bar.update(count)

        with bar:
            spec = self.store.build_index(kind, budget, target_recall, rerank,
                                          progress=added,
                                          builder=_builder(engine, address),
                                          text_probes=self.text_probes,
                                          tune_on=probes)  # fmt: skip
        return spec.to_json()

    def tuning_pictures(self, paths: Paths) -> np.ndarray:
        """The vectors of the images under `paths` (files or folders); unreadable ones are
        passed over with a warning, none readable is a BioindexError."""
        paths = listed(paths)
        files = [f for path in paths for f in image_files(path)]
        if not files:
            raise BioindexError(f"no images to tune on under {', '.join(map(str, paths))}")
        _, vectors, failed = embed_files(self._embed_pictures, files)
        for bad in failed:
            log.warning("not tuning on %s: %s", bad.file, bad.error)
        return vectors

    def text_probes(self) -> np.ndarray | None:
        """Text vectors like this store's text queries (search.text_probes), or None when
        the model cannot be loaded here (text queries then search as pictures do)."""
        from bioindex.search.text_probes import probe_texts

        try:
            model = self.model
        except BioindexError as exc:
            log.warning("text queries will search with the pictures' setting: %s", exc)
            return None
        return model.encode_texts(probe_texts(self.catalog_taxa()))

    # ---- reading -------------------------------------------------------------------

    def use_model(self, model: Any) -> None:
        """Encode through `model`: an EmbeddingModel of the store's identity, or a stand-in
        with its encode calls (the server's batching one)."""
        self._model = model

    def embed_texts(self, texts: Texts) -> np.ndarray:
        """Unit vectors of texts; ones asked before come from memory or the store's query
        cache, so a repeated query does not load the model."""
        from bioindex.store.query_cache import QueryCache

        texts = listed(texts)
        known, missing, pending = self._recent_texts.claim(texts)
        if missing:
            manifest = self.store.model
            cache = QueryCache(self.store.path, manifest["weights_sha256"], self.store.dim)
            try:
                found = cache.embed(missing, self._encode_texts)
            except BaseException as exc:
                self._recent_texts.settle(missing, error=exc)
                raise
            self._recent_texts.settle(missing, found)
            known.update(zip(missing, found))
        known.update((text, promise.result()) for text, promise in pending.items())
        if not texts:
            return np.zeros((0, self.store.dim), dtype=np.float32)
        return np.stack([known[t] for t in texts])

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts through the model, or through its text tower kept as arrays while the
        model is not loaded (bioindex.towers: a shell's new text query then imports
        neither torch nor open_clip)."""
        if self._model is None:
            tower = self._tower("text")
            vectors = tower.encode(texts) if tower is not None else None
            if vectors is not None:
                return vectors
        vectors = self.model.encode_texts(texts)
        self._keep_towers()
        return vectors

    def _tower(self, kind: str) -> Any:
        """The kept "text" or "image" tower of the store's model (TextTower, ImageTower),
        read once (a text tower's tokenizer tables are 1.5 MB of JSON), or None while
        there is none."""
        if not towers.wanted():
            return None
        if self._towers.get(kind) is None:
            folder = towers.folder_for(default_cache_root(), self.identity, kind)
            kept = TOWERS[kind][1]
            self._towers[kind] = kept.load(folder, self.identity) if folder else None
        return self._towers[kind]

    def _keep_towers(self) -> None:
        """Write the loaded model's towers to the user's cache, once per model. Checked
        once per collection: it follows every encode, and reading a tower back to check it
        costs a JSON record and a score of file maps."""
        model = self._model
        if (self._towers_kept or not isinstance(model, EmbeddingModel)  # a server's stand-in
                or not towers.wanted()):  # fmt: skip
            return
        self._towers_kept = True
        for kind, (export, _) in TOWERS.items():
            folder = towers.folder_for(default_cache_root(), model.identity, kind)
            if folder is None:
                continue
            try:
                export(model, folder)  # nothing to do where it is whole and current
            except OSError as exc:  # a read-only or full cache: queries load the model
                log.info("%s tower not kept in %s: %s", kind, folder, exc)

    @property
    def logit_scale(self) -> float:
        """The model's exp(logit_scale) (zero-shot's softmax, the neighbours' vote): from its
        text tower's record while the model is not loaded, so a shell's classify of a few
        photos needs neither torch nor the model."""
        tower = self._tower("text") if self._model is None else None
        return tower.logit_scale if tower is not None else self.model.logit_scale

    def _embed_pictures(self, images: list[Any]) -> np.ndarray:
        """Unit vectors of PIL images: through the kept image tower while the model is not
        loaded and they are at most MOST_TOWER_PICTURES, else through the model."""
        if self._model is None and len(images) <= MOST_TOWER_PICTURES:
            tower = self._tower("image")
            if tower is not None:
                return np.stack([tower.embed(image) for image in images])
        vectors = self.model.embed_pil(images)
        self._keep_towers()
        return vectors

    def embed_image(self, path: str | os.PathLike[str]) -> np.ndarray:
        file = Path(path)
        if not file.is_file():
            raise not_an_image_file(path)
        try:
            image = open_image(file)
        except Exception as exc:
            raise BioindexError(f"cannot read image {path}: {exc}") from exc
        return self._embed_pictures([image])[0]

    def embed_image_bytes(self, data: bytes, max_pixels: int | None = None) -> np.ndarray:
        """An uploaded picture's vector; anything PIL cannot decode is a BioindexError."""
        return self.embed_pixels(self.image_pixels(data, max_pixels))

    def image_pixels(self, data: bytes, max_pixels: int | None = None) -> Any:
        """Picture bytes decoded and preprocessed for the model, ready for embed_pixels.
        Needs no lock (a server decodes uploads side by side). Decoded to at most
        `max_pixels` (images.bounded_load: ImageTooLarge, judged from the header, when it
        cannot be read at reduced scale), BioindexError when it is not an image."""
        try:
            image = open_image(data, max_pixels=max_pixels)
        except ImageTooLarge:
            raise
        except Exception as exc:
            raise BioindexError(f"not a readable image ({describe_error(exc)})") from exc
        return self.model.transform(image)

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """The unit vector of one image_pixels result."""
        return self.model.encode_images(self.model._torch.stack([pixels]))[0]

    def search_vector(self, vector: np.ndarray, k: int = 10, where: Where = None,
                      text: bool = False) -> list[Hit]:  # fmt: skip
        """Images nearest a vector; `text`: it is a text vector (the index has a setting
        tuned for those: build-index)."""
        return search_vector(self.store, _unit(vector, self.store.dim), k, where=_filter(where),
                             text=text)  # fmt: skip

    def search_text(self, text: str, k: int = 10, where: Where = None) -> list[Hit]:
        check_k(k)
        if not text or not text.strip():
            raise BioindexError("text query is empty")
        return self.search_vector(self.embed_texts([text])[0], k, where, text=True)

    def search_image(self, path: Paths,
                     k: int = 10, where: Where = None) -> list[Hit]:  # fmt: skip
        """Images like the picture at `path`; several paths are views of one specimen,
        searched as one (the mean of their unit vectors)."""
        check_k(k)
        if isinstance(path, (str, os.PathLike)):
            return self.search_vector(self.embed_image(path), k, where)
        if not path:
            raise BioindexError("no image to search with")
        views = np.stack([self.embed_image(p) for p in path])
        return self.search_vector(combine_views(views), k, where)

    def search_id(self, image_id: int, k: int = 10, where: Where = None) -> list[Hit]:
        """Neighbours of an indexed image (the image itself left out)."""
        check_k(k)
        # By the index's own id table (0.25 ms at 1M images) rather than the catalog (3 ms,
        # most of a "more like this" answer); NaN: not live, and the catalog says why.
        vector = self.store.indexed_vectors([int(image_id)])[0]
        if np.isnan(vector).any():
            vector = self.store.vectors([int(image_id)])[0]
        return search_vector(self.store, vector, k, exclude={int(image_id)}, where=_filter(where))

    def query_vector(self, add: Texts = (), subtract: Texts = ()) -> np.ndarray:
        """rclip-style query arithmetic. Each term is TEXT or an image PATH, optionally
        weighted as "W:TERM" (e.g. "2:query.jpg"); `subtract` terms count negatively."""
        total = np.zeros(self.store.dim, dtype=np.float32)
        terms = [(t, 1.0) for t in listed(add)] + [(t, -1.0) for t in listed(subtract)]
        if not terms:
            raise BioindexError("the query has no terms")
        for term, sign in terms:
            weight, value = _weighted(term)
            total += sign * weight * self._term_vector(value)
        return _unit(total, self.store.dim)

    def _term_vector(self, value: str) -> np.ndarray:
        path = Path(value).expanduser()
        if _is_image_term(value):
            return self.embed_image(path)
        if path.suffix.lower() in IMAGE_EXTENSIONS and ("/" in value or os.sep in value):
            raise not_an_image_file(value)
        if not value.strip():
            raise BioindexError("a query term is empty")
        return self.embed_texts([value])[0]

    def search_query(self, add: Texts, subtract: Texts = (), k: int = 10,
                     where: Where = None) -> list[Hit]:  # fmt: skip
        check_k(k)
        add, subtract = listed(add), listed(subtract)
        # Any text term pulls the vector towards the texts' side: search it as text.
        text = not all(_is_image_term(_weighted(t)[1]) for t in [*add, *subtract])
        return self.search_vector(self.query_vector(add, subtract), k, where, text=text)

    # ---- taxa ----------------------------------------------------------------------

    def _taxon_rows(self) -> list[tuple]:
        """The taxa of the live images; where no image names one, those of the occurrence
        records: a collection's species list (a GBIF download, a museum's catalog without
        photos) indexed beside a plain folder of photos is what they are identified against,
        where before classify said the catalog named no taxa."""
        from bioindex.search.labels import taxon_from_row

        rows = self.store.catalog.taxon_rows()
        if any(taxon_from_row(r) is not None for r in rows):
            return rows
        return self.store.catalog.taxon_rows(occurrences=True)

    def catalog_taxa(self) -> list:
        return taxa_from_rows(self._taxon_rows())

    def taxonomy(self) -> Taxonomy:
        """The taxa named in this store's catalog (for name resolution), cached until the
        catalog changes."""
        taxonomy = self._kept("taxonomy", self._read_taxonomy)
        if taxonomy is None:
            raise NoTaxaError(f"the catalog of {self.store.path} names no taxa",
                              remedy=NAME_TAXA)  # fmt: skip
        return taxonomy

    def _kept(self, name: str, derive: Callable[[], Any], key: Any = None) -> Any:
        """`derive()`, kept until the store moves to another generation (or, given `key`,
        until the key changes); derived once when several threads ask at once."""
        key = self.store.generation() if key is None else key
        with self._deriving_lock:
            deriving = self._deriving.setdefault(name, threading.Lock())
        with deriving:  # one derives from another (labels for the temperature): never back
            kept = self._derived.get(name)
            if kept is None or kept[0] != key:
                kept = self._derived[name] = (key, derive())
            return kept[1]

    def catalog_names_taxa(self) -> bool:
        """Whether any live image of the catalog carries a taxon (a plain folder has none)."""
        try:
            self.taxonomy()
        except NoTaxaError:
            return False
        return True

    def _read_taxonomy(self) -> Taxonomy | None:
        """The catalog's taxa; None when it names none (a plain folder, asked on every page
        load)."""
        from bioindex.search.labels import taxon_from_row

        taxa = [t for t in (taxon_from_row(r) for r in self._taxon_rows()) if t is not None]
        return Taxonomy(taxa) if taxa else None

    def search_taxon(self, name: str, k: int = 10, mode: str = "hybrid", where: Where = None,
                     taxonomy: Taxonomy | None = None) -> list[Hit]:  # fmt: skip
        """Images of a taxon: `catalog` (labelled so), `semantic` (looks so to the model),
        or `hybrid` (labelled first, then look-alikes not yet shown).

        A name the catalog (or `taxonomy`) does not know is still searched semantically
        from its BioCLIP caption when it reads as a Latin name, or when the catalog names
        no taxa at all (a plain folder): every hit is then a look-alike."""
        check_k(k)
        if mode not in SEARCH_MODES:
            raise BioindexError(f"unknown mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
        try:
            taxon = self._resolve_taxon(name, mode, taxonomy)
        except BioindexError:
            if taxonomy is not None or not self._is_common_name(name):
                raise
            taxon = None
        if taxon is not None:
            return self._taxon_hits(taxon, k, mode, _filter(where))
        if taxonomy is None and self._is_common_name(name):
            return self._common_name_hits(name, k, mode, _filter(where))
        return self._caption_hits(name, k, _filter(where))

    def common_names(self) -> list[str]:
        """The common names the catalog gives its images (a camera trap's "zebra", a LILA
        dataset's categories), one spelling each (the most used), in name order, kept
        until the catalog changes."""
        def derive() -> list[str]:
            return sorted(spellings(self.store.catalog.common_names()).values(), key=str.lower)

        return self._kept("common names", derive)

    def name_counts(self, rank: str = "species") -> list[dict[str, Any]]:
        """What the catalog names its live images, with how many each, most first: its
        taxa at `rank` (summed up the lineage); the common names of images it names no
        taxon (one spelling each, the most used); its empty frames."""
        from bioindex.search.labels import taxon_from_row

        if rank not in RANKS:
            raise BioindexError(f"unknown rank {rank!r}; choose one of {', '.join(RANKS)}")
        counts: Counter[tuple[str, str]] = Counter()
        spelt = spellings(self.store.catalog.common_names())
        for *row, images in self.store.catalog.taxon_row_counts():
            taxon = taxon_from_row(row)
            if taxon is not None:
                if taxon.name_at(rank).strip():
                    counts[(taxon.name_at(rank), rank)] += int(images)
            elif (row[7] or "").strip():  # vernacular_name
                counts[(spelt[common_name_key(row[7])], "common name")] += int(images)
        if self.empty_frames():
            counts[(BLANK, "empty frames")] = self.empty_frames()
        if not counts:
            higher = " at rank " + rank if self.catalog_names_taxa() else ""
            raise NoTaxaError(f"the catalog of {self.store.path} names no taxa{higher} and no "
                              f"common names", remedy=NAME_IMAGES)  # fmt: skip
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0][0].lower()))
        return [{"name": name, "rank": kind, "images": images}
                for (name, kind), images in ordered]  # fmt: skip

    def _is_common_name(self, name: str) -> bool:
        wanted = common_name_key(name)
        return any(common_name_key(n) == wanted for n in self.common_names())

    def _common_name_hits(self, name: str, k: int, mode: str, user: Filter | None) -> list[Hit]:
        """Images the catalog calls `name` (its common name: camera-trap stores often carry
        no scientific names), then look-alikes of its caption."""
        query = self.embed_texts([f"a photo of {' '.join(name.split())}."])[0]
        return self._labelled_hits(query, common_name_filter(name), "catalog common name", k,
                                   mode, user)  # fmt: skip

    def has_empty_frames(self) -> bool:
        """Whether the catalog's records call some frames empty (a camera trap's blanks:
        the few-shot heads and the vote then learn them as BLANK)."""
        return self.empty_frames() > 0

    def empty_frames(self) -> int:
        """How many live frames the catalog's records call empty (filters.blank_filter)."""
        empty = blank_filter()
        return len(self.store.ids_where(empty.sql, empty.params))

    def _empty_frame_hits(self, k: int, user: Filter | None) -> list[Hit]:
        """The frames the catalog's records call empty (a camera trap's "blank")."""
        query = self.embed_texts(["a photo of an empty scene with no animal."])[0]
        return self._labelled_hits(query, blank_filter(), "catalog empty frame", k, "catalog",
                                   user)  # fmt: skip

    def _caption_hits(self, name: str, k: int, user: Filter | None) -> list[Hit]:
        """Look-alikes of a name no catalog row carries, from its BioCLIP caption."""
        query = self.embed_texts([f"a photo of {' '.join(name.split())}."])[0]
        return to_hits(self.store, nearest(self.store, query, k, where=user, text=True),
                       why=LOOK_ALIKE)  # fmt: skip

    def _taxon_hits(self, taxon: Taxon, k: int, mode: str, user: Filter | None) -> list[Hit]:
        query = self.embed_texts([taxon.caption("taxonomic")])[0]
        return self._labelled_hits(query, taxon_filter(taxon), f"catalog {taxon.rank}", k, mode,
                                   user)  # fmt: skip

    def _labelled_hits(self, query: np.ndarray, label: Filter, why: str, k: int, mode: str,
                       user: Filter | None) -> list[Hit]:  # fmt: skip
        """The images `label` chooses (`catalog`), the query's look-alikes (`semantic`), or
        the first then the second (`hybrid`)."""
        hits: list[Hit] = []
        if mode in ("catalog", "hybrid"):
            pairs = nearest(self.store, query, k, where=and_filters(label, user), text=True)
            hits = to_hits(self.store, pairs, why=why)
        if mode in ("semantic", "hybrid") and len(hits) < k:
            shown = {h.image_id for h in hits}
            pairs = nearest(self.store, query, k - len(hits), exclude=shown, where=user,
                            text=True)  # fmt: skip
            hits += to_hits(self.store, pairs, why=LOOK_ALIKE, start=len(hits) + 1)
        return hits

    def _resolve_taxon(self, name: str, mode: str, taxonomy: Taxonomy | None) -> Taxon | None:
        """The taxon `name` means, or None when only its caption can be searched."""
        if not name or not name.strip():
            raise BioindexError("taxon name is empty")
        try:
            return (taxonomy or self.taxonomy()).resolve(name)
        except NoTaxaError:
            if mode == "catalog":
                raise NoTaxaError(f"the catalog of {self.store.path} names no taxa, so no "
                                  f"image is labelled {name!r}", remedy=LOOK_INSTEAD) from None
            return None  # a plain folder: the model alone can still look for the name
        except UnknownTaxonError as exc:
            if mode == "catalog" or exc.close or not looks_scientific(name):
                raise BioindexError(exc.message, remedy=AS_TEXT) from None
            return None

    def search(self, query: str, k: int = 10, where: Where = None) -> Answer:
        """What a search box does with `query`: a taxon the catalog names gives its images
        and then look-alikes; a Latin name it does not know, or any name on a store without
        labels, gives look-alikes of the name's caption; anything else is a text search.
        A path in `query` is text, never read (a server passes its users' words here):
        search_image takes pictures."""
        check_k(k)
        if not query or not query.strip():
            raise BioindexError("the query is empty")
        user = _filter(where)
        taxon = None
        if self.catalog_names_taxa():
            try:
                taxon = self.taxonomy().resolve(query)
            except BioindexError:  # unknown or ambiguous: not one taxon of the catalog
                pass
        if taxon is not None:
            return Answer("taxon", self._taxon_hits(taxon, k, "hybrid", user), taxon.to_row(),
                          taxon.rank)  # fmt: skip
        if self._is_common_name(query):
            return Answer("common name", self._common_name_hits(query, k, "hybrid", user))
        if common_name_key(query) in EMPTY_WORDS and self.has_empty_frames():
            return Answer("common name", self._empty_frame_hits(k, user))
        if looks_scientific(query):
            return Answer("name", self._caption_hits(query, k, user))
        return Answer("text", self.search_text(query, k, user))

    def catalog_labels(self) -> LabelSet:
        """The catalog's species; where it names none but calls its records by common names
        (a camera trap's "zebra", a LILA dataset's categories), those names."""
        if not self.catalog_names_taxa() and len(self.common_names()) >= 2:
            return labels_from_strings(self.common_names(),
                                       f"the common names in the catalog of {self.store.path}")
        return labels_from_taxa(self.catalog_taxa(), f"catalog of {self.store.path}")

    def _voted_labels(self) -> LabelSet:
        """What the neighbours vote for in a store of common names: those names, and BLANK
        where its records call frames empty (a camera trap's empty frame is most like
        other empty frames)."""
        labels = self.catalog_labels()
        if (self.has_empty_frames()
                and common_name_key(BLANK) not in map(common_name_key, labels.names)):
            return labels_from_strings([*labels.names, BLANK], labels.source)
        return labels

    def classify(
        self,
        images: Paths,
        *,
        rank: str = "species",
        k: int = 5,
        method: str = "zero-shot",
        labels: LabelSet | Sequence[str] | None = None,
        neighbours: int = 20,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        place: PlacePrior | None = None,
        specimen: bool = False,
        calibrate: bool = True,
        train: str | os.PathLike[str] | None = None,
        by_event: bool = False,
        templates: str = "openai",
    ) -> list[Prediction]:
        """Predict taxa for image files (a folder: the images under it); labels default to
        the catalog's species.

        Each file's rows carry its decision (search.classify.decide): the deepest rank
        reaching `min_confidence`, and a band. `place` (place_near, place_where or
        search.place.species_list_prior) re-weights taxa by where they are recorded.
        `specimen`: the images are views of one specimen, answered once (the mean of their
        unit vectors; benchmarks/identify.py compares it with summing log-probabilities).
        `calibrate`: zero-shot over the catalog's taxa uses a temperature fitted on the
        store's labelled images (zero_shot_temperature); False gives the model's own
        scores, as pybioclip does. `train`: few-shot heads learn from this folder or table
        of labelled images instead of the store's (search.training). `by_event`: a camera
        trap's frames of one folder taken within a minute of each other (their EXIF time:
        search.bursts) that show something are answered together (answered_by_burst).
        `templates`: "one" puts each custom label into one prompt, not 80
        (search.labels.templated)."""
        check_k(k)
        labels = templated(self._label_set(labels), templates)
        labels, place = self._listed_labels(labels, method, place)
        if method in FEW_SHOT_METHODS:
            self.head(method, train)  # before any file is embedded: no names says so first
        elif train is not None:
            raise BioindexError(f"a training set is for the few-shot methods "
                                f"({', '.join(FEW_SHOT_METHODS)}), not {method}")  # fmt: skip
        else:
            self._require_names(labels)
        if specimen and by_event:
            raise BioindexError(SPECIMEN_OR_BURSTS)
        names, vectors, failed = embed_files(self._embed_pictures, images)
        if specimen:
            names, vectors = [" + ".join(names)], combine_views(vectors)[None]

        def answer(files: Sequence[str], of: np.ndarray) -> list[Prediction]:
            return self.classify_vectors(files, of, rank=rank, k=k, method=method,
                                         labels=labels, neighbours=neighbours,
                                         min_confidence=min_confidence, place=place,
                                         calibrate=calibrate, train=train)  # fmt: skip

        answered = answer(names, vectors)
        if by_event:
            answered = answered_by_burst(names, vectors, answered, answer)
        return answered + failed

    @staticmethod
    def _label_set(labels: LabelSet | Sequence[str] | None) -> LabelSet | None:
        """Plain strings as a label set (pybioclip's custom labels)."""
        if isinstance(labels, str) and "," in labels:  # one string is one label
            raise BioindexError(f"labels= takes a list of names, such as "
                                f"{[n.strip() for n in labels.split(',')]!r}; got one string, "
                                f"{labels!r}")  # fmt: skip
        if labels is None or isinstance(labels, LabelSet):
            return labels
        return labels_from_strings([labels] if isinstance(labels, str) else list(labels),
                                   "labels=")  # fmt: skip

    def with_label_vectors(self, labels: LabelSet, *, max_new_texts: int | None = None,
                           recent: RecentLabels | None = None) -> LabelSet:  # fmt: skip
        """`labels` with their vectors (a server's custom labels: at most `max_new_texts`
        texts encoded, new ones kept in `recent`; see label_vectors)."""
        return replace(labels, vectors=self._labels_matrix(labels, max_new_texts=max_new_texts,
                                                           recent=recent))  # fmt: skip

    def _labels_matrix(self, labels: LabelSet, **options: Any) -> np.ndarray:
        """`labels`' vectors, new texts encoded as embed_texts encodes them (through the
        text tower while the model is not loaded and they are few)."""
        return _label_matrix(self.identity, self._encode_texts, labels, **options)

    def classify_vectors(self, names: Sequence[str], vectors: np.ndarray, *,
                         rank: str = "species", k: int = 5, method: str = "zero-shot",
                         labels: LabelSet | Sequence[str] | None = None,
                         neighbours: int = 20,
                         min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                         place: PlacePrior | None = None, calibrate: bool = True,
                         train: str | os.PathLike[str] | None = None,
                         templates: str = "openai") -> list[Prediction]:  # fmt: skip
        """Classify already embedded images (e.g. uploads), named `names` in the output.
        `labels` may be plain strings, as pybioclip's custom labels are; `templates` as
        for classify."""
        check_k(k)
        labels = templated(self._label_set(labels), templates)
        labels, place = self._listed_labels(labels, method, place)
        if method not in FEW_SHOT_METHODS:
            self._require_names(labels)
        label_matrix, head, temperature, pool, novelty = None, None, None, None, None
        if method in ("zero-shot", "knn", "combined") and labels is None:  # the store's names
            novelty = self.novelty_head()
        if method in FEW_SHOT_METHODS:
            head = self.head(method, train)
        elif method != "knn" and labels is None:
            labels, label_matrix = self._catalog_label_vectors()
            if calibrate and method == "combined":
                pool = self.combined_pool(neighbours)
            if calibrate and pool is None:
                temperature = self.zero_shot_temperature()
        elif labels is None and not self.catalog_names_taxa():
            labels = self._voted_labels()  # the neighbours vote for their common names
        elif labels is not None and method != "knn":
            label_matrix = self._labels_matrix(labels)
        vote_scale = self.knn_scale(neighbours) if calibrate and method == "knn" else None
        return classify_vectors(
            list(names), np.asarray(vectors, dtype=np.float32), rank=rank, k=k, method=method,
            labels=labels, label_vectors=label_matrix, logit_scale=self.logit_scale,
            store=self.store, neighbours=neighbours, head=head, place=place,
            min_confidence=min_confidence, temperature=temperature, pool=pool,
            novelty=novelty, vote_scale=vote_scale,
        )  # fmt: skip

    def zero_shot_temperature(self) -> float | None:
        """The temperature that calibrates zero-shot over the catalog's species, fitted on
        up to CALIBRATION_IMAGES of the store's images named to species (their zero-shot
        logits against their own names, by the top-label log loss: see search.calibration;
        the NLL's T left zero-shot's wrong top answers sure under a collection's own look);
        None (the model's own logit scale) with fewer than MIN_HELD_OUT. Kept until the
        store changes."""
        return self._kept("zero_shot_temperature", self._fit_zero_shot)

    def _fit_zero_shot(self) -> float | None:
        held_out = self._calibration_rows(CALIBRATION_IMAGES)
        if held_out is None:
            return None
        ids, truth, matrix = held_out
        vectors = self.store.vectors([int(i) for i in ids])
        return fit_temperature(vectors @ matrix.T, truth, loss=top_label_log_loss)

    def combined_pool(self, neighbours: int = DEFAULT_NEIGHBOURS) -> Pool | None:
        """combined's weights for zero-shot's cosines and the neighbours' vote over the
        catalog's names (search.calibration.Pool), fitted by the NLL on up to POOL_IMAGES
        of the store's named images, each voted on by its neighbours but itself and the
        other photos of its group (Catalog.photo_groups: a burst, a specimen); None (the
        plain average) with fewer than MIN_HELD_OUT. Kept until the store changes."""
        return self._kept(f"combined pool {neighbours}", lambda: self._fit_pool(neighbours))

    def _fit_pool(self, neighbours: int) -> Pool | None:
        held_out = self._calibration_rows(POOL_IMAGES)
        if held_out is None:
            return None
        ids, truth, matrix = held_out
        labels, _ = self._catalog_label_vectors()
        log.info("fitting combined's weights on %d named images", len(ids))
        vectors = self.store.vectors([int(i) for i in ids])
        # Not itself, nor its group's other photos (near-copies: a burst's frames).
        mates = group_mates(self.store, [int(i) for i in ids])
        excludes = [{int(i), *mates.get(int(i), ())} for i in ids]
        vote = knn_votes if labels.has_lineage else knn_label_votes
        votes = vote(self.store, vectors, labels.taxa if labels.has_lineage else labels.names,
                     neighbours, self.logit_scale, excludes=excludes)  # fmt: skip
        pool = fit_pool(vectors @ matrix.T, votes, truth)
        log.info("combined's weights: %.2f per unit of cosine, %.2f per unit of vote share",
                 pool.text, pool.votes)  # fmt: skip
        return pool

    def _calibration_rows(self, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(image ids, the index of each one's name among the catalog's labels, the labels'
        vectors) for up to `limit` of the store's images named by a label, spread evenly
        over them; None with fewer than MIN_HELD_OUT."""
        labels, matrix = self._catalog_label_vectors()
        named = self._named_rows(labels, limit)
        return None if named is None else (*named, matrix)

    def _named_rows(self, labels: LabelSet, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(image ids, the index of each one's name among `labels`: the catalog's taxa, or
        its common names) for up to `limit` of the store's images named by one, spread
        evenly over them; None with fewer than MIN_HELD_OUT."""
        if labels.has_lineage:
            ids, taxa = labelled_species(self.store)
            index = {t.lineage: i for i, t in enumerate(labels.taxa)}
            keys = [t.lineage for t in taxa]
        else:  # the catalog's common names are the labels: its photos called so
            ids, taxa = labelled_common_names(self.store)
            index = {common_name_key(name): i for i, name in enumerate(labels.names)}
            keys = [common_name_key(t.common_name) for t in taxa]
        if len(ids) < MIN_HELD_OUT:
            return None
        chosen = np.linspace(0, len(ids) - 1, min(len(ids), limit)).astype(int)
        truth = np.array([index.get(keys[i], -1) for i in chosen])
        known = truth >= 0
        if known.sum() < MIN_HELD_OUT:
            return None
        return ids[chosen[known]], truth[known]

    def knn_scale(self, neighbours: int = DEFAULT_NEIGHBOURS) -> float | None:
        """The scale that calibrates the neighbour vote (each neighbour weighted by
        exp(scale · cosine); the model's own logit scale does not: on the demo world's
        5-shot stores its answers were under-confident, ECE 0.14-0.16), fitted by the
        Brier score (calibration.brier_score) on up to POOL_IMAGES of the store's named
        images, each voted on by its neighbours but itself and its group's other photos;
        None (the model's logit scale) with fewer than MIN_HELD_OUT. Kept until the store
        changes."""
        return self._kept(f"knn scale {neighbours}", lambda: self._fit_knn_scale(neighbours))

    def _fit_knn_scale(self, neighbours: int) -> float | None:
        labels = self.catalog_labels() if self.catalog_names_taxa() else self._voted_labels()
        named = self._named_rows(labels, POOL_IMAGES)
        if named is None:
            return None
        ids, truth = named
        mates = group_mates(self.store, [int(i) for i in ids])
        excludes = [{int(i), *mates.get(int(i), ())} for i in ids]
        vectors = self.store.vectors([int(i) for i in ids])
        cosines, classes = (species_voters(self.store, vectors, labels.taxa, neighbours, excludes)
                            if labels.has_lineage else
                            label_voters(self.store, vectors, labels.names, neighbours,
                                         excludes))  # fmt: skip
        count = len(labels.taxa) if labels.has_lineage else len(labels.names)
        scale = fit_scale(lambda s: brier_score(vote_shares(cosines, classes, count, s), truth),
                          1.0, 1000.0)  # fmt: skip
        log.info("the neighbour vote's scale: %.1f (the model's %.1f)", scale, self.logit_scale)
        return scale

    def head(self, method: str = "few-shot",
             train: str | os.PathLike[str] | None = None) -> Head:  # fmt: skip
        """The few-shot head (`few-shot` or `linear-probe`) trained on this store's labelled
        images, kept until the store changes (see search.fewshot); or, given `train`, on
        that folder or table of labelled images (search.training), kept until one of them,
        their labels or the model changes."""
        if train is not None:
            return self._training_head(method, train)
        return self._kept(f"head {method}", lambda: store_head(self.store, method))

    def novelty_head(self) -> Head | None:
        """The store's few-shot head, whose novelty test zero-shot, knn and combined answers
        over the store's own names share (search.classify.classify_vectors); None where the
        store's names cannot train one (fewer than two species or common names)."""
        try:
            return self.head("few-shot")
        except BioindexError as exc:
            log.debug("no novelty test for knn or combined: %s", exc)
            return None

    def use_head(self, method: str, head: Head, generation: int) -> None:
        """Keep `head`, trained elsewhere on this store as of `generation`, as this store's
        `method` head while the store stays at that generation."""
        with self._deriving_lock:
            self._derived[f"head {method}"] = (generation, head)

    def _training_head(self, method: str, train: str | os.PathLike[str]) -> Head:
        if method not in FEW_SHOT_METHODS:
            raise BioindexError(f"unknown few-shot method {method!r}")
        examples = read_training_set(train)
        identity = self.identity
        key = training_key(examples, [HEAD_VERSION, method, identity.weights_sha256,
                                      identity.preprocess])  # fmt: skip
        places = training_head_places(self.store, method, key)
        return self._kept(f"training head {key}", lambda: cached_head(
            places, lambda: self._fit_training(method, train, examples)), key=key)

    def _fit_training(self, method: str, train: str | os.PathLike[str],
                      examples: list[Example]) -> Head:  # fmt: skip
        log.info("embedding %d training images from %s", len(examples), train)
        names, vectors, failed = embed_files(self._embed_pictures, [e.path for e in examples])
        for bad in failed:
            log.warning("training image %s skipped: %s", bad.file, bad.error)
        taxon_of = {str(e.path): e.taxon for e in examples}
        taxa = [taxon_of[name] for name in names]
        # Centred by the training images' own mean (SimpleShot's base-set mean): the head
        # then does not depend on what the store holds.
        return fit_head(method, vectors, taxa, vectors.mean(axis=0))

    def place_near(self, lat: float, lon: float, radius_km: float = DEFAULT_RADIUS_KM,
                   outside: float = DEFAULT_OUTSIDE_WEIGHT) -> PlacePrior:  # fmt: skip
        """A place prior from the taxa this catalog records within `radius_km` of a point."""
        return catalog_prior(self.store, within_radius(lat, lon, radius_km), outside,
                             "widen the radius")  # fmt: skip

    def place_where(self, where: Where, outside: float = DEFAULT_OUTSIDE_WEIGHT) -> PlacePrior:
        """A place prior from the taxa this catalog records where `where` holds
        (country_code=KE, bbox=W,S,E,N, …)."""
        chosen = _filter(where)
        if not chosen:
            raise BioindexError("a place needs at least one condition, e.g. country_code=KE")
        return catalog_prior(self.store, chosen, outside)

    def _listed_labels(self, labels: LabelSet | None, method: str, place: PlacePrior | None,
                       ) -> tuple[LabelSet | None, PlacePrior | None]:  # fmt: skip
        """Zero-shot on a store whose catalog names no taxa (a plain folder), given a species
        list: its species are the labels (before: "names no taxa", with the candidates in
        hand). Where the catalog names taxa, the list re-weights them as a place does."""
        if (labels is None and method == "zero-shot" and place is not None and place.taxa
                and not self.catalog_names_taxa()):  # fmt: skip
            return labels_from_taxa(place.taxa, place.source), None
        return labels, place

    def _require_names(self, labels: LabelSet | None) -> None:
        if labels is not None or self.catalog_names_taxa():
            return
        if len(self.common_names()) >= 2:
            return  # the catalog's common names are the labels (catalog_labels)
        raise NoTaxaError(f"the catalog of {self.store.path} names no taxa to classify "
                          f"against", remedy=NAME_TAXA)  # fmt: skip

    def _catalog_label_vectors(self) -> tuple[LabelSet, np.ndarray]:
        """The catalog's label set and its vectors, kept until the catalog changes (a server
        classifies many uploads against the same labels)."""
        def derive() -> tuple[LabelSet, np.ndarray]:
            labels = self.catalog_labels()
            return labels, self._labels_matrix(labels)

        return self._kept("catalog labels", derive)

    def chosen_ids(self, where: Where = None,
                   image_ids: Sequence[int] | None = None) -> np.ndarray | None:  # fmt: skip
        """The live images a filter and/or an id list name (None: all of them)."""
        user = _filter(where)
        if not user and image_ids is None:
            return None
        chosen = (self.store.ids_where(user.sql, user.params) if user
                  else self.store.catalog.live_ids())  # fmt: skip
        if image_ids is not None:
            chosen = np.intersect1d(chosen, np.asarray(list(image_ids), dtype=np.int64))
        return np.sort(chosen)

    def identify(self, image_ids: np.ndarray | None = None, *, rank: str = "species",
                 method: str = "zero-shot", labels: LabelSet | None = None,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE, by_event: bool = False,
                 batch: int = 2048) -> Iterator[Identification]:  # fmt: skip
        """What classify vouches for about stored images (all live ones by default), from
        their stored vectors (nothing is embedded again): the name at the deepest rank from
        `rank` up whose probability reaches `min_confidence`, with its band. An image
        "unknown" at every rank gets no identification: an archive must not assert what
        the classifier would not. `by_event`: the frames of one camera-trap burst (one
        eventID) that show an animal are answered together, as several photos of one
        specimen are (the mean of their vectors); its empty frames stay empty."""
        self._require_names(labels)
        ids = self.store.catalog.live_ids() if image_ids is None else image_ids
        model = self.store.model.get("name") or self.store.model.get("source")
        for chunk in _whole_events(ids, self.events_of(ids) if by_event else {}, batch):
            vectors = self.store.vectors([i for i, _ in chunk])
            tops = self.classify_vectors([str(i) for i, _ in chunk], vectors, rank=rank, k=1,
                                         method=method, labels=labels,
                                         min_confidence=min_confidence)  # fmt: skip
            answers = [p.decision for p in tops]
            basis = [""] * len(chunk)
            if by_event:
                self._answer_events(chunk, vectors, tops, answers, basis, rank=rank,
                                    method=method, labels=labels,
                                    min_confidence=min_confidence)  # fmt: skip
            for (image_id, _), answer, said in zip(chunk, answers, basis):
                if (answer is None or answer.band == UNKNOWN or not answer.name.strip()
                        or _empty_frame(answer.name, answer.rank)):  # fmt: skip
                    continue
                yield Identification(image_id, answer.name, answer.rank, answer.score, method,
                                     str(model), band=answer.band, basis=said)  # fmt: skip

    def events_of(self, image_ids: Sequence[int] | np.ndarray) -> dict[int, str]:
        """image_id → its camera-trap burst, for the asked images that share one: their
        eventID, else the frames of a folder taken close together by the clock
        (search.bursts: an SD card's frames carry no eventID, only their EXIF time)."""
        events = self.store.catalog.events_of(image_ids)
        events.update(time_bursts(self.store.catalog.timed_rows(image_ids)))
        return events

    def _answer_events(self, chunk: list[tuple[int, str]], vectors: np.ndarray,
                       tops: list[Prediction], answers: list, basis: list[str],
                       **options: Any) -> None:  # fmt: skip
        """Each event's frames whose likeliest label is not an empty frame (`tops`: each
        frame's top prediction; sure of it or not), answered again as one: their mean
        vector's decision replaces each one's (`answers`, `basis` changed in place)."""
        frames: dict[str, list[int]] = {}
        for position, ((_, event), top) in enumerate(zip(chunk, tops)):
            if event and not _empty_frame(top.label or "", ""):  # a taxon is never BLANK
                frames.setdefault(event, []).append(position)
        events = [(event, at) for event, at in frames.items() if len(at) > 1]
        if not events:
            return
        together = np.stack([combine_views(vectors[at]) for _, at in events])
        decided = [p.decision for p in self.classify_vectors(
            [event for event, _ in events], together, k=1, **options)]  # fmt: skip
        for (event, at), answer in zip(events, decided):
            for position in at:
                answers[position] = answer
                basis[position] = f"with the {len(at)} frames of event {event}"

    def from_results(self, rows: Sequence[dict[str, Any]]
                     ) -> tuple[list[int], list[Identification] | None]:  # fmt: skip
        """The images a saved search result names (image_id), or a saved classify result
        names (file: an indexed image's path), and for a classify result its top
        prediction per image as identifications."""
        ids = [int(r["image_id"]) for r in rows if r.get("image_id") not in (None, "")]
        files = {}
        for row in rows:
            if row.get("image_id") in (None, "") and row.get("file") and not row.get("error"):
                files.setdefault(str(row["file"]), row)  # rows come best first per file
        if not files:
            return ids, None
        uris = {f: str(Path(f).expanduser().resolve()) for f in files}
        known = self.store.catalog.live_ids_by_uri(list(uris.values()))
        model = str(self.store.model.get("name") or self.store.model.get("source"))
        found = []
        for file, row in files.items():
            image_id = known.get(uris[file])
            if image_id is None:
                continue
            answer = _saved_answer(row)
            if answer is not None:
                found.append(Identification(image_id, *answer[:3], "classify (saved result)",
                                            model, band=answer[3]))  # fmt: skip
            ids.append(image_id)
        if not ids:
            raise BioindexError("none of the result's files is an indexed image of this store")
        return ids, found

    def export(self, path: str | os.PathLike[str], fmt: str = "dwca", *, where: Where = None,
               image_ids: Sequence[int] | None = None, identify: bool = False,
               method: str = "zero-shot", rank: str = "species", labels: LabelSet | None = None,
               with_media: bool = False, identifications: Sequence[Identification] | None = None,
               min_confidence: float = DEFAULT_MIN_CONFIDENCE,
               by_event: bool = False) -> dict[str, Any]:  # fmt: skip
        """Write the store (or the images `where`/`image_ids` choose) as a Darwin Core
        Archive (`dwca`, with bioindex's identifications when `identify`; `by_event`: see
        identify) or its embeddings
        as `parquet` or `npy`. `identifications` (e.g. from_results of a saved classify
        result) go into the archive as they are. Returns what was written."""
        if fmt not in EXPORT_FORMATS:
            raise BioindexError(f"unknown export format {fmt!r}; use "
                                f"{', '.join(EXPORT_FORMATS)}")  # fmt: skip
        if identify and fmt != "dwca":
            raise BioindexError("identifications go into a Darwin Core Archive (format dwca)")
        if by_event and not identify:
            raise BioindexError("by_event says how images are identified: give identify=True")
        chosen = self.chosen_ids(where, image_ids)
        if chosen is not None and not len(chosen):
            raise BioindexError("no live image matches the filters or the result given; "
                                "nothing written")
        target = Path(path)
        if not target.parent.is_dir():
            raise BioindexError(f"folder {target.parent} does not exist")
        if target.is_dir():  # checked before any work: else a traceback once it is all done
            raise BioindexError(f"{path} is a folder; name the file to write")
        if fmt == "parquet":
            return {"path": str(target), "rows": write_parquet(self.store, target, chosen)}
        if fmt == "npy":
            rows = write_npy(self.store, target, chosen)
            return {"path": str(target), "rows": rows, "table": str(target.with_suffix(".csv"))}
        found = (self.identify(chosen, rank=rank, method=method, labels=labels,
                               min_confidence=min_confidence, by_event=by_event) if identify
                 else identifications or ())  # fmt: skip
        if identifications and identify:
            raise BioindexError("identify the images, or hand in identifications from a classify "
                                "result: not both")
        provenance = {"filters": " AND ".join(_filter(where).conditions) if _filter(where) else "",
                      "identification": (f"{method} at rank {rank} (or the deepest rank above it "
                                         f"reaching {min_confidence:g})"
                                         + (", a burst's frames together" if by_event else "")
                                         ) if identify else ""}  # fmt: skip
        written = write_archive(self.store, target, image_ids=chosen, identifications=found,
                                with_media=with_media,
                                provenance={k: v for k, v in provenance.items() if v}).to_dict()
        if identify or identifications is not None:  # said, not left for the reader to notice
            written["unidentified"] = written["images"] - written["identifications"]
        if by_event:  # frames with neither an eventID nor a time: by event changes nothing
            ids = self.store.catalog.live_ids() if chosen is None else chosen
            written["images_in_events"] = len(self.events_of(ids))
        return written

    def taxon_names(self) -> list[tuple[str, str]]:
        """(name, rank) for every rank name, binomial and common name in the catalog (a
        common name with no taxon too: a camera trap's "zebra")."""
        names: dict[tuple[str, str], None] = {}
        for name in self.common_names():
            names[(name, "common name")] = None
        species = self.taxonomy().species if self.catalog_names_taxa() else []
        for taxon in species:
            for rank in ("kingdom", "phylum", "class", "order", "family", "genus", "species"):
                name = taxon.name_at(rank)
                if name.strip():
                    names[(name, rank)] = None
            if taxon.common_name:
                names[(taxon.common_name, "common name")] = None
        return sorted(names)

    def duplicates(self, threshold: float = 0.95) -> list[DuplicateMember]:
        return find_duplicates(self.store, threshold)

    def info(self) -> dict[str, Any]:
        return self.store.info()

    def failures(self) -> list[dict[str, Any]]:
        return self.store.failures()


def _empty_frame(name: str, rank: str) -> bool:
    """Whether an answer says the photo is a camera trap's empty frame (BLANK, learnt from
    the frames its records call empty): no identification of anything."""
    return not rank and common_name_key(name) == BLANK


def _saved_answer(row: Mapping[str, Any]) -> tuple[str, str, float, str] | None:
    """(name, rank, score, band) a saved classify row vouches for: its answer (backed off
    to the rank it reached), None for "unknown"; a row saved before answers were written
    gives its deepest named rank."""
    if "answer" in row:
        name, band = str(row.get("answer") or "").strip(), str(row.get("band") or "")
        if not name or band == UNKNOWN:
            return None
        rank = str(row.get("answer_rank") or "")
        if _empty_frame(name, rank):
            return None
        return name, rank, float(row.get("answer_score") or 0), band
    rank = next((r for r in reversed(RANKS) if str(row.get(r) or "").strip()), "")
    name = str(row.get(rank) or row.get("label") or "").strip()
    return (name, rank, float(row.get("score") or 0), "") if name else None


def classify_images(
    model: EmbeddingModel,
    images: Paths,
    *,
    rank: str = "species",
    k: int = 5,
    method: str = "zero-shot",
    labels: LabelSet | None = None,
    store: Store | None = None,
    neighbours: int = 20,
    cache_root: str | os.PathLike[str] | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    place: PlacePrior | None = None,
    specimen: bool = False,
    by_event: bool = False,
) -> list[Prediction]:
    """Classify image files with a loaded model (a store is needed for knn/combined);
    unreadable files come last, as predictions with an `error`. `specimen`, `by_event`:
    as Collection.classify's."""
    if specimen and by_event:
        raise BioindexError(SPECIMEN_OR_BURSTS)
    names, vectors, failed = embed_files(model.embed_pil, images)
    if specimen:
        names, vectors = [" + ".join(names)], combine_views(vectors)[None]
    label_matrix = None
    if labels is not None and method != "knn":
        label_matrix = _label_matrix(model.identity, model.encode_texts, labels, cache_root)

    def answer(files: Sequence[str], of: np.ndarray) -> list[Prediction]:
        return classify_vectors(
            list(files), of, rank=rank, k=k, method=method,
            labels=labels, label_vectors=label_matrix, logit_scale=model.logit_scale,
            store=store, neighbours=neighbours, min_confidence=min_confidence, place=place,
        )  # fmt: skip

    answered = answer(names, vectors)
    if by_event:
        answered = answered_by_burst(names, vectors, answered, answer)
    return answered + failed


SPECIMEN_OR_BURSTS = ("the images are views of one specimen (specimen) or a camera's bursts "
                      "(by event), not both")


def answered_by_burst(names: Sequence[str], vectors: np.ndarray,
                      answered: list[Prediction],
                      answer: Callable[[Sequence[str], np.ndarray], list[Prediction]],
                      ) -> list[Prediction]:  # fmt: skip
    """`answered` (each file's predictions, best first), the frames of each burst by the
    clock (search.bursts, from the files' EXIF times) whose likeliest label is not an empty
    frame answered again as one: `answer` of their mean vector, under each frame's name."""
    taken = [(i, name, _taken_at(name)) for i, name in enumerate(names)]
    bursts = time_bursts([row for row in taken if row[2]])
    if not bursts:
        return answered
    by_file: dict[str, list[Prediction]] = {}
    for prediction in answered:
        by_file.setdefault(prediction.file, []).append(prediction)
    frames: dict[str, list[int]] = {}
    for i, burst in bursts.items():
        top = by_file[names[i]][0]
        if not _empty_frame(top.label or "", ""):  # a taxon is never BLANK
            frames.setdefault(burst, []).append(i)
    events = [(burst, at) for burst, at in frames.items() if len(at) > 1]
    if not events:
        return answered
    together = answer([burst for burst, _ in events],
                      np.stack([combine_views(vectors[at]) for _, at in events]))  # fmt: skip
    for burst, at in events:
        found = [p for p in together if p.file == burst]
        basis = f"with the {len(at)} frames of burst {burst}"
        for i in at:
            by_file[names[i]] = [
                replace(p, file=names[i], decision=replace(p.decision, basis=basis)
                        if p.decision is not None else None) for p in found]  # fmt: skip
    return [p for name in names for p in by_file[name]]


def _taken_at(name: str) -> str:
    """When a local photo file was taken, by its EXIF ("" when it does not say)."""
    from PIL import Image

    from bioindex.images import photo_facts

    try:
        with Image.open(name) as image:  # the header only: not decoded again
            return str(photo_facts(image).get("eventDate") or "")
    except Exception:  # a shard's member, or a file gone since it was read
        return ""


def _whole_events(ids: Sequence[int], events: dict[int, str],
                  batch: int) -> Iterator[list[tuple[int, str]]]:  # fmt: skip
    """(image_id, eventID or "") in chunks of about `batch`, an event's frames never split
    between two (they are answered together)."""
    order = sorted(range(len(ids)), key=lambda i: (events.get(int(ids[i]), ""), i)
                   ) if events else range(len(ids))  # fmt: skip
    chunk: list[tuple[int, str]] = []
    for i in order:
        image_id = int(ids[i])
        event = events.get(image_id, "")
        if len(chunk) >= batch and (not event or event != chunk[-1][1]):
            yield chunk
            chunk = []
        chunk.append((image_id, event))
    if chunk:
        yield chunk


def combine_views(vectors: np.ndarray) -> np.ndarray:
    """One unit vector for several views of one specimen: the mean of their unit vectors."""
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def embed_files(embed: Callable[[list[Any]], np.ndarray], images: Paths,
                ) -> tuple[list[str], np.ndarray, list[Prediction]]:  # fmt: skip
    """(readable files, their unit vectors by `embed` of PIL images, a failed Prediction for
    each file that is missing or does not decode); a folder stands for the images under it,
    a webdataset .tar shard for its images (named shard.tar#key). Like `index`, one bad file
    does not stop the batch; none readable is a BioindexError."""
    given = listed(images)
    images = [image for path in expand_folders(given) for image in _shard_or_file(path)]
    if not images:
        raise BioindexError(f"no images to classify under {', '.join(map(str, given))}"
                            if given else "no images to classify")  # fmt: skip
    names: list[str] = []
    vectors: list[np.ndarray] = []
    failed: list[Prediction] = []
    # A folder can hold thousands: a bar on a terminal, and model calls of a batch each.
    with tqdm(total=len(images), unit="img", desc="classify", disable=None,
              leave=False) as bar:  # fmt: skip
        for start in range(0, len(images), CLASSIFY_BATCH):
            opened = []
            for path in images[start : start + CLASSIFY_BATCH]:
                name = path.uri if isinstance(path, Item) else str(path)
                try:
                    if isinstance(path, Item):
                        opened.append((name, open_image(path.read_bytes())))
                        continue
                    if not Path(path).is_file():
                        raise FileNotFoundError("no such file")
                    opened.append((name, open_image(Path(path))))
                except Exception as exc:
                    reason = ("no such file" if isinstance(exc, FileNotFoundError)
                              else "a tar archive with no image in it that could be read"
                              if name.lower().endswith(".tar")
                              else _ARCHIVE_NOTE if name.lower().endswith(_ARCHIVES)
                              else describe_error(exc))  # fmt: skip
                    failed.append(Prediction(name, 0.0, error=reason))
            if opened:
                vectors.extend(embed([image for _, image in opened]))
                names.extend(name for name, _ in opened)
            bar.update(min(CLASSIFY_BATCH, len(images) - start))
    if not names:
        raise BioindexError(f"none of the {len(images)} images could be read "
                            f"({failed[0].file}: {failed[0].error})")  # fmt: skip
    return names, np.stack(vectors), failed


_ARCHIVES = (".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z")
_ARCHIVE_NOTE = ("an archive, not an image: classify reads image files, folders, zips of "
                 "photos and webdataset .tar shards (bioindex index reads archives)")


def _shard_or_file(path: str | os.PathLike[str]) -> list[str | os.PathLike[str] | Item]:
    """The images of a webdataset shard or a zip of photos, or the path itself (also an
    archive with none, or a Darwin Core Archive: it is then reported as a file that could
    not be read)."""
    suffix = str(path).lower().rsplit(".", 1)[-1]
    if suffix not in ("tar", "zip") or not Path(path).is_file():
        return [path]
    resolved = Path(path).resolve()
    if suffix == "tar":
        return list(shard_images(resolved)) or [path]
    try:
        if holds_darwin_core(resolved):
            return [path]
        return list(zip_photos(resolved)[0]) or [path]
    except BioindexError:  # not a readable zip
        return [path]


def _label_matrix(identity: ModelIdentity, encode_texts: Callable[[Sequence[str]], np.ndarray],
                  labels: LabelSet, cache_root: str | os.PathLike[str] | None = None, *,
                  max_new_texts: int | None = None,
                  recent: RecentLabels | None = None) -> np.ndarray:  # fmt: skip
    """The label set's vectors by a model of `identity`, encoding through `encode_texts`
    what the cache lacks."""
    if labels.vectors is not None and labels.vectors.shape[1] != identity.dim:
        raise BioindexError(f"label vectors have dim {labels.vectors.shape[1]}; the model "
                            f"has {identity.dim}")  # fmt: skip
    # Text embeddings depend on the weights only, not on image preprocessing.
    return label_vectors(labels, encode_texts, identity.weights_sha256, cache_root,
                         max_new_texts=max_new_texts, recent=recent)  # fmt: skip


def _builder(engine: str, address: str | None) -> Any:
    """The index builder for an engine (the store is handed it; it knows no engines)."""
    if engine == "local":
        return None
    if engine == "ray":
        from bioindex.indexer.ray_engine import RayBuilder

        return RayBuilder(address)
    raise BioindexError(f"unknown engine {engine!r}; choose local or ray")


def _filter(where: Where) -> Filter | None:
    if where is None or isinstance(where, Filter):
        return where
    return parse_where(where) or None


def _unit(vector: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    if vector.shape[0] != dim:
        raise BioindexError(f"vector has {vector.shape[0]} values; the store holds dim {dim}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        raise BioindexError("the query vector is zero or not finite (terms cancel out?)")
    return vector / norm


def _weighted(term: str) -> tuple[float, str]:
    head, sep, rest = term.partition(":")
    if sep:
        try:
            return float(head), rest
        except ValueError:
            pass
    return 1.0, term


def _is_image_term(value: str) -> bool:
    """Whether a query term names an image file (else it is text)."""
    path = Path(value).expanduser()
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
