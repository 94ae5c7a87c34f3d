"""The `bonsai-sd` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_info() -> int:
    from . import _core

    print(f"bonsai-sd {_core.__version__}")
    print(f"stable-diffusion.cpp {_core.sd_version} (commit {_core.sd_commit})")
    print(f"ggml {_core.ggml_version} (commit {_core.ggml_commit})")
    print(f"backends: {', '.join(_core.backends())}")
    print("types:")
    for row in _core.type_table():
        print(f"  {row['id']:>4}  {row['name']:<10} block {row['block_size']:>4}  {row['type_size']:>4} bytes")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    if args.file is None:
        return _build_info()
    from .fileinfo import describe_file
    from .ggufio import GGUFError

    try:
        print(describe_file(args.file))
    except (GGUFError, OSError) as e:
        print(f"bonsai-sd info: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai-sd", description="Ternary and binary image models in stable-diffusion.cpp")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="show a GGUF file's tensors and metadata, or (without FILE) this build: "
                                       "versions, backends and the ggml type table")
    info.add_argument("file", nargs="?", metavar="FILE", help="a GGUF file")
    info.set_defaults(func=_cmd_info)
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
