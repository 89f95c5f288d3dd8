"""`reembed ...` (also `python -m engine ...`).

Each subcommand lives with the code it drives; this module only builds the parser and turns ReembedError into a
one-line message and the documented exit code (2: bad input or failed precondition, 1: the run failed).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from engine.errors import ReembedError

# Modules that each expose `register(subparsers)`; every subparser sets `func(args) -> int`.
COMMAND_MODULES = (
    "engine.embedded.cli",
    "engine.app.commands",
    "engine.app.verify_cmd",
    "engine.app.plan_cmd",
    "engine.app.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reembed", description="Re-embed a Qdrant collection with a new model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            # A command that silently vanished from --help would hide a broken install.
            why = str(exc).splitlines()[0] if str(exc) else ""
            raise ReembedError(
                f"the command module {name} cannot be imported ({type(exc).__name__}: {why}); reinstall reembed "
                "(pip install the wheel, or pip install -e . in a checkout) so every module and dependency is there"
            ) from None
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ReembedError as exc:
        print(f"reembed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except ReembedError as exc:
        print(f"reembed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("reembed: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
