"""`bonsai-sd bench`: end-to-end seconds and peak memory per image, for each transformer type.

Each (transformer type, mode) runs in its own process, so peak memory is that case's own: peak
host RSS is the process's high-water mark (VmHWM), peak GPU memory the driver's "used" figure
(NVML, else nvidia-smi) polled by the parent, less what was used before the case started. A case
loads its pipeline once, then for each image size generates `warmup` untimed and `images` timed
images. Stage times come from the engine's own timers (its "... completed, taking X s" log lines:
text encoder, sampling, VAE), per-step times from its progress reports; seconds per image is the
wall time of the Pipeline call.

Modes: "default" (the Pipeline's defaults with flash attention) and "lean": the lowest peak
memory the pinned engine allows, see LEAN.

The model directory holds the files tools/make_full_size_model.py writes (transformer-<type>.gguf,
text-encoder-q4_k.gguf, vae.safetensors). Results go to one JSON file per run; `--report`
renders JSON files (also tools/bench_diffusers.py's) as tables with ratios against F16.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
TYPES = ("pq2_0", "ptq1_0", "q2_0", "q1_0", "f16", "q8_0", "q4_k")
MODES = ("default", "lean")
PROMPT = "a red fox curled beneath paper lanterns, photograph"
TEXT_ENCODER_FILE = "text-encoder-q4_k.gguf"
VAE_FILE = "vae.safetensors"
GB = 1e9

# What "lean" means with the pinned engine (measured: BENCHMARKS.md). On a GPU, the weights stay in
# RAM and each model is moved to the device only while it runs (so the text encoder is off the
# device once it has encoded the prompt, and the transformer and VAE never share it with it), every
# model's graph is capped at `max_vram` GiB (a bigger one runs in segments), attention is flash
# attention and the VAE decodes in tiles. On the CPU only flash attention and VAE tiling apply.
LEAN_MAX_VRAM_GIB = 2.0

# Numbers measured elsewhere that the report compares with (device, size, seconds, peak GB).
REFERENCES = (
    {"what": "upstream sd.cpp 0.4.7, F16, sd-cli --diffusion-fa (research/device-baseline-2026-11-24.md)",
     "device": "H100", "size": 1024, "s_per_image": 2.24, "te_s": 0.40, "sampling_s": 1.25, "vae_s": 0.50,
     "peak_gpu_gb": 15.9},
    {"what": "upstream sd.cpp 0.4.7, Q8_0 (--type q8_0)", "device": "H100", "size": 1024, "s_per_image": 2.59,
     "peak_gpu_gb": 8.9},
    {"what": "upstream sd.cpp 0.4.7, F16, 512x512", "device": "H100", "size": 512, "s_per_image": 1.05,
     "peak_gpu_gb": 15.9},
    {"what": "diffusers BF16 eager (same baseline file)", "device": "H100", "size": 1024, "s_per_image": 0.51},
    {"what": "PrismML's own CUDA stack (Gemlite), ternary", "device": "H100", "size": 1024, "s_per_image": 1.45,
     "peak_gpu_gb": 6.4 * 1.073741824},
)


# ---- one case, inside its own process ----------------------------------------------------------

_STAGE_LINES = {
    "te_s": re.compile(r"get_learned_condition completed, taking ([0-9.]+) ?s"),
    "sampling_s": re.compile(r"(?:^|- )sampling completed, taking ([0-9.]+) ?s"),  # not "hires sampling"
    "vae_s": re.compile(r"decode_first_stage completed, taking ([0-9.]+) ?s"),
    "engine_s": re.compile(r"generate_image completed in ([0-9.]+) ?s"),
}


# The engine's own account of its memory: each model's weights and compute buffers, offloading.
_MEMORY_LINE = re.compile(r"buffer size|params memory|offload params")


class _EngineLines(logging.Handler):
    """Collects the engine's messages (logger bonsai_sd.engine) while a case runs: an image's
    lines (cleared per image), and the distinct memory lines of the whole case."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.memory: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message)
        if _MEMORY_LINE.search(message) and len(self.memory) < 100:
            self.memory[re.sub(r"^\S+:\d+\s+-\s+", "", message.strip())] = None

    def stage_seconds(self) -> dict[str, float | None]:
        found: dict[str, float | None] = dict.fromkeys(_STAGE_LINES)
        for line in self.lines:
            for key, pattern in _STAGE_LINES.items():
                m = pattern.search(line.strip())
                if m:
                    found[key] = float(m.group(1))
        return found


def peak_rss_bytes() -> int | None:
    """This process's peak resident set (VmHWM), Linux; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mode_options(mode: str, on_gpu: bool, lean_max_vram: float = LEAN_MAX_VRAM_GIB) -> tuple[dict[str, Any], bool]:
    """(Pipeline options, VAE tiling) of a mode."""
    if mode == "default":
        return {"flash_attention": True}, False
    if mode == "lean":
        options: dict[str, Any] = {"flash_attention": True}
        if on_gpu:
            options["offload_to_cpu"] = True
            if lean_max_vram > 0:
                options["max_vram"] = lean_max_vram
        return options, True
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")


def _emit(event: dict[str, Any]) -> None:
    print("BENCH " + json.dumps(event), flush=True)


def run_case(spec: dict[str, Any], emit: Callable[[dict[str, Any]], None] = _emit) -> dict[str, Any]:
    """Load one pipeline and time its images at each size (in this process)."""
    from .pipeline import Pipeline, Progress

    engine_log = logging.getLogger("bonsai_sd.engine")
    lines = _EngineLines()
    engine_log.addHandler(lines)
    engine_log.setLevel(logging.DEBUG)
    engine_log.propagate = spec.get("verbose", False)

    started = time.perf_counter()
    pipe = Pipeline(spec["transformer"], text_encoder=spec["text_encoder"], vae=spec["vae"], device=spec["device"],
                    threads=spec.get("threads"), **spec["options"])
    result: dict[str, Any] = {"load_s": time.perf_counter() - started, "sizes": []}
    emit({"event": "loaded", "load_s": result["load_s"], "peak_rss_bytes": peak_rss_bytes()})
    try:
        for size in spec["sizes"]:
            emit({"event": "size", "size": size})
            images = []
            for i in range(spec["warmup"] + spec["images"]):
                reports: list[tuple[int, float]] = []

                def progress(p: Progress, seen: list[tuple[int, float]] = reports) -> None:
                    if p.stage == "sample" and p.step > 0:
                        seen.append((p.step, p.seconds_per_step))

                lines.lines.clear()
                t0 = time.perf_counter()
                pipe(spec["prompt"], width=size, height=size, steps=spec["steps"], seed=spec["seed"] + i,
                     vae_tiling=spec["vae_tiling"], progress=progress)
                timing: dict[str, Any] = {"wall_s": time.perf_counter() - t0, "warmup": i < spec["warmup"],
                                          "step_s": step_durations(reports), **lines.stage_seconds()}
                images.append(timing)
                emit({"event": "image", "size": size, **timing})
            result["sizes"].append({"size": size, "images": images, "peak_rss_bytes": peak_rss_bytes(),
                                    **summarize(images)})
    finally:
        pipe.close()
        engine_log.removeHandler(lines)
    result["engine_memory"] = list(lines.memory)
    return result


def step_durations(reports: Sequence[tuple[int, float]]) -> list[float]:
    """Each step's seconds from sd.cpp's reports (step k, mean seconds per step over steps 1..k)."""
    out, elapsed, last = [], 0.0, 0
    for step, mean in reports:
        if step <= last:
            continue
        total = step * mean
        out += [(total - elapsed) / (step - last)] * (step - last)  # a step not reported: share the time
        elapsed, last = total, step
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def summarize(images: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Means over the timed images (the warm-up ones left out, unless there are only those)."""
    timed = [im for im in images if not im["warmup"]] or list(images)
    steps = [s for im in timed for s in im["step_s"]]
    return {
        "s_per_image": _mean(im["wall_s"] for im in timed),
        "s_per_step": _mean(steps),
        "te_s": _mean(im["te_s"] for im in timed),
        "sampling_s": _mean(im["sampling_s"] for im in timed),
        "vae_s": _mean(im["vae_s"] for im in timed),
    }


def _worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_case(spec)
    _emit({"event": "result", **result})
    return 0


# ---- GPU memory, polled from the parent ----------------------------------------------------------

class GpuMemory:
    """Device memory in use ("used", as the driver reports it) through NVML, else nvidia-smi."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.source = ""
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
            self.source = "nvml"
        except Exception:  # no NVML library or binding: try the command line tool
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
        self.name = self._query_name() if self.source else None

    def _query_name(self) -> str | None:
        if self._nvml is not None:
            name = self._nvml.nvmlDeviceGetName(self._handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        return out.stdout.strip() or None

    def used(self) -> int | None:
        if self._nvml is not None:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        if self.source == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            try:
                return int(out.stdout.strip().splitlines()[0]) * 1024 * 1024
            except (ValueError, IndexError):
                return None
        return None


class PeakPoller:
    """Polls GpuMemory in a thread; keeps the peak of each phase (a phase is named by `phase`)."""

    def __init__(self, gpu: GpuMemory, interval: float = 0.01) -> None:
        self.gpu, self.interval = gpu, interval
        self.baseline = gpu.used() or 0
        self.phase: Any = None
        self.peaks: dict[Any, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.gpu.used()
            if used is not None:
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), used - self.baseline)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ---- the parent: cases, files, tables -----------------------------------------------------------

@dataclass(frozen=True)
class Case:
    type_name: str
    mode: str


def _gpu_index(device: str | None) -> int | None:
    """The CUDA device index a device string names, None for the CPU (or no GPU at all)."""
    if device is None or device.lower() in ("", "auto"):
        from . import _core

        return 0 if any(d["type"] == "gpu" and d["name"].upper().startswith("CUDA") for d in _core.devices()) else None
    m = re.fullmatch(r"cuda:?(\d*)", device.lower())
    return int(m.group(1) or 0) if m else None


def run_in_subprocess(spec: dict[str, Any], gpu: GpuMemory | None, timeout: float | None,
                      log_file: Any = None) -> dict[str, Any]:
    """Run one case in a fresh interpreter; attribute the GPU peak to each image size."""
    cmd = [sys.executable, "-m", "bonsai_sd.bench", "--worker", json.dumps(spec)]
    poller = PeakPoller(gpu) if gpu is not None and gpu.source else None
    events: list[dict[str, Any]] = []
    stderr_tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill) if timeout else None

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail.append(line.rstrip("\n"))
            del stderr_tail[:-40]
            if log_file is not None:
                log_file.write(line)

    err_thread = threading.Thread(target=drain_stderr, daemon=True)
    err_thread.start()
    if timer:
        timer.start()
    try:
        if poller:
            poller.__enter__()
            poller.phase = "load"
        assert proc.stdout is not None
        for line in proc.stdout:
            if log_file is not None:
                log_file.write(line)
            if not line.startswith("BENCH "):
                continue
            event = json.loads(line[len("BENCH "):])
            events.append(event)
            if poller and event["event"] == "size":
                poller.phase = event["size"]
            if event["event"] == "image":
                log.info("  %s %dx%d: %.2f s%s", spec["type"], event["size"], event["size"], event["wall_s"],
                         " (warm-up)" if event["warmup"] else "")
        proc.wait()
    finally:
        if timer:
            timer.cancel()
        if poller:
            poller.__exit__()
        err_thread.join(timeout=5)
    result = next((e for e in events if e["event"] == "result"), None)
    out: dict[str, Any]
    if result is None:
        how = f"was stopped after {timeout:.0f} s" if timed_out.is_set() else f"exited with status {proc.returncode}"
        out = {"error": f"the case {how}: " + " | ".join(stderr_tail[-6:]), "sizes": partial_sizes(events)}
        loaded = next((e for e in events if e["event"] == "loaded"), None)
        if loaded:
            out["load_s"] = loaded["load_s"]
    else:
        out = {k: v for k, v in result.items() if k != "event"}
    if poller:
        out["peak_gpu_load_bytes"] = poller.peaks.get("load")
        peak_so_far = poller.peaks.get("load", 0)
        for s in out["sizes"]:
            peak_so_far = max(peak_so_far, poller.peaks.get(s["size"], 0))
            s["peak_gpu_bytes"] = peak_so_far  # sizes run in order: a peak includes the earlier ones
        out["gpu_baseline_bytes"] = poller.baseline
    return out


def partial_sizes(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sizes of a case that died, from the images it reported before."""
    sizes: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["event"] == "image":
            sizes.setdefault(e["size"], []).append({k: v for k, v in e.items() if k not in ("event", "size")})
    return [{"size": size, "images": ims, "incomplete": True, **summarize(ims)} for size, ims in sizes.items()]


def machine_info(gpu: GpuMemory | None) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
                            "cpu_count": os.cpu_count()}
    try:
        info["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    if gpu is not None:
        info["gpu"] = gpu.name
        info["gpu_memory_source"] = gpu.source
    return info


def git_commit() -> str | None:
    """The source commit: $BONSAI_SD_COMMIT, else git's HEAD of the current directory (with
    '-dirty' for uncommitted changes)."""
    if os.environ.get("BONSAI_SD_COMMIT"):
        return os.environ["BONSAI_SD_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def model_files(models: Path, type_name: str) -> dict[str, Path]:
    files = {"transformer": models / f"transformer-{type_name}.gguf", "text_encoder": models / TEXT_ENCODER_FILE,
             "vae": models / VAE_FILE}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing model file(s): {', '.join(missing)} "
                                f"(write them with tools/make_full_size_model.py {models})")
    return files


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from . import _core
    from .pipeline import resolve_device

    models = Path(args.models)
    resolve_device(args.device)  # an unavailable device fails here, not in every case
    gpu_index = _gpu_index(args.device)
    gpu = GpuMemory(gpu_index) if gpu_index is not None else None
    cases = [Case(t, m) for m in args.modes for t in args.types]
    report: dict[str, Any] = {
        "schema": SCHEMA, "tool": "bonsai-sd bench", "bonsai_sd": _core.__version__, "commit": git_commit(),
        "sd_commit": _core.sd_commit, "ggml_commit": _core.ggml_commit, "command": ["bonsai-sd", *sys.argv[1:]],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(gpu),
        "settings": {"device": args.device or "auto", "device_name": _device_name(args.device), "sizes": args.sizes,
                     "steps": args.steps, "warmup": args.warmup, "images": args.images, "threads": args.threads,
                     "prompt": args.prompt, "seed": args.seed, "models": str(models),
                     "lean_max_vram_gib": args.lean_max_vram},
        "cases": [],
    }
    log_file = open(args.log, "a") if args.log else None  # noqa: SIM115 - closed below
    started = time.monotonic()
    try:
        for case in cases:
            if args.time_budget is not None and time.monotonic() - started > args.time_budget:
                log.warning("%s (%s) skipped: the time budget of %.0f s is spent", case.type_name, case.mode,
                            args.time_budget)
                report["cases"].append({"type": case.type_name, "mode": case.mode,
                                        "skipped": f"time budget of {args.time_budget:.0f} s spent"})
                continue
            files = model_files(models, case.type_name)
            options, vae_tiling = mode_options(case.mode, gpu is not None, args.lean_max_vram)
            spec = {"type": case.type_name, "mode": case.mode, "device": args.device, "threads": args.threads,
                    "sizes": args.sizes, "steps": args.steps, "warmup": args.warmup, "images": args.images,
                    "prompt": args.prompt, "seed": args.seed, "options": options, "vae_tiling": vae_tiling,
                    "verbose": args.verbose, **{k: str(v) for k, v in files.items()}}
            log.info("%s (%s): %s", case.type_name, case.mode, files["transformer"])
            if log_file:
                log_file.write(f"==== {case.type_name} ({case.mode})\n")
                log_file.flush()
            timeout = args.case_timeout
            if args.time_budget is not None:  # a case may run past the budget by at most half a minute
                left = args.time_budget - (time.monotonic() - started) + 30
                timeout = left if timeout is None else min(timeout, left)
            outcome = run_in_subprocess(spec, gpu, timeout, log_file)
            entry = {"type": case.type_name, "mode": case.mode, "options": options, "vae_tiling": vae_tiling,
                     "file_bytes": {k: p.stat().st_size for k, p in files.items()}, **outcome}
            report["cases"].append(entry)
            if "error" in entry:
                log.warning("%s (%s) failed: %s", case.type_name, case.mode, entry["error"])
            if args.output:
                write_json(report, Path(args.output))  # after every case: a killed run keeps what it measured
    finally:
        if log_file:
            log_file.close()
    return report


def _device_name(device: str | None) -> str:
    from . import _core
    from .pipeline import resolve_device

    name = resolve_device(device)
    devices = _core.devices()
    chosen = next((d for d in devices if d["name"] == name), None) if name else \
        next((d for d in devices if d["type"] == "gpu"), devices[0] if devices else None)
    return f"{chosen['name']} ({chosen['description']})" if chosen else "?"


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def default_output(on_gpu: bool, label: str | None) -> Path:
    device = "cuda" if on_gpu else "cpu"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("benchmarks") / f"{stamp}-{device}{'-' + label if label else ''}.json"


# ---- tables ------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (report, case, size), with the F16 default case of the same report as baseline."""
    out = []
    for rep in reports:
        for case in rep["cases"]:
            for s in case.get("sizes", []):
                out.append({"report": rep, "case": case, "size": s["size"], "s": s})
    for row in out:
        # The F16 case of the same run, else of any run given (a diffusers baseline has none).
        same_size = [r for r in out if r["case"]["type"] == "f16" and r["case"]["mode"] == "default"
                     and r["size"] == row["size"]]
        base = next((r for r in same_size if r["report"] is row["report"]), same_size[0] if same_size else None)
        row["base"] = base["s"] if base else None
    return out


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: one per image size, ratios against the F16 default case of the same run."""
    lines = []
    all_rows = rows(reports)
    for size in sorted({r["size"] for r in all_rows}):
        lines += [f"#### {size}x{size}", "",
                  "| type | mode | transformer GB | load s | s/image | ÷ F16 | s/step | TE s | sampling s | VAE s "
                  "| peak GPU GB | ÷ F16 | peak RSS GB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in all_rows if r["size"] == size):
            case, s, base = r["case"], r["s"], r["base"] or {}
            gpu = s.get("peak_gpu_bytes")
            note = " (failed)" if case.get("error") else (" (incomplete)" if s.get("incomplete") else "")
            tbytes = case.get("file_bytes", {}).get("transformer")
            mode = case["mode"] + (f" ≤{case['options']['max_vram']:g} GiB" if "max_vram" in case.get("options", {})
                                   else "")
            lines.append(
                f"| {case['type']}{note} | {mode} | {_fmt(tbytes / GB if tbytes else None)} "
                f"| {_fmt(case.get('load_s'), 1)} | {_fmt(s.get('s_per_image'))} "
                f"| {_ratio(s.get('s_per_image'), base.get('s_per_image'))} | {_fmt(s.get('s_per_step'), 3)} "
                f"| {_fmt(s.get('te_s'))} | {_fmt(s.get('sampling_s'))} | {_fmt(s.get('vae_s'))} "
                f"| {_fmt(gpu / GB if gpu else None)} | {_ratio(gpu, base.get('peak_gpu_bytes'))} "
                f"| {_fmt(s['peak_rss_bytes'] / GB if s.get('peak_rss_bytes') else None)} |")
        lines.append("")
    lines += comparisons(all_rows)
    for c in (c for rep in reports for c in rep["cases"]):
        if c.get("error"):
            lines.append(f"- {c['type']} ({c['mode']}) failed: {c['error']}")
        elif c.get("skipped"):
            lines.append(f"- {c['type']} ({c['mode']}) skipped: {c['skipped']}")
    return "\n".join(lines).rstrip() + "\n"


def comparisons(all_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Ternary (PQ2_0) and F16 against the diffusers baseline of the same size and against the
    REFERENCES measured on the same kind of GPU."""
    lines = []
    for row in all_rows:
        case, s = row["case"], row["s"]
        if case["type"] not in ("pq2_0", "f16") or case.get("error") or not s.get("s_per_image"):
            continue
        gpu = str(row["report"]["machine"].get("gpu") or "")
        others = [(f"diffusers BF16 (this machine) {r['s']['s_per_image']:.2f} s", r["s"]["s_per_image"],
                   r["s"].get("peak_gpu_bytes"))
                  for r in all_rows if r["case"]["mode"] == "diffusers" and r["size"] == row["size"]
                  and r["s"].get("s_per_image")]
        others += [(f"{ref['what']} {ref['s_per_image']:.2f} s", ref["s_per_image"],
                    ref["peak_gpu_gb"] * GB if ref.get("peak_gpu_gb") else None)
                   for ref in REFERENCES if ref["size"] == row["size"] and ref["device"] in gpu]
        for what, seconds, peak in others:
            mine = s.get("peak_gpu_bytes")
            memory = f", peak memory x{mine / peak:.2f}" if mine and peak else ""
            lines.append(f"- {case['type']} ({case['mode']}) {row['size']}x{row['size']}: {s['s_per_image']:.2f} s "
                         f"per image = x{s['s_per_image'] / seconds:.2f} the time of {what}{memory}")
    return lines + ([""] if lines else [])


def describe(report: dict[str, Any]) -> str:
    m, st = report["machine"], report["settings"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{report['date']}: bonsai-sd {report['bonsai_sd']} (commit {report.get('commit')}), {st['device_name']}, "
            f"{m['cpu']} x{m['cpu_count']}{gpu}; {st['steps']} steps, {st['warmup']} warm-up + {st['images']} "
            f"timed images per size; command: {' '.join(report['command'])}")


# ---- command line ------------------------------------------------------------------------------

def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(x.strip()) for x in text.split(",") if x.strip()]


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="time end-to-end generation and peak memory for each transformer type",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="?", type=Path,
                   help="directory of transformer-<type>.gguf, text-encoder-q4_k.gguf and vae.safetensors "
                        "(tools/make_full_size_model.py)")
    p.add_argument("--types", type=_csv(str), default=list(TYPES), help=f"default: {','.join(TYPES)}")
    p.add_argument("--modes", type=_csv(str), default=["default"], help="default and/or lean (default: default)")
    p.add_argument("--sizes", type=_csv(int), default=[512, 1024], help="square image sizes (default 512,1024)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="untimed images per size (default 1)")
    p.add_argument("--images", type=int, default=2, help="timed images per size (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the first GPU, else the CPU)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads (default: the physical cores)")
    p.add_argument("--lean-max-vram", type=float, default=LEAN_MAX_VRAM_GIB, metavar="GiB",
                   help=f"lean mode's cap on one model graph's device memory (default {LEAN_MAX_VRAM_GIB}; 0: none)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--case-timeout", type=float, metavar="S", help="kill a case after this many seconds")
    p.add_argument("--time-budget", type=float, metavar="S", help="start no case after this many seconds")
    p.add_argument("-o", "--output", type=Path, help="the JSON file (default: benchmarks/<time>-<device>[-label].json)")
    p.add_argument("--label", help="a word for the default output name")
    p.add_argument("--log", type=Path, help="append the cases' engine output to this file")
    p.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                   help="print the tables of earlier runs (and tools/bench_diffusers.py results) instead of running")
    p.add_argument("-v", "--verbose", action="store_true", help="print the engine's log")
    p.set_defaults(func=run_bench_cli)


def run_bench_cli(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="bonsai-sd bench: %(message)s")
    if args.report:
        try:
            reports = [json.loads(Path(p).read_text()) for p in args.report]
        except (OSError, json.JSONDecodeError) as e:
            print(f"bonsai-sd bench: {e}", file=sys.stderr)
            return 1
        for rep in reports:
            print(describe(rep))
        print()
        print(markdown(reports))
        return 0
    if args.models is None:
        print("bonsai-sd bench: give the model directory (or --report JSON)", file=sys.stderr)
        return 2
    bad = [t for t in args.types if t not in TYPES] + [m for m in args.modes if m not in MODES]
    if bad or args.steps < 1 or args.warmup < 0 or args.images < 1 or any(s < 16 or s % 16 for s in args.sizes):
        print(f"bonsai-sd bench: invalid arguments {bad or ''} (types: {', '.join(TYPES)}; modes: "
              f"{', '.join(MODES)}; steps, images >= 1; sizes multiples of 16)", file=sys.stderr)
        return 2
    try:
        for t in args.types:
            model_files(args.models, t)
        if args.output is None:
            from .pipeline import resolve_device

            resolve_device(args.device)
            args.output = default_output(_gpu_index(args.device) is not None, args.label)
        report = run_bench(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"bonsai-sd bench: {e}", file=sys.stderr)
        return 2
    write_json(report, args.output)
    print(describe(report))
    print()
    print(markdown([report]))
    print(f"written: {args.output}")
    return 1 if any(c.get("error") for c in report["cases"]) else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: bonsai-sd bench ... (python -m bonsai_sd.bench --worker SPEC runs one case)", file=sys.stderr)
    sys.exit(2)
