"""Runs ``benchmarks/train_step.py`` for several variants of one config and prints a table (and JSON lines).

    python benchmarks/sweep.py --config configs/clip_b16.py --preset clip_b16 [--steps 20] [--budget_s 480]
        [--variant NAME=key=value,key=value ...] [--out results.jsonl] [--wheels DIR] [--config.a.b=value ...]

Made for short accelerator sessions: each variant runs in its own process (its own compile, memory and
crash), variants run in the order given, and once ``--budget_s`` is spent the remaining ones are listed as
skipped instead of run. A variant that fails (e.g. out of memory) is reported with its error's last line;
the sweep goes on. Common ``--config.*`` overrides apply to every variant. ``--peak_tflops`` (else the
first variant's measured matmul peak, reused by the rest) keeps MFU comparable across rows.

``--wheels DIR`` first installs the wheels of ``DIR`` (``benchmarks/wheels.py download DIR`` fills it where
a package index is reachable) into a temporary folder that every variant's process imports from: for a
node whose image lacks vlfm's data stack and reaches no index.

Presets name the levers worth measuring for a config (``--preset list`` prints them). Record the table
in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Levers for CLIP ViT-B/16 (the H200 target): attention kernel, remat policy per tower, batch,
# bf16 first moment.
PRESETS: dict[str, list[tuple[str, list[str]]]] = {
    "clip_b16": [
        ("baseline (auto attention)", []),
        ("xla attention", ["model.image.attention=xla", "model.text.attention=xla"]),
        ("image remat dots", ["model.image.remat=dots"]),
        ("image remat dots_no_batch", ["model.image.remat=dots_no_batch"]),
        ("image remat full", ["model.image.remat=full"]),
        ("adamw mu bf16", ["optimizer.mu_dtype=bfloat16"]),
        ("batch 512", ["data.batch_size=512"]),
        ("batch 512, image remat dots", ["data.batch_size=512", "model.image.remat=dots"]),
    ],
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value`` -> (NAME, [key=value, ...]); ``NAME=`` is the config as it is."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ValueError(f"variant {text!r} is not NAME=key=value,...")
    return name, [item for item in rest.split(",") if item]


def run_variant(config: str, overrides: list[str], common: list[str], steps: int, warmup: int,
                peak_tflops: float | None, timeout_s: float) -> dict:
    """One ``train_step.py`` run in a fresh process: its JSON, or ``{"error": ...}``."""
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--config", config, "--steps", str(steps),
           "--warmup", str(warmup), *common, *[f"--config.{o}" for o in overrides]]
    if peak_tflops:
        cmd += ["--peak_tflops", str(peak_tflops)]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": round(time.perf_counter() - start, 1)}
    wall = round(time.perf_counter() - start, 1)
    if out.returncode != 0 or "{" not in out.stdout:
        lines = [line for line in (out.stderr or out.stdout).strip().splitlines() if line.strip()]
        return {"error": lines[-1][:200] if lines else f"exit status {out.returncode}", "wall_s": wall}
    result = json.loads(out.stdout[out.stdout.index("{"):])
    result["wall_s"] = wall
    return result


def use_wheels(folder: str) -> str:
    """Installs ``folder``'s wheels into a temporary folder and puts it first on the variants' PYTHONPATH."""
    import tempfile

    sys.path.insert(0, HERE)
    import wheels

    target = tempfile.mkdtemp(prefix="vlfm-wheels-")
    names = wheels.install(folder, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    print(f"wheels: {', '.join(names)} -> {target}", file=sys.stderr, flush=True)
    return target


def table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of the figures that decide between variants."""
    head = "| variant | ex/s | step ms | TFLOP/s/dev | MFU | MFU (data sheet) | peak GiB | compile s | wall s |"
    lines = [head, "|" + "---|" * 9]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |  |  |  |  |  |  | {r.get('wall_s', '')} |")
            continue
        pct = lambda x: "" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        lines.append(f"| {name} | {r['examples_per_s']:,.1f} | {r['step_ms']:.1f} | {r['model_tflops_per_device']:.3g} "
                     f"| {pct(r['mfu'])} | {pct(r.get('mfu_vendor'))} | {r.get('peak_memory_gib') or ''} "
                     f"| {r['compile_s']} | {r['wall_s']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> list[tuple[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)}, or 'list'")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value (repeatable)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--budget_s", type=float, default=480.0, help="start no variant after this many seconds")
    parser.add_argument("--timeout_s", type=float, default=300.0, help="limit per variant")
    parser.add_argument("--out", default=None, help="append each result as a JSON line")
    parser.add_argument("--wheels", default=None, help="install this folder's wheels for the variants first")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unknown arguments {unknown}")
    if args.preset == "list":
        for name, variants in PRESETS.items():
            print(name + ": " + "; ".join(f"{v} ({', '.join(o) or 'as configured'})" for v, o in variants))
        return []
    if args.preset is not None and args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
    variants = list(PRESETS.get(args.preset, [])) + [parse_variant(v) for v in args.variant]
    if not variants:
        parser.error("nothing to run: give --preset or --variant")
    if args.wheels:
        use_wheels(args.wheels)
    start, peak, rows = time.perf_counter(), args.peak_tflops, []
    for name, overrides in variants:
        spent = time.perf_counter() - start
        if spent > args.budget_s:
            rows.append((name, {"error": f"skipped: budget of {args.budget_s:.0f} s spent"}))
            continue
        timeout = min(args.timeout_s, max(args.budget_s - spent, 30.0) + 60.0)
        result = run_variant(args.config, overrides, rest, args.steps, args.warmup, peak, timeout)
        if peak is None and "peak_tflops" in result:
            peak = result["peak_tflops"]  # the same reference for every later row
        result["variant"] = name
        rows.append((name, result))
        print(f"{name}: " + (result["error"] if "error" in result else
                             f"{result['examples_per_s']} ex/s, {result['step_ms']} ms"), file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
