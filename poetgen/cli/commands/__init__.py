"""The commands, one module per command group: each parses its options, calls the library and renders.
Importing this package registers them on the app, in the order `poetgen --help` lists them."""

# isort: off
from . import train, evaluate, sample, info, export, plot, check  # the commands, in --help order
from . import corpus, inspect  # the groups' commands
# isort: on

__all__ = ["check", "corpus", "evaluate", "export", "info", "inspect", "plot", "sample", "train"]
