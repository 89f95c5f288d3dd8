"""Example job configs, one per strategy and the demo; shipped as the package `engine.configs` (see pyproject.toml)."""
