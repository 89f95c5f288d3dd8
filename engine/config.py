"""The job configuration: YAML validated by pydantic, then environment, then `--set` overrides.

Precedence, lowest first: schema defaults (engine/tunables.py) < the YAML file < QDRANT_URL / QDRANT_API_KEY /
QDRANT_GRPC_PORT < `--set key=value`. Every problem surfaces as one `ConfigError` line that names the key and the fix;
the API key never appears in a message, a repr, a log line or a report (`JobConfig.redacted()`).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import string
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeGuard
from urllib.parse import urlsplit

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

from engine import tunables
from engine.errors import ConfigError

log = logging.getLogger(__name__)

ENV_URL = "QDRANT_URL"
ENV_API_KEY = "QDRANT_API_KEY"
ENV_GRPC_PORT = "QDRANT_GRPC_PORT"  # QDRANT_URL's port is the REST port; the gRPC one needs its own variable
_SECRET_KEYS = {"qdrant.api_key"}  # never echoed in a message

Strategy = Literal["auto", "new_collection", "in_place", "side_by_side", "hybrid"]
Distance = Literal["Cosine", "Dot", "Euclid", "Manhattan"]
# The pooling modes of sentence-transformers' Pooling module, as engine.embed implements them (kept here so the
# config loads without torch).
Pooling = Literal["auto", "mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean"]
_POOLING_ALIASES = {"last": "lasttoken", "last_token": "lasttoken", "mean_tokens": "mean", "cls_token": "cls"}
DType = Literal["auto", "float32", "float16", "bfloat16"]

# Strategies that write into the source collection unless the job names a different target collection.
_IN_PLACE_CAPABLE = ("in_place", "side_by_side", "hybrid")
_MAX_NAME = 255
_MIB = 1024 * 1024
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# A payload key inside a dot path: anything but the characters that separate paths or mean format syntax.
_PATH_SEGMENT_RE = re.compile(r"^[^.{}\[\]:!]+$")
_URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# The schema's target defaults describe one example job; they are used only when the source is that example's.
_EXAMPLE_SOURCE, _EXAMPLE_TARGET, _EXAMPLE_ALIAS = "articles", "articles_minilm", "articles"


def _field(default: Any, description: str, reason: str | None = None, **constraints: Any) -> Any:
    """A field with its description and, for range errors, the reason the range exists (shown to the user)."""
    extra: JsonDict | None = {"reason": reason} if reason else None
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def _fail(message: str) -> PydanticCustomError:
    """A validator error whose text follows `<key>=<value> ` in the final message."""
    return PydanticCustomError("reembed_field", message)


def _fail_whole(message: str) -> PydanticCustomError:
    """A validator error whose text is the whole message (it names its own keys)."""
    return PydanticCustomError("reembed_model", message)


def _check_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value:
        raise _fail(f"is empty; set a {what} name")
    if len(value) > _MAX_NAME:
        raise _fail(f"is {len(value)} characters long; Qdrant names are at most {_MAX_NAME}, pick a shorter one")
    if value != value.strip():
        raise _fail("has leading or trailing spaces; remove them")
    for bad in ("/", "\\", "\0"):
        if bad in value:
            raise _fail(f"contains {bad!r}; pick a {what} name without it")
    if any(ord(ch) < 32 for ch in value):
        raise _fail(f"contains a control character; pick a {what} name without it")
    return value


def _canonical(value: Any, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> Any:
    """Case-insensitive match onto one of `choices` (and aliases); anything else goes on to Literal validation."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if aliases and low in aliases:
        return aliases[low]
    for choice in choices:
        if choice.lower() == low:
            return choice
    return value


class _Section(BaseModel):
    # strict: YAML already types every scalar, so `shards: "8"` or `normalize: 1` is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True)


class QdrantConfig(_Section):
    """Where the Qdrant server is and how to talk to it (gRPC)."""

    url: str = _field(
        "http://127.0.0.1",
        "Server URL; https means TLS. Only scheme and host are used: gRPC goes to grpc_port, any port here is "
        "the REST port and is ignored. Overridden by QDRANT_URL.",
    )
    grpc_port: int = _field(6334, "gRPC port of the server.", ge=1, le=65535)
    api_key: SecretStr | None = _field(
        None, "API key, sent as the `api-key` header; never printed. Overridden by QDRANT_API_KEY."
    )
    timeout_s: float = _field(
        tunables.RPC_TIMEOUT_S, "Deadline of one RPC in seconds.", "a healthy server answers in seconds",
        gt=0, le=3600,
    )
    tls_ca_cert: str | None = _field(None, "PEM file of the CA that signed the server certificate (https only).")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # A key read from a file or a secret store often ends in a newline, which gRPC metadata rejects.
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        _parse_url(value)
        return value

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> "QdrantConfig":
        if self.tls_ca_cert is not None and not self.endpoint()[2]:
            raise _fail_whole(
                f"qdrant.tls_ca_cert is set but qdrant.url {self.url!r} is not https; "
                "use an https:// url or remove tls_ca_cert"
            )
        return self

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, gRPC port, TLS) parsed from `url` and `grpc_port`."""
        try:
            host, tls = _parse_url(self.url)
        except PydanticCustomError as exc:  # only if url was reassigned after validation
            raise ConfigError(f"config: qdrant.url={self.url!r} {exc.message()}") from None
        return host, self.grpc_port, tls

    def grpc_target(self) -> str:
        """`host:port` for grpc.*_channel, with IPv6 hosts bracketed."""
        host, port, _ = self.endpoint()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def api_key_value(self) -> str | None:
        """The API key in clear, for the request metadata only."""
        return self.api_key.get_secret_value() if self.api_key is not None else None


def _parse_url(url: str) -> tuple[str, bool]:
    """(host, tls) of a Qdrant URL, or a field error saying how to write it."""
    if not url or not url.strip():
        raise _fail("is empty; set it like http://localhost or https://xyz.cloud.qdrant.io")
    if "://" not in url:
        raise _fail(f"has no scheme; write http://{url} or https://{url}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as exc:
        raise _fail(f"is not a valid URL ({exc}); write it like http://host:6333") from None
    if parts.scheme not in ("http", "https"):
        raise _fail(f"has scheme {parts.scheme!r}; use http:// or https:// (https means TLS)")
    if not host:
        raise _fail("has no host; write it like http://localhost")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _fail("has a path or query; gRPC uses only scheme and host, remove everything after the host")
    if parts.username or parts.password:
        raise _fail("carries credentials; put the key in qdrant.api_key or QDRANT_API_KEY instead")
    return host, parts.scheme == "https"


class SourceConfig(_Section):
    """The collection being re-embedded and where its text lives in each point's payload."""

    collection: str = _field("articles", "Source collection name (or alias).")
    text_field: str | None = _field(
        "text", "Dot path into the payload holding the text, e.g. doc.body. Exactly one of text_field/text_template."
    )
    text_template: str | None = _field(
        None,
        "Template over payload fields, e.g. '{title}\\n\\n{body}'; dot paths allowed inside braces. "
        "Setting it clears the default text_field.",
    )
    vector_name: str | None = _field(None, "Name of the existing vector; null or '' means the unnamed vector.")
    text_dataset: str | None = _field(
        None,
        "External text for collections that store none: a Parquet file or directory (local path, file://, s3://, "
        "gs://) with one row per point id. Setting it clears the default text_field.",
    )
    text_dataset_id_column: str = _field("id", "Column of text_dataset holding the point id (integer or UUID text).")
    text_dataset_text_column: str = _field("text", "Column of text_dataset holding the text.")

    @model_validator(mode="before")
    @classmethod
    def _template_replaces_default_field(cls, data: Any) -> Any:
        if isinstance(data, dict) and "text_field" not in data and (
            data.get("text_template") is not None or data.get("text_dataset") is not None
        ):
            data = {**data, "text_field": None}
        return data

    @field_validator("text_dataset")
    @classmethod
    def _check_dataset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _fail("is empty; set a Parquet file or directory, or remove the key")
        if "://" in value and value.split("://", 1)[0].lower() not in _URI_SCHEMES:
            raise _fail(f"has an unsupported scheme; use a local path or one of {', '.join(_URI_SCHEMES)}")
        return value

    @field_validator("text_dataset_id_column", "text_dataset_text_column")
    @classmethod
    def _column(cls, value: str) -> str:
        if not value.strip():
            raise _fail("is empty; name a column of source.text_dataset")
        return value

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        return _check_name(value, "collection")  # type: ignore[return-value]

    @field_validator("vector_name")
    @classmethod
    def _unnamed(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("text_field")
    @classmethod
    def _check_text_field(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dot_path(value, "a payload key like text or doc.body")
        return value

    @field_validator("text_template")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is not None:
            _template_fields(value)
        return value

    @model_validator(mode="after")
    def _exactly_one_text_source(self) -> "SourceConfig":
        if self.text_field is not None and self.text_template is not None:
            raise _fail_whole(
                "source.text_field and source.text_template are both set; "
                "keep one (text_template can include the field)"
            )
        if self.text_dataset is not None and (self.text_field is not None or self.text_template is not None):
            raise _fail_whole(
                "source.text_dataset is set together with source.text_field/text_template; the text comes from one "
                "place, keep one"
            )
        if self.text_field is None and self.text_template is None and self.text_dataset is None:
            raise _fail_whole(
                "source has no text; set source.text_field (e.g. text), source.text_template or source.text_dataset"
            )
        return self

    def template_fields(self) -> list[str]:
        """The payload dot paths the text is built from, in order of first use (none for an external dataset)."""
        if self.text_template is not None:
            return _template_fields(self.text_template)
        if self.text_field is None:
            return []
        return [self.text_field]


def _check_dot_path(path: str, example: str) -> None:
    if not path or not all(_PATH_SEGMENT_RE.match(seg) for seg in path.split(".")):
        raise _fail(f"is not a dot path; write {example}")


def _template_fields(template: str) -> list[str]:
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _fail(
            f"is not a valid template ({exc}); write fields as {{name}} and literal braces as {{{{ }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise _fail("has a positional field {}; name payload fields, e.g. {title}")
        if spec or conversion:
            raise _fail(f"uses format syntax in {{{name}}}; only plain {{field}} or {{dot.path}} is supported")
        _check_dot_path(name, "{title} or {doc.body}")
        if name not in fields:
            fields.append(name)
    if not fields:
        raise _fail("has no {field}; reference at least one payload field, e.g. {title}")
    return fields


LayoutQuantization = Literal["keep", "none", "scalar", "binary"]


class LayoutConfig(_Section):
    """A new collection's layout. It copies the source's (shards, replication, sharding method and shard keys,
    quantization, HNSW, optimizers, WAL, strict mode, payload storage); each key set here overrides one part."""

    shard_number: int | None = _field(
        None, "Shards of the new collection (per shard key with custom sharding); null = the source's.", ge=1
    )
    replication_factor: int | None = _field(None, "Copies of each shard; null = the source's.", ge=1)
    write_consistency_factor: int | None = _field(
        None, "Replicas that must apply a write before it is acknowledged; null = the source's.", ge=1
    )
    on_disk_payload: bool | None = _field(None, "Keep payloads on disk instead of in RAM; null = the source's.")
    quantization: LayoutQuantization = _field(
        "keep",
        "keep (the source's), none, scalar (int8, 4x smaller in RAM) or binary (32x smaller; for models trained for "
        "it); applies to every vector of the new collection. With the model that made the source vectors "
        "(verify.old_model equal to model.name) a change here alone needs no model run: `reembed plan` says so and "
        "`reembed requantize --apply` re-quantizes the source in place.",
    )
    strict_mode: Literal["keep", "off"] = _field(
        "keep", "keep (the source's strict-mode limits, rate limits included) or off (none on the new collection)."
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_spelling(cls, value: Any) -> Any:
        # YAML reads a bare `off` / `no` as false and `null` as None: both mean no quantization.
        if value is None or value is False:
            return "none"
        return _canonical(value, typing.get_args(LayoutQuantization), {"off": "none", "disabled": "none",
                                                                        "int8": "scalar"})

    @field_validator("strict_mode", mode="before")
    @classmethod
    def _strict_mode_spelling(cls, value: Any) -> Any:
        if value is None or value is False:
            return "off"
        return _canonical(value, ("keep", "off"), {"none": "off", "disabled": "off"})

    @model_validator(mode="after")
    def _consistency_within_replicas(self) -> LayoutConfig:
        rf, wcf = self.replication_factor, self.write_consistency_factor
        if rf is not None and wcf is not None and wcf > rf:
            raise _fail_whole(
                f"target.layout.write_consistency_factor={wcf} is above target.layout.replication_factor={rf}; a "
                "write cannot wait for more replicas than exist, lower it or raise replication_factor"
            )
        return self


class TargetConfig(_Section):
    """Where the new vectors go."""

    collection: str | None = _field(
        _EXAMPLE_TARGET,
        "Target collection; required for new_collection (the default belongs to the example source 'articles' only). "
        "in_place, and side_by_side/hybrid unless it is set, write into the source collection.",
    )
    alias: str | None = _field(
        _EXAMPLE_ALIAS,
        "Alias switched atomically to the target at cutover (new_collection); the default applies only to the "
        "example source 'articles', otherwise no alias unless set.",
    )
    vector_name: str | None = _field("dense", "Name of the new vector; null means one unnamed vector.")
    distance: Distance = _field("Cosine", "Distance of the new vector: Cosine, Dot, Euclid or Manhattan.")
    on_disk: bool = _field(False, "Keep the new vectors on disk (memmap) instead of in RAM.")
    hnsw_m: int | None = _field(
        None, "HNSW m of the new vector (0 defers indexing); null keeps the server default.", ge=0, le=512
    )
    hnsw_ef_construct: int | None = _field(
        None, "HNSW ef_construct of the new vector; null keeps the server default.", "Qdrant needs at least 4",
        ge=4, le=4096,
    )
    old_vector_name: str = _field(
        "old",
        "side_by_side/hybrid into a new collection: the name the source's unnamed vector is copied under "
        "(named source vectors keep their names).",
    )
    sparse_vector_name: str = _field("bm25", "hybrid: name of the sparse vector (created with the IDF modifier).")
    defer_index: bool = _field(
        True,
        "Defer HNSW building for vectors this job creates while it loads them, restore it after and wait for the "
        "collection to turn green (never applied to an existing vector).",
    )
    layout: LayoutConfig = Field(
        default_factory=LayoutConfig,
        description="A new collection's layout: the source's, with these overrides (ignored when writing in place).",
    )

    @field_validator("collection", "alias")
    @classmethod
    def _check_names(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_name(value, "alias" if info.field_name == "alias" else "collection")

    @field_validator("old_vector_name", "sparse_vector_name")
    @classmethod
    def _check_vector_names(cls, value: str) -> str:
        return _check_name(value, "vector")  # type: ignore[return-value]

    @field_validator("vector_name")
    @classmethod
    def _unnamed(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("distance", mode="before")
    @classmethod
    def _distance_case(cls, value: Any) -> Any:
        return _canonical(value, typing.get_args(Distance), {"euclidean": "Euclid", "l2": "Euclid"})


class ModelConfig(_Section):
    """The new embedding model and how to run it; handed as a plain dict to engine.embed.build_embedder."""

    kind: Literal["dense", "late_interaction"] = _field(
        "dense",
        "dense (one vector per text) or late_interaction (ColBERT-style: one vector per token, from a Stanford "
        "ColBERT or PyLate checkpoint; pooling, matryoshka_dim and prefix do not apply).",
    )
    name: str = _field(
        "sentence-transformers/all-MiniLM-L6-v2",
        "Hugging Face model id, a local directory, or hash:<dim> / hashed-bow:<dim> (test embedders, no model).",
    )
    revision: str | None = _field(None, "Model revision (commit, tag or branch) to pin; null = default branch.")
    max_length: int | None = _field(
        None, "Truncate texts to this many tokens; null = the model's own limit.", ge=1, le=131072
    )
    pooling: Pooling = _field(
        "auto",
        "auto (the model's sentence-transformers config, else mean), mean, cls, max, lasttoken, "
        "mean_sqrt_len_tokens or weightedmean.",
    )
    normalize: bool | None = _field(None, "L2-normalise vectors; null = what the model's config says.")
    dtype: DType = _field(
        "auto", "auto (the embedder picks per device), float32, float16 or bfloat16 (also fp32/fp16/bf16)."
    )
    device: str = _field("auto", "auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N.")
    matryoshka_dim: int | None = _field(
        None, "Keep only the first N dimensions (Matryoshka models); null = full size.", ge=1, le=65536,
    )
    token_budget: int | None = _field(
        None,
        f"Padded tokens per forward pass; null = {tunables.TOKEN_BUDGET_GPU} on GPU, "
        f"{tunables.TOKEN_BUDGET_CPU} on CPU.",
        ge=64, le=4_194_304,
    )
    max_batch: int | None = _field(
        None, f"Most texts per forward pass; null = {tunables.MAX_BATCH_TEXTS}.", ge=1, le=65536
    )
    compile: bool = _field(False, "torch.compile the model (slow first batch, faster after).")
    prefix: str = _field("", "Text prepended to every passage, e.g. 'passage: ' for E5 models.")
    threads: int | None = _field(None, "torch intra-op threads on CPU; null = the actor's CPUs.", ge=1, le=1024)

    @field_validator("name")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise _fail("is empty; set a model id like sentence-transformers/all-MiniLM-L6-v2")
        return value

    @field_validator("pooling", mode="before")
    @classmethod
    def _pooling_case(cls, value: Any) -> Any:
        return _canonical(value, typing.get_args(Pooling), _POOLING_ALIASES)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: Any) -> Any:
        aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
        return _canonical(value, typing.get_args(DType), aliases)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise _fail("is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
        return value


class PipelineConfig(_Section):
    """Parallelism and flow control."""

    shards: int = _field(
        tunables.SHARDS, "Id ranges the source is cut into (units of parallelism and of resume).", ge=1, le=4096,
    )
    scroll_page: int = _field(
        tunables.SCROLL_PAGE, "Points per scroll page (the unit of flow and retry).",
        "small pages cost per-task overhead and large ones memory", ge=16, le=8192,
    )
    upload_batch: int = _field(
        tunables.UPLOAD_BATCH, "Points per write request.", "Qdrant guidance is 64–256 points per request",
        ge=tunables.UPLOAD_BATCH_MIN, le=tunables.UPLOAD_BATCH_MAX,
    )
    embed_actors: int | None = _field(
        None,
        "Most lanes (each one embedding actor with its readers and writers, on one node); null = one per GPU of "
        "every GPU node, or cpu_lanes_per_node per node on a CPU cluster.", ge=1, le=4096
    )
    upload_actors: int | None = _field(
        None, "Writers per lane; null = derived from the node's CPUs (one).", ge=1, le=64
    )
    scroll_actors: int | None = _field(None, "Readers per lane; null = derived from the node's CPUs (one).",
                                       ge=1, le=64)
    io_cpus: float | None = _field(
        None, "CPUs each reader and writer of a lane reserves; null = derived from the node (what the embedding "
        "actor leaves on a GPU node, a quarter CPU on a CPU lane).", gt=0, le=64,
    )
    cpu_lanes_per_node: int = _field(
        1, "Lanes per node on a cluster without GPUs (each one embedding actor using its share of the node's CPUs).",
        ge=1, le=256,
    )
    streams_per_lane: int = _field(
        tunables.LANE_STREAMS, "Shards a lane reads at once.",
        "reads are sequential within a shard; a second shard keeps the lane fed at a shard's end", ge=1, le=64,
    )
    min_gpus: int = _field(
        0, "Wait (asking the autoscaler) until the cluster has this many GPUs before starting; 0 = start on what "
        "there is, and take GPU nodes as they join.", ge=0, le=100_000,
    )
    resource_wait_s: float = _field(
        tunables.RESOURCE_WAIT_S, "How long min_gpus waits for the cluster before the job stops.", gt=0,
        le=7 * 86400,
    )
    lane_start_timeout_s: float = _field(
        tunables.LANE_START_TIMEOUT_S, "How long the job waits for its first lane (placement and model load).",
        "a large model on a cold node takes minutes", gt=0, le=86400,
    )
    pages_in_flight: int = _field(
        tunables.PAGES_IN_FLIGHT, "Pages in flight per lane stage (backpressure bound).",
        "enough to hide one stage's latency, bounded so memory stays flat", ge=1, le=64,
    )
    upload_requests_in_flight: int = _field(
        tunables.UPLOAD_REQUESTS_IN_FLIGHT, "Concurrent write requests per writer.",
        "2–4 in flight saturate a server", ge=1, le=64,
    )
    max_request_bytes: int = _field(
        tunables.MAX_REQUEST_BYTES, "Split a write request above this size.",
        "Qdrant caps requests at 32 MiB and headers need room", ge=64 * 1024, le=32 * _MIB - _MIB,
    )
    checkpoint_interval_s: float = _field(
        tunables.CHECKPOINT_MIN_INTERVAL_S, "Least seconds between checkpoint saves (0 = after every commit).",
        "a crash redoes the pages in flight plus at most this long of committed ones; each save is a write",
        ge=0, le=600,
    )
    embed_gpus_per_actor: float = _field(
        1, "GPUs reserved per embedding worker; a fraction (e.g. 0.5) packs several small-model replicas on one GPU.",
        gt=0, le=8,
    )
    max_points_per_s: float | None = _field(
        None,
        "Cap on points written per second by the whole job (split across writers); null = no cap, the writers pace "
        "themselves on the server's refusals and latency alone.",
        gt=0,
    )
    write_latency_target_ms: float | None = _field(
        tunables.WRITE_LATENCY_TARGET_MS,
        "Writers send fewer requests at once while a write takes longer than this; null = no latency target.",
        "a healthy server answers a write in tens of milliseconds", gt=0, le=600_000,
    )
    protect_search_p99_ms: float | None = _field(
        None,
        "Writers back off while the source collection's search latency p99 (probed with a top-10 query) is above "
        "this; null = no probe.",
        gt=0, le=600_000,
    )
    adaptive_pacing: bool = _field(
        True,
        "Writers adapt their requests in flight and their rate to the server's refusals, latency and search p99; "
        "false = each writer keeps upload_requests_in_flight requests in flight whatever the server says (a refused "
        "request is retried after its retry-after), the baseline bench/pacing.py compares with.",
    )

    @field_validator("embed_gpus_per_actor")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise _fail("is a fraction above 1; Ray shares GPUs only as fractions up to 1, use 0.5, 1, 2 ...")
        return value


class CheckpointConfig(_Section):
    """Where progress is kept so a resubmitted job resumes."""

    store: Literal["qdrant", "uri"] = _field("qdrant", "qdrant (a small collection on the target server) or uri.")
    uri: str | None = _field(None, "Directory for store=uri: a local path, file://, s3:// or gs:// (pyarrow.fs).")
    collection: str = _field(tunables.CHECKPOINT_COLLECTION, "Checkpoint collection for store=qdrant.")

    @field_validator("store", mode="before")
    @classmethod
    def _store_case(cls, value: Any) -> Any:
        return _canonical(value, ("qdrant", "uri"))

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        return _check_name(value, "collection")  # type: ignore[return-value]

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _fail("is empty; set a directory, e.g. ./reembed-checkpoints or s3://bucket/reembed")
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in _URI_SCHEMES:
                choices = ", ".join(s + "://" for s in _URI_SCHEMES)
                raise _fail(f"has scheme {scheme!r}; use a local path or one of {choices}")
        return value

    @model_validator(mode="after")
    def _uri_matches_store(self) -> "CheckpointConfig":
        if self.store == "uri" and self.uri is None:
            raise _fail_whole(
                "checkpoint.store is uri but checkpoint.uri is not set; set checkpoint.uri to a directory"
            )
        if self.store == "qdrant" and self.uri is not None:
            raise _fail_whole(
                "checkpoint.uri is set but checkpoint.store is qdrant; set checkpoint.store: uri or remove uri"
            )
        return self


class RetryConfig(_Section):
    """Retries of one request: exponential backoff with full jitter, bounded by attempts and a deadline; an outage
    or a rate limit is waited out within outage_budget_s instead."""

    max_attempts: int = _field(tunables.RETRY_MAX_ATTEMPTS, "Attempts per request, the first included.", ge=1, le=100)
    base_delay_s: float = _field(
        tunables.RETRY_BASE_DELAY_S, "First backoff in seconds; doubled each attempt.", gt=0, le=60
    )
    max_delay_s: float = _field(tunables.RETRY_MAX_DELAY_S, "Cap on one backoff sleep in seconds.", gt=0, le=600)
    deadline_s: float = _field(
        tunables.RETRY_DEADLINE_S, "Give up on one request after this many seconds.", gt=0, le=86400
    )
    outage_budget_s: float = _field(
        tunables.RETRY_OUTAGE_BUDGET_S,
        "Seconds one request waits out an unreachable or restarting server (UNAVAILABLE, DEADLINE_EXCEEDED) or a "
        "rate limit (RESOURCE_EXHAUSTED) before the job stops, whatever max_attempts and deadline_s say.",
        "a rolling restart takes minutes; a week is the longest wait worth keeping a job alive for",
        gt=0, le=7 * 86400,
    )

    @model_validator(mode="after")
    def _ordered(self) -> "RetryConfig":
        if self.max_delay_s < self.base_delay_s:
            raise _fail_whole(
                f"retry.max_delay_s={self.max_delay_s:g} is below retry.base_delay_s={self.base_delay_s:g}; "
                "raise max_delay_s or lower base_delay_s"
            )
        return self


class DeadLetterConfig(_Section):
    """Points that cannot be embedded or written are kept, with the cause, instead of stopping the job."""

    dir: str | None = _field(
        None,
        "Where each job keeps its run directory (dead letters, verify results, reports): an absolute path every node "
        "sees, or a URI (s3://, gs://, file://). A relative path is made absolute on the driver. null = beside the "
        "checkpoint (<checkpoint.uri>/runs with store uri, else ~/reembed-runs on the driver's machine).",
    )

    @field_validator("dir")
    @classmethod
    def _nonempty(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _fail("is empty; set a directory such as /data/reembed-runs, or null")
        if "://" in value and value.split("://", 1)[0].lower() not in _URI_SCHEMES:
            raise _fail(f"has an unsupported scheme; use a path or one of {', '.join(_URI_SCHEMES)}")
        return value


class VerifyConfig(_Section):
    """Checks run before cutover."""

    sample: int = _field(1000, "Points sampled for recomputation and recall checks.", ge=1, le=1_000_000)
    min_cosine: float = _field(
        0.999, "Least cosine between a stored vector and the same text embedded again.", gt=0, le=1
    )
    min_hnsw_recall: float = _field(
        0.95, "Least HNSW-vs-exact recall on the new index.", "Qdrant guidance is 0.95", gt=0, le=1
    )
    k: int = _field(
        10, "Neighbours compared: HNSW recall@k, top-k overlap old vs new, labelled recall@k.",
        "Qdrant guidance measures at 10", ge=1, le=1000,
    )
    queries: int = _field(
        100, "Sampled points used as queries for HNSW recall and the label-free comparison.",
        "Qdrant guidance asks for at least 50 queries", ge=1, le=100_000,
    )
    old_model: str | None = _field(
        None,
        "Model that made the source vectors (a model.name value, e.g. hashed-bow:256); enables old-vs-new labelled "
        "metrics and self-retrieval on the old vectors. Equal to model.name it says the model is unchanged: a "
        "target.layout.quantization change is then answered without re-embedding. null = the new vectors only.",
    )
    eval_file: str | None = _field(
        None, "Labelled queries, JSONL or Parquet rows of {query, relevant_ids}; `reembed verify --eval` overrides."
    )
    max_ndcg_drop: float | None = _field(
        None,
        "Fail verify when labelled nDCG@10 of the new vectors is more than this below the old vectors' (needs "
        "eval_file and old_model); null = labelled metrics are information only.",
        ge=0, le=1,
    )

    @field_validator("old_model", "eval_file")
    @classmethod
    def _nonempty_or_null(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise _fail("is empty; set it or use null")
        return value


class SparseConfig(_Section):
    """hybrid: the sparse model. BM25 uses Qdrant's own tokenisation (qdrant-edge); a SPLADE model is a local
    transformers masked-LM directory."""

    model: str = _field("bm25", "bm25, or a directory (or hub id) of a SPLADE masked-LM model.")
    language: str = _field("english", "bm25: language of the stopwords and stemmer.")
    k: float = _field(1.2, "bm25: term-frequency saturation.", ge=0, le=100)
    b: float = _field(0.75, "bm25: length normalisation, 0 none to 1 full.", ge=0, le=1)
    avg_len: float = _field(256.0, "bm25: expected document length in tokens.", gt=0, le=1_000_000)
    max_length: int = _field(256, "SPLADE: truncate texts to this many tokens.", ge=8, le=8192)

    @field_validator("model", "language")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise _fail("is empty; set a value")
        return value


ShortcutKind = Literal["none", "matryoshka", "linear_map"]


class ShortcutConfig(_Section):
    """New vectors computed from the stored old vectors instead of running the model over the whole collection."""

    kind: ShortcutKind = _field(
        "none",
        "none (embed the text), matryoshka (truncate the stored vectors to dim and renormalise) or linear_map "
        "(learn old->new on a sample embedded with the new model, apply it to every stored vector).",
    )
    dim: int | None = _field(None, "matryoshka: dimensions kept.", ge=1, le=65536)
    method: Literal["lstsq", "procrustes"] = _field(
        "lstsq", "linear_map: least squares (with bias) or orthogonal Procrustes."
    )
    sample: int = _field(2000, "linear_map: points embedded with the new model to learn the map.", ge=20, le=1_000_000)
    holdout: float = _field(0.2, "linear_map: share of the sample held out to measure recall@10.", gt=0, lt=1)
    map_file: str | None = _field(
        None, "linear_map: where the learned map is kept (.npz); null = reembed-runs/<job>/linear_map.npz."
    )
    normalize: bool = _field(True, "L2-normalise the produced vectors (what cosine search expects).")

    @model_validator(mode="after")
    def _kind_needs(self) -> "ShortcutConfig":
        if self.kind == "matryoshka" and self.dim is None:
            raise _fail_whole("shortcut.kind matryoshka needs shortcut.dim, the dimensions to keep (e.g. 256)")
        if self.kind != "matryoshka" and self.dim is not None:
            raise _fail_whole(f"shortcut.dim is set but shortcut.kind is {self.kind}; remove dim or use matryoshka")
        return self


class JobConfig(BaseModel):
    """One re-embedding job."""

    model_config = ConfigDict(extra="forbid", strict=True)

    qdrant: QdrantConfig = Field(default_factory=QdrantConfig, description="Server connection.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="What to re-embed.")
    target: TargetConfig = Field(default_factory=TargetConfig, description="Where the new vectors go.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The new embedding model.")
    strategy: Strategy = Field(
        "new_collection",
        description="auto, new_collection, in_place, side_by_side or hybrid (README: Choosing a strategy).",
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Parallelism and flow control.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Resume state.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Request retries.")
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig, description="Unprocessable points.")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Checks before cutover.")
    sparse: SparseConfig = Field(default_factory=SparseConfig, description="hybrid: the sparse model.")
    shortcut: ShortcutConfig = Field(default_factory=ShortcutConfig, description="Vectors without a model run.")

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_case(cls, value: Any) -> Any:
        return _canonical(value, typing.get_args(Strategy), {"blue_green": "new_collection"})

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `pipeline:` with every line commented out parses as null; it means "all defaults", not an error.
        if isinstance(data, dict):
            return {k: ({} if v is None and k in _section_names() else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _resolve_target(self) -> "JobConfig":
        target, source = self.target, self.source
        explicit = target.model_fields_set
        # The target defaults name the example job's collections. An in-place job, or a job on another source,
        # that did not name them must not be sent to (or alias) a collection called articles_minilm.
        keep_example = self.strategy not in _IN_PLACE_CAPABLE and source.collection == _EXAMPLE_SOURCE
        if "collection" not in explicit and not keep_example:
            target.collection = None
        if "alias" not in explicit and not keep_example:
            target.alias = None
        if self.strategy == "new_collection":
            if target.collection is None:
                raise _fail_whole(
                    f"target.collection is required for strategy new_collection; set it, e.g. {source.collection}_v2"
                )
            if target.collection == source.collection:
                raise _fail_whole(
                    f"target.collection {target.collection!r} is the source collection; new_collection writes a new "
                    "one, pick another name or use strategy: in_place"
                )
        if self.strategy == "in_place" and target.collection not in (None, source.collection):
            raise _fail_whole(
                f"strategy in_place writes into source.collection {source.collection!r} but target.collection is "
                f"{target.collection!r}; remove target.collection or use strategy: new_collection"
            )
        if self.strategy == "hybrid" and ("vector_name" not in explicit
                                          or target.vector_name == target.sparse_vector_name):
            # Adding sparse search should not re-embed the dense vectors: a new dense vector only when named (and
            # target.vector_name equal to the sparse vector's name just names the sparse vector).
            target.vector_name = None
        if self.strategy == "hybrid":
            taken = {target.vector_name, source.vector_name, target.old_vector_name}
            if target.sparse_vector_name in taken:
                raise _fail_whole(
                    f"target.sparse_vector_name {target.sparse_vector_name!r} is already used by another vector of "
                    "the job; pick another name, e.g. bm25"
                )
            if self.shortcut.kind != "none":
                raise _fail_whole(
                    "shortcut is set with strategy hybrid; a sparse vector cannot be derived from dense ones, "
                    "remove the shortcut section"
                )
        if self.strategy in ("side_by_side", "hybrid") and target.vector_name == target.old_vector_name:
            raise _fail_whole(
                f"target.vector_name and target.old_vector_name are both {target.vector_name!r}; the old vector "
                "needs its own name in a side-by-side collection, change one"
            )
        if self.writes_in_place and not (self.strategy == "hybrid" and target.vector_name is None):
            if target.vector_name is None:
                raise _fail_whole(
                    f"strategy {self.strategy} adds a named vector to the source; set target.vector_name, e.g. dense_v2"
                )
            if target.vector_name == source.vector_name:
                raise _fail_whole(
                    f"target.vector_name {target.vector_name!r} is the existing source vector; in-place writes add a "
                    "new one, pick another name"
                )
        migrated = (source.collection, self.target_collection)
        if self.checkpoint.store == "qdrant" and self.checkpoint.collection in migrated:
            raise _fail_whole(
                f"checkpoint.collection {self.checkpoint.collection!r} is a collection the job migrates; "
                f"keep the default {tunables.CHECKPOINT_COLLECTION} or pick another name"
            )
        if target.alias is not None and target.alias == target.collection:
            raise _fail_whole(
                f"target.alias {target.alias!r} equals target.collection; an alias needs its own name, change one"
            )
        return self

    @property
    def writes_in_place(self) -> bool:
        """True when the new vectors go into the source collection (in_place, side_by_side/hybrid without a target)."""
        if self.strategy == "in_place":
            return True
        return self.strategy in _IN_PLACE_CAPABLE and self.target.collection in (None, self.source.collection)

    @property
    def target_collection(self) -> str | None:
        """The collection the job writes: the source for in-place writes, else target.collection (None only for
        strategy auto without a target, to be chosen by the planner)."""
        return self.source.collection if self.writes_in_place else self.target.collection

    def model_spec(self) -> dict[str, Any]:
        """The model section as a plain dict for engine.embed.build_embedder."""
        return self.model.model_dump(mode="python")

    def redacted(self) -> dict[str, Any]:
        """The whole config as plain JSON-able data, API key replaced by "***" (for logs, reports, checkpoints)."""
        data = self.model_dump(mode="json")
        data["qdrant"]["api_key"] = "***" if self.qdrant.api_key is not None else None
        return data


# --- loading ------------------------------------------------------------------------------------------------------

def _section_names() -> tuple[str, ...]:
    return tuple(k for k, f in JobConfig.model_fields.items() if _is_model(f.annotation))


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep the last one, hiding a typo'd override."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice (first on line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config: {path} does not exist; pass the path of a job config, e.g. configs/demo.yaml"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config: {path} is a directory; pass the path of a YAML job config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path} ({exc.strerror}); check the path and its permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"config: {path} is not valid YAML ({where}{problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config: {path} holds a {type(data).__name__} at the top level; it must be a mapping of sections "
            f"({', '.join(JobConfig.model_fields)})"
        )
    return data


def _parse_scalar(raw: str) -> Any:
    """A `--set` value as YAML reads a scalar; anything YAML would turn into a structure or a date stays text."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            return raw
        return value
    return raw


def _apply_override(data: dict[str, Any], item: str, origins: dict[str, str]) -> None:
    if "=" not in item:
        raise ConfigError(f"config: --set {item!r} needs key=value; write it like --set pipeline.shards=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"config: --set {item!r} has an empty key part; write dotted keys like pipeline.shards")
    node = data
    for i, part in enumerate(parts[:-1]):
        _, info = _field_at(parts[: i + 1])
        if info is not None and not _is_model(info.annotation):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"config: --set {key}: {where} is a value, not a section; write --set {where}=...")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"config: --set {key}: {where} is not a section; set {where} itself (--set {where}=...)")
        node = child
    # A key like 0123 or 1e5 must stay the text the user typed.
    node[parts[-1]] = raw if key in _SECRET_KEYS and raw != "null" else _parse_scalar(raw)
    origins[key] = "--set"


def _apply_env(data: dict[str, Any], env: Mapping[str, str], origins: dict[str, str]) -> None:
    for var, key in ((ENV_URL, "url"), (ENV_API_KEY, "api_key"), (ENV_GRPC_PORT, "grpc_port")):
        value = env.get(var)
        if value:  # an empty variable is a cleared one, not an empty URL
            section = data.get("qdrant")
            if section is None:
                section = data["qdrant"] = {}
            elif not isinstance(section, dict):
                continue  # validation reports the malformed section
            if key == "grpc_port":
                if not value.strip().isdigit():
                    raise ConfigError(f"config: {var}={value!r} is not a port number; set it like {var}=6334")
                section[key] = int(value)
            else:
                section[key] = value
            origins[f"qdrant.{key}"] = var


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> JobConfig:
    """Read a job config: the YAML at `path` (None: start from defaults), QDRANT_URL / QDRANT_API_KEY from `env`
    (None: os.environ), then `--set key=value` overrides. Raises ConfigError with one line on any problem."""
    data = _read_yaml(Path(path)) if path is not None else {}
    return _build(data, overrides, env, source=str(path) if path is not None else None)


def config_from_dict(
    data: Mapping[str, Any], overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> JobConfig:
    """Same as load_config for an already-parsed mapping."""
    return _build(_deep_copy(data), overrides, env, source=None)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _build(
    data: dict[str, Any], overrides: Sequence[str], env: Mapping[str, str] | None, source: str | None
) -> JobConfig:
    if isinstance(overrides, str):  # a lone "--set" value passed without a list would be split into characters
        overrides = (overrides,)
    origins: dict[str, str] = {}
    _apply_env(data, os.environ if env is None else env, origins)
    for item in overrides:
        _apply_override(data, item, origins)
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        # `from None`: the chained ValidationError would print the raw input, API key included.
        raise ConfigError(_describe(exc, origins)) from None
    log.debug("config%s: %s", f" {source}" if source else "", config.redacted())
    return config


# --- error messages -----------------------------------------------------------------------------------------------


def _field_at(loc: Sequence[Any]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last element of `loc`, and that field's FieldInfo."""
    model: type[BaseModel] | None = JobConfig
    info: FieldInfo | None = None
    for i, part in enumerate(loc):
        if model is None or part not in model.model_fields:
            return (model if i == len(loc) - 1 else None), None
        info = model.model_fields[part]
        if i == len(loc) - 1:
            return model, info
        model = info.annotation if _is_model(info.annotation) else None
    return model, info


def _bounds(info: FieldInfo | None) -> tuple[Any, Any, bool, bool]:
    low: Any = None
    high: Any = None
    low_open = high_open = False
    for meta in info.metadata if info else ():
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            low, low_open = meta.gt, True
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
        elif isinstance(meta, annotated_types.Lt):
            high, high_open = meta.lt, True
    return low, high, low_open, high_open


def _range_text(info: FieldInfo | None) -> str:
    low, high, low_open, high_open = _bounds(info)
    if low is not None and high is not None:
        if low_open:
            return f"above {low} and at most {high}"
        return f"between {low} and {high}"
    if low is not None:
        return f"above {low}" if low_open else f"at least {low}"
    if high is not None:
        return f"below {high}" if high_open else f"at most {high}"
    return ""


def _show(path: str, value: Any) -> str:
    if path in _SECRET_KEYS:
        return path
    if isinstance(value, str):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"{path}={shown!r}"
    if isinstance(value, (dict, list)):
        return f"{path} (a {type(value).__name__})"
    return f"{path}={value!r}" if value is not None else f"{path}=null"


def _expected(info: FieldInfo | None) -> str:
    args = getattr(info.annotation, "__args__", ()) if info else ()
    choices = [a for a in args if isinstance(a, str)]
    return ", ".join(choices)


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    message = _describe_one(first)
    path = ".".join(str(p) for p in first["loc"])
    origin = origins.get(path)
    if origin is None and first["type"] == "extra_forbidden":  # --set pipline.shards=4 fails at 'pipline'
        origin = next((o for k, o in origins.items() if k.startswith(path + ".")), None)
    if origin:
        message += f" (from {origin})"
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}]"
    return "config: " + message


def _describe_one(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    path = ".".join(str(p) for p in loc)
    model, info = _field_at(loc)
    shown = _show(path, value)

    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        valid = list(model.model_fields) if model is not None else []
        where = f"in {parent}" if parent else "(top level)"
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return f"unknown key {str(loc[-1])!r} {where}; {hint}valid keys: {', '.join(valid)}"
    if kind == "reembed_model":
        return str(err["msg"])
    if kind == "reembed_field":
        return f"{shown} {err['msg']}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        extra = info.json_schema_extra if info and isinstance(info.json_schema_extra, dict) else {}
        reason = f"{extra['reason']}, " if extra.get("reason") else ""
        return f"{shown} is out of range; {reason}set it {_range_text(info)}"
    if value is None and kind.endswith("_type"):
        return f"{path} cannot be null; set a value or delete the line to use the default"
    if kind in ("model_type", "dict_type"):
        return f"{shown} is not a section; write it as a mapping, e.g. {path}: {{key: value}}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        rng = _range_text(info)
        return f"{shown} is not a whole number; set an integer{' ' + rng if rng else ''}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        rng = _range_text(info)
        return f"{shown} is not a number; set a number{' ' + rng if rng else ''}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{shown} is not a boolean; use true or false"
    if kind == "string_type":
        if path in _SECRET_KEYS:
            return f"{path} is not a string; quote it in the YAML or pass it in {ENV_API_KEY}"
        fix = f"quote it: {path}: \"{value}\"" if isinstance(value, (int, float, bool)) else "set it to text"
        return f"{shown} is not a string; {fix}"
    if kind == "literal_error":
        choices = _expected(info) or err.get("ctx", {}).get("expected", "")
        return f"{shown} is not one of the choices; use one of {choices}"
    return f"{shown}: {err['msg']}; fix this value"
