"""The demo's corpus: real English text available offline, the docstrings of Python's standard library.

Each passage is one documented module, class, function or method of a fixed list of side-effect-free modules.
The walk runs in a fresh `python -I -S` interpreter: libraries loaded into the calling process patch the standard
library (transformers adds methods to logging.Logger, a Cython shim replaces inspect.isgenerator), and the corpus
must not depend on who asks. So the output depends only on the Python version and platform: the seeding process,
a resumed job and a verifier in a Ray worker all see the same ids and texts.

This module imports nothing outside the standard library, so the fresh interpreter can run it by path.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import re
import subprocess
import sys
import time
import types
import warnings
from typing import Any, Iterator

log = logging.getLogger(__name__)

# Importable without side effects on every supported Python (3.10+): no GUI, no printing on import, nothing that
# opens a socket or starts a thread. Modules removed in 3.12/3.13 are left out so the list keeps working; the few
# newer ones are tried and skipped where absent.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "asyncio.base_events", "asyncio.events", "asyncio.selector_events",
    "asyncio.unix_events", "atexit", "base64", "bdb", "binascii", "bisect", "builtins", "bz2", "calendar", "cmath",
    "cmd", "code", "codecs", "codeop", "collections", "collections.abc", "colorsys", "compileall", "concurrent.futures",
    "concurrent.futures.process", "concurrent.futures.thread", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "cProfile", "csv", "ctypes", "ctypes.util", "dataclasses", "datetime", "dbm", "decimal", "difflib",
    "dis", "doctest", "email", "email.base64mime", "email.charset", "email.contentmanager", "email.encoders",
    "email.errors", "email.feedparser", "email.generator", "email.header", "email.headerregistry", "email.iterators",
    "email.message", "email.mime.application", "email.mime.base", "email.mime.multipart", "email.mime.text",
    "email.parser", "email.policy", "email.quoprimime", "email.utils", "encodings", "encodings.idna",
    "encodings.punycode", "enum", "errno", "faulthandler", "fcntl", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "gc", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib", "grp", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "imaplib", "importlib", "importlib.abc", "importlib.machinery", "importlib.metadata",
    "importlib.resources", "importlib.util", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config", "logging.handlers", "lzma",
    "mailbox", "marshal", "math", "mimetypes", "mmap", "modulefinder", "multiprocessing", "multiprocessing.connection",
    "multiprocessing.context", "multiprocessing.managers", "multiprocessing.pool", "multiprocessing.process",
    "multiprocessing.queues", "multiprocessing.shared_memory", "multiprocessing.sharedctypes",
    "multiprocessing.synchronize", "multiprocessing.util", "netrc", "ntpath", "nturl2path", "numbers", "opcode",
    "operator", "optparse", "os", "os.path", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform",
    "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "pty", "pwd", "py_compile", "pyclbr", "pydoc",
    "queue", "quopri", "random", "re", "reprlib", "resource", "runpy", "sched", "secrets", "select", "selectors",
    "shelve", "shlex", "shutil", "signal", "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat",
    "statistics", "string", "stringprep", "struct", "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "termios", "textwrap", "threading", "time", "timeit", "token", "tokenize", "tomllib", "trace",
    "traceback", "tracemalloc", "types", "typing", "unicodedata", "unittest", "unittest.mock", "urllib.error",
    "urllib.parse", "urllib.request", "urllib.robotparser", "uuid", "venv", "warnings", "wave", "weakref", "wsgiref",
    "wsgiref.handlers", "wsgiref.headers", "wsgiref.simple_server", "wsgiref.util", "wsgiref.validate", "xml",
    "xml.dom", "xml.dom.expatbuilder", "xml.dom.minidom", "xml.dom.pulldom", "xml.dom.xmlbuilder",
    "xml.etree.ElementInclude", "xml.etree.ElementTree", "xml.parsers.expat", "xml.sax", "xml.sax.expatreader",
    "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp", "zipfile",
    "zipimport", "zlib", "zoneinfo",
)

_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_WALK_TIMEOUT_S = 120  # the walk takes well under a second; this only bounds a wedged interpreter

# Query -> titles of the passages a reader would call the right answer. Every title exists in the corpus on each
# supported Python version (the unit test checks this one); the demo can use them as labels for recall@k / MRR.
_QUERIES: dict[str, tuple[str, ...]] = {
    "how do I parse a JSON string into Python objects": ("json.loads", "json.load", "json.JSONDecoder.decode"),
    "read a compressed gzip file": ("gzip.open", "gzip.GzipFile"),
    "get the current date and time": ("datetime.datetime.now", "time.time", "time.ctime"),
    "sort a list of dictionaries by a key": ("builtins.sorted", "builtins.list.sort", "operator.itemgetter"),
    "spawn a subprocess and capture its output": (
        "subprocess.run", "subprocess.check_output", "subprocess.Popen.communicate",
    ),
    "compute a SHA-256 hash of bytes": ("hashlib", "hashlib.new"),
    "copy a whole directory tree to another place": ("shutil.copytree",),
    "find files whose names match a wildcard pattern": ("glob.glob", "glob.iglob", "fnmatch.fnmatch"),
}


def stdlib_passages(limit: int | None = None, min_chars: int = 80, max_chars: int = 1500) -> list[dict[str, Any]]:
    """Docstring passages `{"id", "module", "title", "text"}`, sorted by (module, title), ids 1..N.

    Texts are cleaned with inspect.cleandoc, cut at `max_chars` on a paragraph or sentence boundary, dropped when
    shorter than `min_chars`, and de-duplicated (the first in sorted order keeps a shared text). With `limit`, an
    even spread over the whole sorted list is kept, always including the passages that answer `demo_queries()`,
    so a small demo still spans the library and every query has its answer; ids are then 1..limit.
    """
    if min_chars < 1 or max_chars < min_chars:
        raise ValueError(f"need 1 <= min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if limit == 0:
        return []
    started = time.perf_counter()
    passages = _walk_isolated(min_chars, max_chars)
    available = len(passages)
    if limit is not None and limit < len(passages):
        passages = _spread(passages, limit)
    log.info(
        "demo corpus: %d passages (%d available) from %d stdlib modules in %.2f s",
        len(passages), available, len({m for m, _, _ in passages}), time.perf_counter() - started,
    )
    return [{"id": i, "module": m, "title": t, "text": x} for i, (m, t, x) in enumerate(passages, start=1)]


def demo_queries() -> list[str]:
    """Natural-language questions whose before/after search results a reader can judge at a glance."""
    return list(_QUERIES)


def demo_relevance() -> dict[str, list[str]]:
    """For each demo query, the passage titles that answer it (labels for recall@k / MRR in the demo)."""
    return {q: list(titles) for q, titles in _QUERIES.items()}


def _walk_isolated(min_chars: int, max_chars: int) -> list[tuple[str, str, str]]:
    # -I: no user site, no PYTHON* variables; -S: no site-packages and no .pth hooks; utf8: stdout is UTF-8.
    # The file is run by path, and the script directory / cwd entry is dropped where -I does not already (3.10),
    # so no module beside this one can shadow a stdlib module.
    code = (
        "import sys\n"
        "if not getattr(sys.flags, 'safe_path', False): sys.path.pop(0)\n"
        "import runpy\n"
        f"runpy.run_path({__file__!r}, run_name='reembed_demo_corpus')['_emit']({min_chars}, {max_chars})\n"
    )
    cmd = [sys.executable, "-I", "-S", "-X", "utf8", "-c", code]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=_WALK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(
            f"demo corpus: could not run {sys.executable} to read the stdlib docstrings ({exc})"
        ) from exc
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"demo corpus: reading the stdlib docstrings failed (exit {done.returncode}): {last[0]}")
    return [tuple(row) for row in json.loads(done.stdout.decode("utf-8"))]


def _emit(min_chars: int, max_chars: int) -> None:
    """Entry point of the isolated interpreter: the rows as JSON on stdout."""
    json.dump(_collect(min_chars, max_chars), sys.stdout, ensure_ascii=False)


def _collect(min_chars: int, max_chars: int) -> list[tuple[str, str, str]]:
    """The sorted, de-duplicated (module, title, text) rows of this interpreter."""
    seen: set[str] = set()
    rows: list[tuple[str, str, str]] = []
    for module, title, text in sorted(_walk(min_chars, max_chars), key=lambda r: (r[0], r[1])):
        if text not in seen:
            seen.add(text)
            rows.append((module, title, text))
    return rows


def _spread(passages: list[tuple[str, str, str]], limit: int) -> list[tuple[str, str, str]]:
    if limit == 0:
        return []
    wanted = {t for titles in _QUERIES.values() for t in titles}
    keep = set(sorted(i for i, (_, title, _) in enumerate(passages) if title in wanted)[:limit])
    rest = [i for i in range(len(passages)) if i not in keep]
    need = limit - len(keep)
    if need > 0:
        step = len(rest) / need
        keep.update(rest[int(k * step)] for k in range(need))
    return [passages[i] for i in sorted(keep)]


def _walk(min_chars: int, max_chars: int) -> Iterator[tuple[str, str, str]]:
    # Some modules warn about deprecated members on access; none of that is the demo's business, and nothing a
    # module might print may reach stdout, which carries the result.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue  # not on this Python or platform
            for title, obj in _members(name, module):
                text = _clean(inspect.getdoc(obj), max_chars)
                if text is not None and len(text) >= min_chars:
                    yield name, title, text


def _members(name: str, module: types.ModuleType) -> Iterator[tuple[str, Any]]:
    yield name, module
    # __all__ names whatever the module re-exports; the rest of its public names count when it defines them.
    listed = getattr(module, "__all__", None)
    listed = set(listed) if isinstance(listed, (list, tuple)) else set()
    for attr in sorted(set(dir(module)) | listed):
        if attr.startswith("_"):
            continue
        try:
            obj = getattr(module, attr)
        except AttributeError:
            continue
        if attr not in listed and not _defined_by(module, obj):
            continue
        if inspect.isclass(obj):
            yield f"{name}.{attr}", obj
            for member, value in sorted(vars(obj).items()):
                # Private helpers are skipped; documented special methods (__init__, __call__...) are public API.
                if member.startswith("_") and not (member.startswith("__") and member.endswith("__")):
                    continue
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if callable(value) or inspect.isdatadescriptor(value):
                    yield f"{name}.{attr}.{member}", value
        elif inspect.isroutine(obj):
            yield f"{name}.{attr}", obj


def _defined_by(module: types.ModuleType, obj: Any) -> bool:
    """Whether a module without __all__ owns `obj`: defined there, or in a private implementation module it
    re-exports (_ctypes, _frozen_importlib, xml.sax._exceptions). `import json` in a module must not make it a
    member of that module."""
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    return owner == module.__name__ or any(part.startswith("_") for part in owner.split(".")) or owner == "pyexpat"


def _clean(doc: str | None, max_chars: int) -> str | None:
    if not doc:
        return None
    text = inspect.cleandoc(doc).strip()
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    floor = max_chars // 2  # a cut that keeps less than half the budget wastes the passage
    paragraph = head.rfind("\n\n")
    if paragraph >= floor:
        return head[:paragraph].rstrip()
    sentences = [m.end() for m in _SENTENCE_END.finditer(head)]
    if sentences and sentences[-1] >= floor:
        return head[: sentences[-1]]
    space = head.rfind(" ")
    return (head[:space] if space >= floor else head).rstrip()

