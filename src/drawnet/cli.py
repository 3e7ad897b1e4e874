"""The ``drawnet`` command line: a thin shell over the library.

Each subcommand lives in its own module under :mod:`drawnet.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Modules are discovered, so adding a command is adding a
file (modules whose name starts with an underscore are shared helpers).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drawnet",
        description="DRAW: a recurrent neural network for image generation (arXiv:1502.04623).",
    )
    parser.add_argument("--version", action="version", version=f"drawnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers shared by the commands, not commands
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from .rundir import RunInUse

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RunInUse) as err:
        # Library errors are written to be read by a person: print them without a traceback.
        print(f"drawnet: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that cannot be written: one line, the file named
        where = f": {err.filename}" if err.filename else ""
        print(f"drawnet: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
