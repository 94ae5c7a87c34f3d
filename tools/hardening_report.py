#!/usr/bin/env python3
"""Count crashes over the malformed-input corpus and the bad prompts and parameters (issue 11).

Runs every case of tools/malformed_models.py, and the prompt/parameter cases below, through an
sd-cli binary (generation, convert mode for transformer files, -r for images) and, with
--python, through the entry points of the bonsai_sd that this interpreter imports (bonsai-sd
info / convert / generate, Pipeline, Pipeline.from_pretrained). Each run is one of:

  ok        exit status 0 (or a Python call that returned)
  refused   exit status 1 or 2 with no traceback (or an exception of the API's error types)
  crash     a signal (abort, segfault), another exit status, a timeout, a Python traceback or an
            "internal error" line, or an exception of any other type

To compare builds, point --sd-cli at a pristine upstream sd-cli and run this under another
interpreter's bonsai_sd. sd-cli runs under a 4 GB address-space limit, so that a pickle bomb
cannot take the machine's memory.

    python tools/hardening_report.py --sd-cli PATH [--python] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import malformed_models as mm  # noqa: E402
import tiny_klein  # noqa: E402

TIMEOUT = 120
ADDRESS_SPACE = 4 << 30
WEIGHTING = "(((( )))) [[[a a]]] (word:1e309) (a:.) (a:" + "9" * 60 + ") (a:b:c) \\ BREAK BREAK " + "(" * 2000 + "x"

# sd-cli prompt and parameter cases: (name, extra arguments, prompt).
SD_CLI_PARAMETERS = [
    ("width-not-a-number", ["-W", "abc"], "a cat"),
    ("seed-out-of-range", ["-s", "99999999999999999999999"], "a cat"),
    ("strength-1e999", ["--strength", "1e999"], "a cat"),
    ("cfg-nan", ["--cfg-scale", "nan"], "a cat"),
    ("guidance-inf", ["--guidance", "inf"], "a cat"),
    ("steps-0", ["--steps", "0"], "a cat"),
    ("steps-2e9", ["--steps", "2000000000"], "a cat"),
    ("size-100000", ["-W", "100000", "-H", "100000"], "a cat"),
    ("tensor-type-rules-bad-regex", ["--tensor-type-rules", "([a=q8_0"], "a cat"),
    ("prompt-100kb", [], "a red fox " * 10_000),
    ("prompt-30kb", [], "a red fox " * 3_000),
    ("prompt-weighting-gone-wrong", [], WEIGHTING),
    ("prompt-invalid-utf8", [], "caf\udce9 au lait"),
]


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_sd_cli(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=TIMEOUT,
                              preexec_fn=limit_address_space)
    except subprocess.TimeoutExpired:
        return "crash"
    return "ok" if proc.returncode == 0 else "refused" if proc.returncode == 1 else "crash"


def cli_outcome(args: list[str]) -> str:
    from bonsai_sd import cli

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(args)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException:  # noqa: BLE001 - an escaping exception is the traceback a user sees
            return "crash"
    if "Traceback" in err.getvalue() or "internal error" in err.getvalue() or code not in (0, 1, 2):
        return "crash"
    return "ok" if code == 0 else "refused"


def api_outcome(call: Callable[[], object]) -> str:
    import bonsai_sd

    try:
        result = call()
    except (ValueError, TypeError, bonsai_sd.EngineError):  # the API's documented error types
        return "refused"
    except Exception:  # noqa: BLE001
        return "crash"
    close = getattr(result, "close", None)
    if close:
        close()
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-cli", required=True, help="the sd-cli binary to test")
    parser.add_argument("--python", action="store_true", help="also the Python entry points of this interpreter")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hardening-", dir=args.workdir))
    ok = tiny_klein.write_model_set(work / "ok", flavour="ternary", dtype="f16", seed=0)
    tally: dict[str, Counter[str]] = {}
    crashes: list[str] = []

    def record(entry: str, name: str, outcome: str) -> None:
        tally.setdefault(entry, Counter())[outcome] += 1
        if outcome == "crash":
            crashes.append(f"{entry}: {name}")

    def generate(dit: Path, llm: Path, vae: Path, *extra: str, prompt: str = "a cat") -> list[str]:
        return [args.sd_cli, "--diffusion-model", str(dit), "--llm", str(llm), "--vae", str(vae), "-W", "64", "-H",
                "64", "--steps", "1", "-t", "1", "-p", prompt, "-o", str(work / "out.png"), *extra]

    n_cases = 0
    for case in mm.all_cases():
        n_cases += 1
        path = work / "case" / (case.name + case.suffix)
        if case.repo_path:
            path = work / "repo" / case.repo_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        files = {"dit": ok.dit, "llm": ok.llm, "vae": ok.vae}
        if case.role in (mm.TRANSFORMER, mm.SOURCE):
            files["dit"] = path
        elif case.role == mm.TEXT_ENCODER:
            files["llm"] = path
        elif case.role == mm.VAE:
            files["vae"] = path
        extra = ["-r", str(path)] if case.role == mm.IMAGE else []
        record(f"sd-cli generation ({case.role})", case.name, run_sd_cli(generate(files["dit"], files["llm"],
                                                                                   files["vae"], *extra)))
        if case.role == mm.TRANSFORMER:
            record("sd-cli convert", case.name,
                   run_sd_cli([args.sd_cli, "-M", "convert", "-m", str(path), "-o", str(work / "out.gguf")]))
        if args.python:
            python_entry_points(case, path, files, work, record)
        shutil.rmtree(path.parent if not case.repo_path else work / "repo")
        for leftover in (work / "out.png", work / "out.gguf"):
            leftover.unlink(missing_ok=True)

    for name, extra, prompt in SD_CLI_PARAMETERS:
        record("sd-cli prompts and parameters", name, run_sd_cli(generate(ok.dit, ok.llm, ok.vae, *extra,
                                                                           prompt=prompt)))

    print(f"{n_cases} malformed-input cases, {len(SD_CLI_PARAMETERS)} sd-cli prompt/parameter cases")
    print(f"{'entry point':<42} {'runs':>5} {'ok':>5} {'refused':>8} {'crash':>6}")
    for entry, counts in tally.items():
        print(f"{entry:<42} {sum(counts.values()):>5} {counts['ok']:>5} {counts['refused']:>8} {counts['crash']:>6}")
    print(f"{'total':<42} {sum(sum(c.values()) for c in tally.values()):>5} "
          f"{sum(c['ok'] for c in tally.values()):>5} {sum(c['refused'] for c in tally.values()):>8} "
          f"{len(crashes):>6}")
    for line in crashes:
        print(f"  crash: {line}")
    shutil.rmtree(work)


def python_entry_points(case: mm.Case, path: Path, files: dict[str, Path], work: Path,
                        record: Callable[[str, str, str], None]) -> None:
    import bonsai_sd

    out = work / "converted.gguf"
    if case.role == mm.IMAGE:
        record("bonsai-sd generate -r", case.name,
               cli_outcome(["generate", "--demo", "-q", "-t", "1", "--size", "64", "--steps", "1", "a cat", "-r",
                            str(path), "-o", str(work / "out.png")]))
        demo = bonsai_sd.Pipeline.demo(threads=1)
        record("Pipeline (reference image)", case.name,
               api_outcome(lambda: demo("x", reference_images=[path], width=64, height=64, steps=1)))
        demo.close()
        return
    record("bonsai-sd info", case.name, cli_outcome(["info", str(path)]))
    record("bonsai-sd convert", case.name, cli_outcome(["convert", "-q", str(path), "-o", str(out)]))
    out.unlink(missing_ok=True)
    if case.role == mm.SOURCE:
        repo = work / "repo"
        record("Pipeline.from_pretrained", case.name,
               api_outcome(lambda: bonsai_sd.Pipeline.from_pretrained(repo, cache_dir=work / "cache", threads=1)))
        shutil.rmtree(work / "cache", ignore_errors=True)
        return
    record("Pipeline", case.name, api_outcome(lambda: bonsai_sd.Pipeline(files["dit"], text_encoder=files["llm"],
                                                                         vae=files["vae"], threads=1)))
    if case.role == mm.TRANSFORMER:
        record("Pipeline.from_pretrained", case.name, api_outcome(
            lambda: bonsai_sd.Pipeline.from_pretrained(path, text_encoder=files["llm"], vae=files["vae"], threads=1)))


if __name__ == "__main__":
    main()
