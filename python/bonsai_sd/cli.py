"""The `bonsai-sd` command line.

Every failure is one line on stderr that names the file or parameter and the defect, with exit
status 1 (2 for a wrong command line, 130 after Ctrl-C); never a Python traceback. An exception
that no command expects is reported the same way, as an internal error to report
(BONSAI_SD_TRACEBACK=1 prints its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .bench import add_bench_parser
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
    if args.file is None:
        return _build_info()
    from .convert import ConvertError
    from .fileinfo import describe_file
    from .ggufio import GGUFError
    from .modelfiles import ModelFileError

    try:
        print(describe_file(args.file))
    except (GGUFError, ConvertError, ModelFileError, OSError) as e:
        print(f"bonsai-sd info: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import logging

    from .convert import ConvertError, convert
    from .modelfiles import ModelFileError

    logging.basicConfig(level=logging.INFO, format="bonsai-sd: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer's own chatter
    try:
        result = convert(args.src, args.output, quant_type=args.type, skip_type=args.skip_type, verify=args.verify,
                         from_format=args.from_format, component=args.component, progress=not args.quiet)
    except (ConvertError, ModelFileError, OSError) as e:
        print(f"bonsai-sd convert: {e}", file=sys.stderr)
        return 1
    if result.passed_through:
        print(f"{result.output}: copied unchanged ({result.n_bytes:,} bytes)")
        return 0
    kind = f", {result.lowbit_type}" if result.lowbit_type else ""
    print(f"{result.output}: {result.component}{kind}, {result.n_tensors} tensors, {result.n_bytes:,} bytes of "
          f"tensor data, {result.bits_per_weight:.4f} bits per weight, {'lossless' if result.lossless else 'LOSSY'}")
    if result.verify is not None:
        worst = max((c.max_abs_diff for c in result.verify.checks if c.lossless), default=0.0)
        lossy = [c for c in result.verify.checks if not c.lossless]
        print(f"verify: {len(result.verify.checks)} tensors, max abs diff {worst} on the lossless ones"
              + (f"; {len(lossy)} lossy tensors up to {max(c.max_abs_diff for c in lossy)}" if lossy else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai-sd", description="Ternary and binary image models in stable-diffusion.cpp")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="show a model file's tensors and metadata (GGUF, safetensors or PyTorch "
                                       "zip), or (without FILE) this build: versions, backends and the ggml "
                                       "type table")
    info.add_argument("file", nargs="?", metavar="FILE", help="a GGUF, safetensors or PyTorch zip (.pt) file")
    info.set_defaults(func=_cmd_info)

    from .convert import COMPONENTS, LOWBIT_CHOICES, SKIP_CHOICES
    from .convert.sources import FORMATS

    conv = sub.add_parser("convert", help="convert a Bonsai Image checkpoint (MLX, Gemlite, unpacked BF16, BFL, or "
                                          "any 16-bit FLUX.2 klein) to a GGUF for stable-diffusion.cpp")
    conv.add_argument("src", metavar="SRC", help="a released repository directory, a component directory, or a file")
    conv.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="the output file")
    conv.add_argument("--type", choices=LOWBIT_CHOICES, help="type of the low-bit linears: pq2_0 (ternary default), "
                                                             "ptq1_0 (smallest), q2_0 (mainline ggml), q1_0 (binary), "
                                                             "f16 (decoded, for any ggml)")
    conv.add_argument("--skip-type", choices=SKIP_CHOICES, help="type of the 16-bit tensors (default: kept exactly, "
                                                                "F16 where exact, else BF16)")
    conv.add_argument("--verify", action="store_true", help="prove the output dequantizes exactly to the source")
    conv.add_argument("--from", dest="from_format", choices=FORMATS, help="the transformer's format (default: detected)")
    conv.add_argument("--component", choices=COMPONENTS, help="which part of a repository to convert "
                                                              "(default: transformer; detected for a file)")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    conv.set_defaults(func=_cmd_convert)

    add_generate_parser(sub)
    add_bench_parser(sub)
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
    sys.exit(_run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"bonsai-sd {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"bonsai-sd {args.command}: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a defect of bonsai-sd, not of the input: still no traceback
        print(f"bonsai-sd {args.command}: internal error ({type(e).__name__}: {e}); please report it "
              f"(BONSAI_SD_TRACEBACK=1 shows where)", file=sys.stderr)
        if os.environ.get("BONSAI_SD_TRACEBACK"):
            traceback.print_exc()
        return 1
