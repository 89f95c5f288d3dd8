"""What every job command shares on the command line: the job config and its `--set` overrides."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from engine.config import JobConfig, load_config


def load(args: argparse.Namespace) -> JobConfig:
    """The job config of a parsed command line (file, environment, then --set)."""
    return load_config(args.config, overrides=args.set or ())


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="job YAML (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pipeline.shards=16 (repeatable)")


def job_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """The parser of a job command `name` (its --config and --set added), run by `func`; the caller adds the
    command's own options to it."""
    p = sub.add_parser(name, help=help)
    config_args(p)
    p.set_defaults(func=func)
    return p
