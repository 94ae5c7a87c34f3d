"""The `bonsai-sd` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .generate_cli import add_generate_parser


def _build_info() -> int:
    from . import _core

    print(f"bonsai-sd {_core.__version__}")
    print(f"stable-diffusion.cpp {_core.sd_version} (commit {_core.sd_commit})")
    print(f"ggml {_core.ggml_version} (commit {_core.ggml_commit})")
    print(f"backends: {', '.join(_core.backends())}")
    print(f"devices: {', '.join(d['name'] + ' (' + d['description'] + ')' for d in _core.devices())}")
    print("types:")
    for row in _core.type_table():
        print(f"  {row['id']:>4}  {row['name']:<10} block {row['block_size']:>4}  {row['type_size']:>4} bytes")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    return _build_info()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai-sd", description="Ternary and binary image models in stable-diffusion.cpp")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="show this build: versions, backends and the ggml type table")
    info.set_defaults(func=_cmd_info)
    add_generate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"bonsai-sd {__version__}")
        sys.exit(0)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    sys.exit(args.func(args))
