"""The ``conflux`` command line (``conflux.cli.main``) and its subcommands, one module each."""

from conflux.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
