"""The command-line entry points, one module per command; installed as ``pipeline.commands`` (pyproject.toml)."""
