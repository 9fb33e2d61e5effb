"""The ``lvit`` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define ``register_cli(subparsers)``; each adds its subcommand with ``set_defaults(func=...)``.
_COMMAND_MODULES: tuple[str, ...] = (
    "lvit.report", "lvit.reproduce", "lvit.complexity", "lvit.engine.run", "lvit.data.cli",
    "lvit.evaluate", "lvit.depth",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
