"""The job configuration: schema, one-line errors, environment and --set overrides, secrets, shipped examples."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from engine.config import JobConfig, config_from_dict, load_config
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-KEY-do-not-print"


def _error(data: dict, overrides: tuple[str, ...] = (), env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, overrides, env={} if env is None else env)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in message, message
    assert message.startswith("config: "), message
    return message


# (data, --set overrides, fragments the one-line message must contain: the key, and the fix)
BAD = [
    pytest.param({"pipline": {}}, (),
                 ["unknown key 'pipline' (top level)", "did you mean 'pipeline'",
                  "valid keys: qdrant, source, target, model, strategy, pipeline"], id="unknown-top"),
    pytest.param({"pipeline": {"shard": 2}}, (), ["unknown key 'shard' in pipeline", "did you mean 'shards'"],
                 id="unknown-nested"),
    pytest.param({"model": {"nmae": "x"}}, (), ["unknown key 'nmae' in model", "'name'"], id="unknown-model-key"),
    pytest.param({"pipeline": {"upload_batch": 1000}}, (),
                 ["pipeline.upload_batch=1000 is out of range; Qdrant guidance is 64–256 points per request, "
                  "set it between 64 and 256"], id="upload-batch-range"),
    pytest.param({"pipeline": {"scroll_page": 8}}, (), ["pipeline.scroll_page=8", "between 16 and 8192"],
                 id="scroll-page-range"),
    pytest.param({"pipeline": {"shards": 0}}, (), ["pipeline.shards=0", "between 1 and 4096"], id="shards-range"),
    pytest.param({"pipeline": {"max_request_bytes": 32 * 2**20}}, (), ["pipeline.max_request_bytes", "32 MiB"],
                 id="request-bytes"),
    pytest.param({"pipeline": {"shards": "8"}}, (), ["pipeline.shards='8' is not a whole number"], id="int-as-text"),
    pytest.param({"pipeline": {"shards": 2.5}}, (), ["pipeline.shards=2.5 is not a whole number"], id="int-as-float"),
    pytest.param({"pipeline": {"shards": True}}, (), ["pipeline.shards=True is not a whole number"], id="int-as-bool"),
    pytest.param({"pipeline": {"embed_gpus_per_actor": 1.5}}, (), ["pipeline.embed_gpus_per_actor=1.5", "0.5, 1, 2"],
                 id="gpu-fraction"),
    pytest.param({"pipeline": 3}, (), ["pipeline=3 is not a section"], id="section-not-mapping"),
    pytest.param({"model": {"normalize": "yes please"}}, (), ["model.normalize='yes please' is not a boolean",
                                                              "true or false"], id="bool"),
    pytest.param({"model": {"name": ""}}, (), ["model.name='' is empty"], id="model-name-empty"),
    pytest.param({"model": {"pooling": "median"}}, (), ["model.pooling='median'", "mean", "cls"], id="pooling"),
    pytest.param({"model": {"dtype": "int8"}}, (), ["model.dtype='int8'", "bfloat16"], id="dtype"),
    pytest.param({"model": {"device": "gpu"}}, (), ["model.device='gpu' is not a device", "cuda:N"], id="device"),
    pytest.param({"model": {"max_length": 0}}, (), ["model.max_length=0", "between 1 and"], id="max-length"),
    pytest.param({"strategy": "yolo"}, (), ["strategy='yolo'", "new_collection, in_place"], id="strategy"),
    pytest.param({"strategy": None}, (), ["strategy=null", "new_collection"], id="strategy-null"),
    pytest.param({"qdrant": {"url": "localhost:6333"}}, (), ["qdrant.url='localhost:6333' has no scheme",
                                                             "http://localhost:6333"], id="url-no-scheme"),
    pytest.param({"qdrant": {"url": "grpc://h"}}, (), ["qdrant.url='grpc://h' has scheme 'grpc'", "https://"],
                 id="url-scheme"),
    pytest.param({"qdrant": {"url": "http://h/some/path"}}, (), ["qdrant.url", "remove everything after the host"],
                 id="url-path"),
    pytest.param({"qdrant": {"url": "http://h:port"}}, (), ["qdrant.url='http://h:port' is not a valid URL"],
                 id="url-bad-port"),
    pytest.param({"qdrant": {"grpc_port": 70000}}, (), ["qdrant.grpc_port=70000", "between 1 and 65535"], id="port"),
    pytest.param({"qdrant": {"url": "http://h", "tls_ca_cert": "/ca.pem"}}, (),
                 ["qdrant.tls_ca_cert is set", "https://"], id="ca-without-tls"),
    pytest.param({"source": {"collection": "a/b"}}, (), ["source.collection='a/b' contains '/'"], id="name-slash"),
    pytest.param({"source": {"collection": ""}}, (), ["source.collection='' is empty"], id="name-empty"),
    pytest.param({"source": {"collection": "x" * 256}}, (), ["source.collection=", "at most 255"], id="name-long"),
    pytest.param({"source": {"collection": 2024}}, (), ["source.collection=2024 is not a string", "quote it"],
                 id="name-number"),
    pytest.param({"source": {"text_field": "body", "text_template": "{title}"}}, (),
                 ["source.text_field and source.text_template are both set"], id="text-both"),
    pytest.param({"source": {"text_field": None}}, (), ["source has no text", "source.text_field"], id="text-none"),
    pytest.param({"source": {"text_field": "doc..body"}}, (), ["source.text_field='doc..body' is not a dot path"],
                 id="text-field-path"),
    pytest.param({"source": {"text_template": "{} and {}"}}, (), ["source.text_template", "positional"],
                 id="template-positional"),
    pytest.param({"source": {"text_template": "{title!r}"}}, (), ["source.text_template", "format syntax"],
                 id="template-conversion"),
    pytest.param({"source": {"text_template": "no fields"}}, (), ["source.text_template", "has no {field}"],
                 id="template-empty"),
    pytest.param({"source": {"text_template": "{title"}}, (), ["source.text_template", "not a valid template"],
                 id="template-syntax"),
    pytest.param({"target": {"collection": "articles"}}, (), ["target.collection 'articles' is the source collection"],
                 id="target-is-source"),
    pytest.param({"target": {"collection": None}}, (), ["target.collection is required for strategy new_collection"],
                 id="target-missing"),
    pytest.param({"source": {"collection": "products"}}, (),
                 ["target.collection is required for strategy new_collection", "products_v2"], id="target-not-example"),
    pytest.param({"target": {"alias": "articles_minilm"}}, (),
                 ["target.alias 'articles_minilm' equals target.collection"], id="alias-is-target"),
    pytest.param({"target": {"distance": "hamming"}}, (),
                 ["target.distance='hamming'", "Cosine, Dot, Euclid, Manhattan"], id="distance"),
    pytest.param({"target": {"hnsw_ef_construct": 2}}, (), ["target.hnsw_ef_construct=2", "at least 4"],
                 id="ef-construct"),
    pytest.param({"target": {"on_disk": "no"}}, (), ["target.on_disk='no' is not a boolean"], id="on-disk"),
    pytest.param({"strategy": "in_place", "target": {"collection": "elsewhere"}}, (),
                 ["strategy in_place writes into source.collection", "remove target.collection"], id="in-place-target"),
    pytest.param({"strategy": "in_place", "source": {"vector_name": "dense"}}, (),
                 ["target.vector_name 'dense' is the existing source vector"], id="in-place-same-vector"),
    pytest.param({"strategy": "in_place", "target": {"vector_name": None}}, (),
                 ["strategy in_place adds a named vector", "set target.vector_name"], id="in-place-unnamed"),
    pytest.param({"checkpoint": {"store": "uri"}}, (), ["checkpoint.store is uri but checkpoint.uri is not set"],
                 id="checkpoint-uri-missing"),
    pytest.param({"checkpoint": {"uri": "/tmp/x"}}, (), ["checkpoint.uri is set but checkpoint.store is qdrant"],
                 id="checkpoint-uri-unused"),
    pytest.param({"checkpoint": {"store": "uri", "uri": "ftp://h/x"}}, (), ["checkpoint.uri", "scheme 'ftp'", "s3://"],
                 id="checkpoint-scheme"),
    pytest.param({"checkpoint": {"store": "sqlite"}}, (), ["checkpoint.store='sqlite'", "qdrant, uri"],
                 id="checkpoint-store"),
    pytest.param({"checkpoint": {"collection": "articles"}}, (), ["checkpoint.collection 'articles'", "_reembed"],
                 id="checkpoint-collides"),
    pytest.param({"retry": {"base_delay_s": 5, "max_delay_s": 1}}, (),
                 ["retry.max_delay_s=1 is below retry.base_delay_s=5"], id="retry-order"),
    pytest.param({"retry": {"max_attempts": 0}}, (), ["retry.max_attempts=0", "between 1 and 100"], id="attempts"),
    pytest.param({"dead_letter": {"dir": ""}}, (), ["dead_letter.dir='' is empty"], id="dead-letter"),
    pytest.param({"verify": {"min_cosine": 1.5}}, (), ["verify.min_cosine=1.5", "above 0 and at most 1"], id="cosine"),
    pytest.param({"verify": {"min_hnsw_recall": 0}}, (), ["verify.min_hnsw_recall=0", "Qdrant guidance is 0.95"],
                 id="recall"),
    pytest.param({}, ("pipline.shards=4",), ["unknown key 'pipline' (top level)", "(from --set)"], id="set-unknown"),
    pytest.param({}, ("pipeline.shards=0",), ["pipeline.shards=0", "(from --set)"], id="set-range"),
    pytest.param({}, ("pipeline.shards",), ["--set 'pipeline.shards' needs key=value"], id="set-no-equals"),
    pytest.param({}, ("pipeline..shards=1",), ["empty key part"], id="set-empty-part"),
    pytest.param({}, ("strategy.name=x",), ["strategy is a value, not a section"], id="set-into-value"),
]


@pytest.mark.parametrize(("data", "overrides", "fragments"), BAD)
def test_bad_input_is_one_line_naming_key_and_fix(data: dict, overrides: tuple, fragments: list[str]) -> None:
    message = _error(data, overrides)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_several_problems_still_one_line() -> None:
    message = _error({"pipeline": {"shards": 0, "scroll_page": 1}})
    assert "pipeline.shards=0" in message and "[and 1 more problem]" in message


def test_defaults_follow_the_schema() -> None:
    cfg = config_from_dict({}, env={})
    assert cfg.qdrant.endpoint() == ("127.0.0.1", 6334, False)
    assert (cfg.source.collection, cfg.source.text_field, cfg.source.vector_name) == ("articles", "text", None)
    assert (cfg.target.collection, cfg.target.alias, cfg.target.vector_name) == ("articles_minilm", "articles", "dense")
    assert cfg.strategy == "new_collection" and cfg.target_collection == "articles_minilm"
    assert (cfg.pipeline.shards, cfg.pipeline.scroll_page, cfg.pipeline.upload_batch) == (8, 1024, 256)
    assert cfg.pipeline.checkpoint_interval_s == 1.0
    assert cfg.pipeline.max_request_bytes == 8 * 1024 * 1024
    assert (cfg.checkpoint.store, cfg.checkpoint.collection) == ("qdrant", "_reembed")
    assert (cfg.retry.max_attempts, cfg.retry.deadline_s) == (8, 300)
    assert (cfg.verify.sample, cfg.verify.min_cosine, cfg.verify.min_hnsw_recall) == (1000, 0.999, 0.95)


def test_model_spec_is_a_plain_dict_with_the_embedder_keys() -> None:
    cfg = config_from_dict({"model": {"dtype": "bf16", "pooling": "CLS", "prefix": "passage: "}}, env={})
    spec = cfg.model_spec()
    assert set(spec) == {"kind", "name", "revision", "max_length", "pooling", "normalize", "dtype", "device",
                         "matryoshka_dim", "token_budget", "max_batch", "compile", "prefix", "threads"}
    assert (spec["dtype"], spec["pooling"], spec["prefix"]) == ("bfloat16", "cls", "passage: ")
    assert all(v is None or isinstance(v, (str, int, bool)) for v in spec.values())


def test_model_kind_late_interaction_loads_and_a_bad_kind_fails_in_one_line() -> None:
    cfg = config_from_dict({"model": {"kind": "late_interaction", "name": "/models/colbertv2.0"}}, env={})
    assert cfg.model.kind == "late_interaction" and cfg.model_spec()["kind"] == "late_interaction"
    assert config_from_dict({}, env={}).model.kind == "dense"
    message = _error({"model": {"kind": "colbert"}})
    assert "model.kind='colbert'" in message and "dense, late_interaction" in message


def test_env_overrides_file_values() -> None:
    cfg = config_from_dict(
        {"qdrant": {"url": "http://file-host", "api_key": "from-file"}},
        env={"QDRANT_URL": "https://env-host.example:6333", "QDRANT_API_KEY": SECRET},
    )
    assert cfg.qdrant.endpoint() == ("env-host.example", 6334, True)
    assert cfg.qdrant.api_key_value() == SECRET


def test_empty_env_values_are_ignored() -> None:
    cfg = config_from_dict({"qdrant": {"url": "http://file-host"}}, env={"QDRANT_URL": "", "QDRANT_API_KEY": ""})
    assert cfg.qdrant.endpoint()[0] == "file-host" and cfg.qdrant.api_key is None


def test_env_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "https://from-environ")
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    assert load_config(None).qdrant.endpoint() == ("from-environ", 6334, True)


def test_bad_env_value_names_its_origin() -> None:
    message = _error({}, env={"QDRANT_URL": "qdrant.internal"})
    assert "qdrant.url='qdrant.internal' has no scheme" in message and "(from QDRANT_URL)" in message


def test_set_overrides_on_top_of_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("pipeline:\n  shards: 16\nmodel:\n  normalize: true\nqdrant:\n  url: http://file\n")
    cfg = load_config(
        path,
        overrides=["pipeline.shards=4", "model.normalize=false", "target.alias=null", "qdrant.url=http://cli:6333",
                   "model.prefix=query: ", "retry.base_delay_s=0.5", "model.revision=main"],
        env={"QDRANT_URL": "http://env"},
    )
    assert cfg.pipeline.shards == 4
    assert cfg.model.normalize is False
    assert cfg.target.alias is None
    assert cfg.qdrant.endpoint()[0] == "cli"
    assert cfg.model.prefix == "query: "  # YAML would read a mapping; a value that is not a scalar stays text
    assert cfg.retry.base_delay_s == 0.5
    assert cfg.model.revision == "main"


def test_set_creates_missing_sections_and_keeps_secret_text() -> None:
    cfg = config_from_dict({}, ["verify.sample=50", "qdrant.api_key=0123"], env={})
    assert cfg.verify.sample == 50
    assert cfg.qdrant.api_key_value() == "0123"  # not the integer 123


def test_config_from_dict_does_not_mutate_input() -> None:
    data = {"pipeline": {"shards": 2}}
    before = copy.deepcopy(data)
    config_from_dict(data, ["pipeline.shards=3"], env={"QDRANT_URL": "http://x"})
    assert data == before


def test_secret_never_printed() -> None:
    cfg = config_from_dict({"qdrant": {"api_key": SECRET}}, env={})
    assert cfg.qdrant.api_key_value() == SECRET
    assert cfg.redacted()["qdrant"]["api_key"] == "***"
    assert SECRET not in str(cfg.redacted())
    for text in (str(cfg), repr(cfg), repr(cfg.qdrant), str(cfg.qdrant), cfg.model_dump_json(), str(cfg.model_dump())):
        assert SECRET not in text
    assert config_from_dict({}, env={}).redacted()["qdrant"]["api_key"] is None


def test_secret_not_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"qdrant": {"api_key": 12345678}, "pipeline": {"shards": 0}}, env={})
    assert "12345678" not in str(info.value)
    # The pydantic error carries the raw input; it must not ride along as the cause.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    message = _error({"pipeline": {"shards": 0}}, env={"QDRANT_API_KEY": SECRET})
    assert SECRET not in message


def test_url_endpoint_ignores_rest_port_and_brackets_ipv6() -> None:
    cfg = config_from_dict({"qdrant": {"url": "https://xyz.cloud.qdrant.io:6333", "grpc_port": 6334}}, env={})
    assert cfg.qdrant.endpoint() == ("xyz.cloud.qdrant.io", 6334, True)
    assert cfg.qdrant.grpc_target() == "xyz.cloud.qdrant.io:6334"
    v6 = config_from_dict({"qdrant": {"url": "http://[::1]:6333"}}, env={})
    assert v6.qdrant.endpoint() == ("::1", 6334, False) and v6.qdrant.grpc_target() == "[::1]:6334"


def test_text_template_replaces_default_field() -> None:
    cfg = config_from_dict({"source": {"text_template": "{title}\n\n{doc.body} {title}"}}, env={})
    assert cfg.source.text_field is None
    assert cfg.source.template_fields() == ["title", "doc.body"]
    assert config_from_dict({"source": {"text_field": "doc.body"}}, env={}).source.template_fields() == ["doc.body"]


@pytest.mark.parametrize(
    ("data", "collection", "alias", "in_place"),
    [
        ({"strategy": "in_place"}, "articles", None, True),
        ({"strategy": "side_by_side"}, "articles", None, True),
        ({"strategy": "side_by_side", "target": {"collection": "articles_ab"}}, "articles_ab", None, False),
        ({"strategy": "hybrid", "source": {"collection": "docs", "vector_name": "dense"},
          "target": {"vector_name": "bm25"}}, "docs", None, True),
        ({"strategy": "auto", "source": {"collection": "docs"}}, None, None, False),
        ({"source": {"collection": "docs"}, "target": {"collection": "docs_v2"}}, "docs_v2", None, False),
        ({"source": {"collection": "docs"}, "target": {"collection": "docs_v2", "alias": "docs_live"}}, "docs_v2",
         "docs_live", False),
    ],
)
def test_target_collection_resolution(data: dict, collection: str | None, alias: str | None, in_place: bool) -> None:
    cfg = config_from_dict(data, env={})
    assert cfg.target_collection == collection
    assert cfg.target.alias == alias
    assert cfg.writes_in_place is in_place


def test_case_and_alias_spellings_are_normalised() -> None:
    cfg = config_from_dict(
        {"strategy": "New_Collection", "target": {"distance": "cosine"}, "model": {"dtype": "FP16", "device": "CUDA:0",
                                                                                  "pooling": "last"}},
        env={},
    )
    assert (cfg.strategy, cfg.target.distance) == ("new_collection", "Cosine")
    assert (cfg.model.dtype, cfg.model.device, cfg.model.pooling) == ("float16", "cuda:0", "lasttoken")


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("pipeline:\n  # shards: 4\nverify:\n")
    cfg = load_config(path, env={})
    assert cfg.pipeline.shards == 8 and cfg.verify.sample == 1000


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("pipeline:\n  shards: 4\n   scroll_page: 8\n", ["is not valid YAML (line 3:", "fix the syntax"]),
        ("pipeline: [1, 2\n", ["is not valid YAML (line", "fix the syntax"]),
        ("pipeline:\n  shards: 4\n  shards: 8\n", ["is not valid YAML (line 3:", "'shards' appears twice"]),
        ("- a\n- b\n", ["holds a list at the top level", "qdrant, source"]),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist; pass the path of a job config"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config(path, env={}) == config_from_dict({}, env={})


def test_redacted_round_trips_without_secret() -> None:
    cfg = config_from_dict({"source": {"collection": "docs"}, "target": {"collection": "docs_v2"}}, env={})
    again = JobConfig.model_validate(cfg.redacted())
    assert again.redacted() == cfg.redacted()


EXAMPLES = sorted((REPO / "configs").glob("*.yaml"))


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "new_collection.yaml", "cluster.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path, env={})
    assert cfg.target_collection and cfg.model.name
    assert cfg.redacted()["qdrant"]["api_key"] is None  # no example ships a key


def test_demo_config_describes_the_demo() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", env={})
    assert (cfg.source.collection, cfg.source.text_field) == ("stdlib_docs", "text")
    assert (cfg.target.collection, cfg.target.alias, cfg.target.vector_name) == (
        "stdlib_docs_minilm", "stdlib_docs_live", "dense")
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.pipeline.shards == 4 and cfg.strategy == "new_collection"


def test_cluster_config_takes_server_from_environment() -> None:
    cfg = load_config(REPO / "configs" / "cluster.yaml",
                      env={"QDRANT_URL": "https://prod.example:6333", "QDRANT_API_KEY": SECRET})
    assert cfg.qdrant.endpoint() == ("prod.example", 6334, True)
    assert cfg.qdrant.api_key_value() == SECRET and SECRET not in repr(cfg)
    assert cfg.model.dtype == "bfloat16" and cfg.checkpoint.store == "qdrant"


def test_api_key_whitespace_is_stripped_and_blank_is_none() -> None:
    assert config_from_dict({}, env={"QDRANT_API_KEY": f"{SECRET}\n"}).qdrant.api_key_value() == SECRET
    assert config_from_dict({"qdrant": {"api_key": "  "}}, env={}).qdrant.api_key is None


def test_endpoint_of_a_url_changed_after_loading_is_a_config_error() -> None:
    cfg = config_from_dict({}, env={})
    cfg.qdrant.url = "qdrant:6334"
    with pytest.raises(ConfigError, match="qdrant.url='qdrant:6334' has no scheme"):
        cfg.qdrant.endpoint()
