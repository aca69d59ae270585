"""Model names → open_clip models, their preprocessing, and L2-normalised embeddings.

Names a user may give (`bioindex models` lists them):
  bioclip, bioclip-2,         the published BioCLIP weights on the Hugging Face hub
  bioclip-2.5
  bioclip-demo (or demo)      the small offline demo model committed under data/models/
  hf-hub:ORG/REPO             any open_clip model on the hub
  local-dir:PATH              a folder with open_clip_config.json + weights (the offline path)
  ARCH + checkpoint           an open_clip architecture (e.g. ViT-B-16) and a weights file;
                              checkpoint "random" gives seeded random weights for benchmarks
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bioindex.errors import BioindexError, ModelMismatchError, Remedy
from bioindex.tokens import word_tokenizer


@dataclass(frozen=True)
class KnownModel:
    """A published model a short name stands for. Hub names are the publisher's own
    (imageomics.github.io/bioclip-ecosystem, each model card); dims and input sizes are
    read from open_clip's config of the architecture, never typed in here."""

    alias: str
    hub: str
    architecture: str
    about: str


KNOWN_MODELS_LIST = (
    KnownModel("bioclip", "hf-hub:imageomics/bioclip", "ViT-B-16",
               "BioCLIP (CVPR 2024), trained on TreeOfLife-10M"),
    KnownModel("bioclip-2", "hf-hub:imageomics/bioclip-2", "ViT-L-14",
               "BioCLIP 2, trained on TreeOfLife-200M"),
    KnownModel("bioclip-2.5", "hf-hub:imageomics/bioclip-2.5-vith14", "ViT-H-14",
               "BioCLIP 2.5 Huge, TreeOfLife-200M plus 19M images"),
)  # fmt: skip
ALIASES = {known.alias: known.hub for known in KNOWN_MODELS_LIST}
DEMO_ALIASES = ("bioclip-demo", "demo")
DEMO_MODEL_NAME = "bioclip-demo"
PREPROCESS_MODES = ("eval", "squash")
DEVICES = ("auto", "cpu", "cuda", "mps")
# auto: bf16 autocast on CUDA, float32 elsewhere; bf16: the image tower's weights in bf16.
PRECISIONS = ("auto", "float32", "bf16")
RANDOM_CHECKPOINT = "random"
TEXT_BLOCK = 16_384  # texts tokenized, then ordered by length, at a time

_HF_CONFIG = "open_clip_config.json"
_HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_LOCAL_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


_NAMED = "bioclip, bioclip-2, bioclip-2.5, bioclip-demo, hf-hub:ORG/REPO or local-dir:PATH"
KNOWN_MODELS = Remedy(
    python=f"use {_NAMED}, or an open_clip architecture with checkpoint=FILE",
    cli=(("--checkpoint", f"use {_NAMED}, or an open_clip architecture with --checkpoint FILE"),
         ("", f"use {_NAMED}")),
)  # fmt: skip
GIVE_CHECKPOINT = Remedy(
    python="pass checkpoint=FILE, or use a named model",
    cli=(("--checkpoint", "add --checkpoint FILE (or --checkpoint random for speed tests)"),
         ("", f"use {_NAMED}; an architecture with weights is given when the store is made "
              f"(bioindex index --model ARCH --checkpoint FILE)")),
)  # fmt: skip


def known_architectures() -> list[str]:
    """open_clip's architecture names, read from its config folder (importing open_clip
    takes seconds; a typo should be answered at once)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def _architecture_config(architecture: str) -> dict[str, Any]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    try:
        return json.loads((path / f"{architecture}.json").read_text())
    except (OSError, ValueError):
        return {}


def model_catalog() -> list[dict[str, Any]]:
    """The models a short name stands for: alias, hub name, architecture, embedding dim,
    input size and preprocessing. Nothing is downloaded or loaded."""
    rows = []
    for known in KNOWN_MODELS_LIST:
        config = _architecture_config(known.architecture)
        rows.append({"alias": known.alias, "hub": known.hub, "architecture": known.architecture,
                     "dim": config.get("embed_dim"),
                     "image_size": config.get("vision_cfg", {}).get("image_size"),
                     "preprocess": "open_clip eval (default) or squash (pybioclip's)",
                     "cached": _cached_hub_weights(known.hub[len("hf-hub:"):]) is not None,
                     "about": known.about})  # fmt: skip
    demo = demo_model_dir()
    try:
        config = json.loads((demo / _HF_CONFIG).read_text())["model_cfg"]
    except (OSError, ValueError, KeyError):
        config = {}
    rows.append({"alias": DEMO_MODEL_NAME, "hub": f"local-dir:{demo}",
                 "architecture": "tiny ViT (this project's)", "dim": config.get("embed_dim"),
                 "image_size": config.get("vision_cfg", {}).get("image_size"),
                 "preprocess": "open_clip eval (default) or squash", "cached": True,
                 "about": "offline demo model trained on the synthetic tree of life"})  # fmt: skip
    return rows


def _did_you_mean(name: str, architectures: Sequence[str]) -> str:
    known = [*ALIASES, DEMO_MODEL_NAME, *architectures]
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(by_lower[c] for c in close)}?)" if close else ""


def demo_model_dir() -> Path:
    """Where the committed demo weights live (repository checkout or editable install)."""
    return Path(__file__).resolve().parent.parent / "data" / "models" / DEMO_MODEL_NAME


def resolve_name(name: str) -> str:
    """An open_clip model name for what the user typed; local paths become absolute."""
    if name in ALIASES:
        return ALIASES[name]
    if name in DEMO_ALIASES:
        return f"local-dir:{demo_model_dir()}"
    if name.startswith("local-dir:"):
        return f"local-dir:{Path(name[len('local-dir:') :]).expanduser().resolve()}"
    return name


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two sets of vectors comparable. Stored in every store's manifest."""

    name: str
    source: str
    weights_sha256: str
    dim: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: str
    normalize: str = "l2"

    # Fields whose difference makes vectors incomparable; `name`/`source` may differ
    # (a local copy of the hub weights is the same model).
    _KEY_FIELDS = ("weights_sha256", "dim", "preprocess", "image_size", "normalize")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["mean"], fields["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**fields)

    def differences(self, other: ModelIdentity) -> list[str]:
        return [
            f"{key} {getattr(self, key)} vs {getattr(other, key)}"
            for key in self._KEY_FIELDS
            if getattr(self, key) != getattr(other, key)
        ]

    def require_same(self, other: ModelIdentity, what: str) -> None:
        diffs = self.differences(other)
        if diffs:
            raise ModelMismatchError(
                f"{what} was built with model {self.name!r} but {other.name!r} was given "
                f"({'; '.join(diffs)}); use --model {self.name} or a new store"
            )


@dataclass
class EmbeddingModel:
    """A loaded open_clip model with the transform and tokenizer that go with it."""

    identity: ModelIdentity
    model: Any
    transform: Callable[[Any], Any]
    tokenizer: Any
    device: str
    text_batch_size: int = 256
    precision: str = "auto"
    _torch: Any = field(default=None, repr=False)

    def encode_images(self, batch: Any) -> np.ndarray:
        """Preprocessed image tensors [n, 3, H, W] → float32 [n, dim], unit length."""
        return self.start_images(batch)()

    def start_images(self, batch: Any) -> Callable[[], np.ndarray]:
        """Queue `batch` on the device and return a call that waits for its unit vectors.
        On CUDA the model runs while the caller prepares the next batch; elsewhere the
        work is done before this returns."""
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            batch = batch.to(self.device, non_blocking=True)
            if self.precision == "bf16":
                batch = batch.to(torch.bfloat16)
            return self._collect(self.model.encode_image(batch).float())

    def encode_pixels(self, pixels: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """uint8 [n, 3, H, W] → unit vectors (see start_pixels)."""
        return self.start_pixels(pixels, mean, std)()

    def start_pixels(self, pixels: Any, mean: Sequence[float], std: Sequence[float]
                     ) -> Callable[[], np.ndarray]:  # fmt: skip
        """Like start_images for uint8 pixels, finishing ToTensor + Normalize on the device
        with the same arithmetic torchvision uses (so results match the PIL path)."""
        torch = self._torch
        with torch.inference_mode():
            batch = pixels.to(self.device, non_blocking=True).float().div_(255)
            mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=self.device)[:, None, None]
            std_t = torch.as_tensor(std, dtype=batch.dtype, device=self.device)[:, None, None]
            batch = batch.sub_(mean_t).div_(std_t)
        return self.start_images(batch)

    def _collect(self, features: Any) -> Callable[[], np.ndarray]:
        torch = self._torch
        if self.device != "cuda":
            vectors = _normalise(features.cpu().numpy())
            return lambda: vectors
        # Copy into pinned memory behind the batch's kernels and wait on an event, not on
        # the stream: a plain .cpu() would also wait for whatever is queued after it.
        host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
        host.copy_(features, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait() -> np.ndarray:
            done.synchronize()
            return _normalise(host.numpy())

        return wait

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.identity.dim), dtype=np.float32)
        for first in range(0, len(texts), TEXT_BLOCK):
            tokens = self.tokenizer(list(texts[first : first + TEXT_BLOCK]))
            # Shortest first: each model batch runs only as far as its longest text
            # (encode_text_trimmed), so texts of one length share a batch. A label set's
            # 80 templates range over ~10 tokens: 1.3x on ViT-B-16 (docs/benchmarks.md).
            order = torch.argsort(tokens.argmax(dim=-1), stable=True)
            for start in range(0, len(order), self.text_batch_size):
                rows = order[start : start + self.text_batch_size]
                with torch.inference_mode(), self._autocast():
                    features = encode_text_trimmed(self.model, tokens[rows].to(self.device))
                out[first + rows.numpy()] = features.float().cpu().numpy()
        return _normalise(out)

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) as trained; what CLIP-style softmax probabilities use."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    def embed_pil(self, images: Sequence[Any]) -> np.ndarray:
        batch = self._torch.stack([self.transform(image) for image in images])
        return self.encode_images(batch)

    def compile_visual(self) -> None:
        """torch.compile the image tower: slower to start (tens of seconds), faster per batch
        on a GPU; worth it for long runs. Embeddings stay the same to float precision."""
        if not getattr(self, "_compiled", False):
            self.model.visual = self._torch.compile(self.model.visual)
            self._compiled = True

    def set_precision(self, precision: str) -> None:
        """Choose the image tower's numeric format (see PRECISIONS). bf16 casts the image
        tower's weights: on a CPU with bf16 instructions it ran 1.8x as fast at a cosine of
        0.99996 to float32 (docs/benchmarks.md). The text tower stays as loaded, so text
        queries keep pybioclip's exact float32 scores."""
        check_precision(precision)
        torch = self._torch
        if precision == "bf16" and self.device == "cpu" and not _cpu_has_bf16(torch):
            raise BioindexError(
                "--precision bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX); "
                "this one has none, use --precision float32"
            )
        if precision == "bf16" and self.device == "mps":
            raise BioindexError("--precision bf16 is for CPUs and CUDA GPUs, not mps")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model.visual.to(dtype)
        self.precision = precision

    def _autocast(self):
        import contextlib

        if self.device == "cuda" and self.precision == "auto":
            return self._torch.autocast("cuda", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BioindexError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )


def _cpu_has_bf16(torch: Any) -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())  # fmt: skip
    except (AttributeError, RuntimeError):  # a private probe: absent means unknown, so no
        return False


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """`model.encode_text(tokens)`, run only up to the last pooled token.

    CLIP's text tower is causal: a position sees only those before it, and the vector is
    read at the end-of-text token, so the padding after it never reaches the answer. A
    species name is ~12 of the 77 tokens; the whole context cost 6.5x as much for 256 names
    on a CPU (docs/benchmarks.md). Any model whose text forward differs from open_clip's
    CLIP (another class, no causal mask, other pooling) runs its own encode_text."""
    import open_clip
    import torch
    from open_clip.transformer import text_global_pool

    pooling = getattr(model, "text_pool_type", None)
    if (type(model).encode_text is not open_clip.CLIP.encode_text
            or getattr(model, "attn_mask", None) is None or pooling not in ("argmax", "eos")):
        return model.encode_text(tokens)
    eos = getattr(model, "text_eos_id", None)
    read_at = tokens.argmax(dim=-1) if pooling == "argmax" else (tokens == eos).int().argmax(-1)
    length = int(read_at.max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, pooling, eos_token_id=eos)
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def select_device(device: str = "auto") -> str:
    import torch

    if device not in DEVICES:
        raise BioindexError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        raise BioindexError("--device cuda was asked for but torch sees no CUDA GPU")
    if device == "mps" and not mps:
        raise BioindexError("--device mps was asked for but torch sees no Apple GPU")
    return device


def squash_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """pybioclip's preprocessing: the whole image squashed to a square, no crop."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize((image_size, image_size), antialias=True),
            transforms.Normalize(mean, std),
        ]
    )


def load_model(
    name: str = "bioclip",
    *,
    checkpoint: str | None = None,
    device: str = "auto",
    preprocess: str = "eval",
) -> EmbeddingModel:
    """Load a model for embedding; raise BioindexError (one clear sentence) when it can't be."""
    if preprocess not in PREPROCESS_MODES:
        raise BioindexError(
            f"unknown preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESS_MODES)}"
        )
    source = resolve_name(name)
    weights_path = _locate_weights(name, source, checkpoint)

    import open_clip
    import torch

    torch_device = select_device(device)
    pretrained = None
    if checkpoint == RANDOM_CHECKPOINT:
        torch.manual_seed(0)
    elif checkpoint is not None:
        pretrained = str(weights_path)
    try:
        model, _, eval_transform = open_clip.create_model_and_transforms(
            source, pretrained=pretrained
        )
    except BioindexError:
        raise
    except Exception as exc:  # open_clip raises a zoo of types for bad configs/weights
        raise BioindexError(f"could not load model {name!r}: {_first_line(exc)}") from exc
    model = model.to(torch_device).eval()
    if weights_path is None and source.startswith("hf-hub:"):
        weights_path = _cached_hub_weights(source[len("hf-hub:") :])

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    transform = eval_transform if preprocess == "eval" else squash_transform(image_size, mean, std)
    dim = (
        int(model.text_projection.shape[1])
        if _has_text_projection(model)
        else _probe_dim(model, image_size, torch_device)
    )
    identity = ModelIdentity(
        name=name,
        source=source,
        weights_sha256=_weights_fingerprint(weights_path, source, checkpoint),
        dim=dim,
        image_size=image_size,
        mean=mean,
        std=std,
        preprocess=preprocess,
    )
    return EmbeddingModel(
        identity=identity,
        model=model,
        transform=transform,
        tokenizer=word_tokenizer(open_clip.get_tokenizer(source)),
        device=torch_device,
        _torch=torch,
    )


def _has_text_projection(model: Any) -> bool:
    projection = getattr(model, "text_projection", None)
    return projection is not None and getattr(projection, "ndim", 0) == 2


def _probe_dim(model: Any, image_size: int, device: str) -> int:
    import torch

    with torch.inference_mode():
        return int(
            model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1]
        )


def _locate_weights(name: str, source: str, checkpoint: str | None) -> Path | None:
    """Find the weights file before any loading, so failures are fast and explained."""
    if source.startswith("local-dir:"):
        folder = Path(source[len("local-dir:") :])
        if not folder.is_dir():
            hint = (
                " (the demo weights ship in the repository's data/ folder)"
                if (name in DEMO_ALIASES)
                else ""
            )
            raise BioindexError(f"model folder {folder} does not exist{hint}")
        if not (folder / _HF_CONFIG).is_file():
            raise BioindexError(f"model folder {folder} has no {_HF_CONFIG}")
        for candidate in _LOCAL_WEIGHTS:
            if (folder / candidate).is_file():
                return folder / candidate
        raise BioindexError(
            f"model folder {folder} has no weights file ({', '.join(_LOCAL_WEIGHTS)})"
        )
    if source.startswith("hf-hub:"):
        _ensure_hub_available(source[len("hf-hub:") :])
        return None
    architectures = known_architectures()
    if architectures and name not in architectures:
        raise BioindexError(f"unknown model {name!r}{_did_you_mean(name, architectures)}",
                            remedy=KNOWN_MODELS)  # fmt: skip
    if checkpoint is None:
        raise BioindexError(f"model {name!r} is an open_clip architecture without weights",
                            remedy=GIVE_CHECKPOINT)  # fmt: skip
    if checkpoint == RANDOM_CHECKPOINT:
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise BioindexError(f"checkpoint file {path} does not exist")
    return path.resolve()


def _cached_hub_file(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def _cached_hub_weights(repo_id: str) -> Path | None:
    for filename in _HF_WEIGHTS:
        found = _cached_hub_file(repo_id, filename)
        if found:
            return Path(found)
    return None


def _ensure_hub_available(repo_id: str) -> None:
    """Use the local cache when it is complete; otherwise fail fast if the hub is unreachable.

    huggingface_hub retries an unreachable host for ~30 s before giving up, so we check
    reachability ourselves with one short connection attempt.
    """
    import huggingface_hub.constants as hf_constants

    cached = _cached_hub_file(repo_id, _HF_CONFIG) and _cached_hub_weights(repo_id)
    if hf_constants.HF_HUB_OFFLINE and cached:
        return
    if _hub_reachable(hf_constants.ENDPOINT):
        return
    if cached:
        # Everything is on disk; stop huggingface_hub from retrying the network.
        hf_constants.HF_HUB_OFFLINE = True
        return
    raise BioindexError(
        f"the weights of hf-hub:{repo_id} are not in the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}) and {hf_constants.ENDPOINT} cannot be reached; "
        f"download them where there is internet (huggingface-cli download {repo_id}) and copy "
        f"the cache here (or set HF_HOME), or pass --model local-dir:PATH for a folder holding "
        f"open_clip_config.json and open_clip_pytorch_model.bin"
    )


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _weights_fingerprint(path: Path | None, source: str, checkpoint: str | None) -> str:
    if checkpoint == RANDOM_CHECKPOINT:
        return f"random-init:{source}:seed0"
    if path is None:
        return f"unknown:{source}"
    return file_sha256(path)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
