"""The job configs the tests build: a mapping, a target collection where one is named, and `section<sep>key=value`
overrides (`model__name="hash:8"`), checked as a user's config is."""

from __future__ import annotations

from typing import Any, Mapping

from engine.config import JobConfig, config_from_dict


def job_config(data: dict, target: str | None = None, extra: Mapping[str, Any] | None = None, sep: str = "__") -> JobConfig:
    """`data` with target.collection set to `target` (when given) and each override of `extra` applied."""
    if target:
        data.setdefault("target", {})["collection"] = target
    for key, value in (extra or {}).items():
        section, _, name = key.partition(sep)
        data.setdefault(section, {})[name] = value
    return config_from_dict(data, env={})
