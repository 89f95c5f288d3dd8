"""Fixtures of the chaos tier."""

from tests.ray_fixture import ray_local  # noqa: F401  (a fixture, used by name)
