"""The demo corpus: stdlib docstrings, deterministic, clean, with labelled demo queries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.app import demo_corpus
from engine.app.demo_corpus import demo_queries, demo_relevance, stdlib_passages


@pytest.fixture(scope="module")
def passages() -> list[dict]:
    return stdlib_passages()


def test_deterministic_across_calls_and_processes(passages: list[dict]) -> None:
    assert stdlib_passages() == passages
    # A fresh interpreter that first loads libraries known to patch the stdlib gets the same corpus.
    code = (
        "import json, sys, ray, transformers  # ray replaces inspect.isgenerator, transformers extends Logger\n"
        "from engine.app.demo_corpus import stdlib_passages\n"
        "json.dump(stdlib_passages(), sys.stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120).stdout
    assert json.loads(out) == passages


def test_count_and_shape(passages: list[dict]) -> None:
    assert len(passages) >= 3000
    assert [p["id"] for p in passages] == list(range(1, len(passages) + 1))
    assert all(set(p) == {"id", "module", "title", "text"} for p in passages)
    assert len({p["text"] for p in passages}) == len(passages)
    assert len({p["title"] for p in passages}) == len(passages)
    keys = [(p["module"], p["title"]) for p in passages]
    assert keys == sorted(keys)
    assert len({p["module"] for p in passages}) >= 150


def test_texts_are_clean_and_bounded(passages: list[dict]) -> None:
    for p in passages:
        text = p["text"]
        assert text.strip() == text and 80 <= len(text) <= 1500, p["title"]
        assert p["title"] == p["module"] or p["title"].startswith(p["module"] + "."), p["title"]
        assert not p["title"].split(".")[-1].startswith("_") or p["title"].endswith("__"), p["title"]


def test_nothing_from_excluded_modules(passages: list[dict]) -> None:
    banned = ("this", "antigravity", "tkinter", "turtle", "idlelib", "webbrowser", "curses")
    assert not [p for p in passages if p["module"].split(".")[0] in banned]
    assert not set(banned) & {m.split(".")[0] for m in demo_corpus.MODULES}


def test_long_docstrings_cut_on_a_boundary() -> None:
    paragraphs = "First paragraph sentence. " * 20 + "\n\n" + "Second one goes on and on. " * 40
    cut = demo_corpus._clean(paragraphs, 600)
    assert cut == ("First paragraph sentence. " * 20).strip()
    sentences = "A sentence of some length here. " * 60
    cut = demo_corpus._clean(sentences, 500)
    assert cut is not None and len(cut) <= 500 and cut.endswith(".")
    assert demo_corpus._clean("    Indented\n    docstring text.\n", 100) == "Indented\ndocstring text."
    assert demo_corpus._clean(None, 100) is None


def test_length_bounds_are_applied() -> None:
    short = stdlib_passages(min_chars=200, max_chars=400)
    assert short and all(200 <= len(p["text"]) <= 400 for p in short)
    with pytest.raises(ValueError):
        stdlib_passages(min_chars=500, max_chars=100)
    with pytest.raises(ValueError):
        stdlib_passages(limit=-1)


def test_limit_spreads_and_keeps_query_answers(passages: list[dict]) -> None:
    small = stdlib_passages(limit=300)
    assert len(small) == 300
    assert [p["id"] for p in small] == list(range(1, 301))
    full = {(p["module"], p["title"], p["text"]) for p in passages}
    assert all((p["module"], p["title"], p["text"]) in full for p in small)
    titles = {p["title"] for p in small}
    assert {t for ts in demo_relevance().values() for t in ts} <= titles
    assert len({p["module"] for p in small}) >= 100  # a spread, not the first modules alphabetically
    rows = [(p["module"], p["title"], p["text"]) for p in passages]
    assert demo_corpus._spread(rows, 300) == [(p["module"], p["title"], p["text"]) for p in small]
    assert demo_corpus._spread(rows, 0) == []
    assert stdlib_passages(limit=0) == []


def test_demo_queries_have_answers_in_the_corpus(passages: list[dict]) -> None:
    queries = demo_queries()
    assert 6 <= len(queries) <= 10 and len(set(queries)) == len(queries)
    assert "how do I parse a JSON string into Python objects" in queries
    labels = demo_relevance()
    assert list(labels) == queries
    titles = {p["title"] for p in passages}
    for query, answers in labels.items():
        assert answers, query
        missing = [t for t in answers if t not in titles]
        assert not missing, f"{query!r}: {missing} not in the corpus"
