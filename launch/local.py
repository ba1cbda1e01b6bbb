"""Starts one multi-process JAX job on this machine: N copies of a command joined by ``jax.distributed``.

    python launch/local.py --num_processes 2 --cpu_devices 4 -- \\
        python -m vlfm.train --config configs/clip_tiny.py --workdir workdirs/x

Every process gets ``VLFM_COORDINATOR`` (a free localhost port), ``VLFM_NUM_PROCESSES``,
``VLFM_PROCESS_ID`` and, with ``--cpu_devices``, ``VLFM_LOCAL_DEVICES`` (CPU devices per process);
``vlfm.train.distributed.initialize`` reads them. Output lines are prefixed with ``[pI]``.

When a process fails, the launcher names it (it holds the cause in its log), gives the others
``--grace`` seconds to stop on their own (JAX's distributed runtime stops them) and then SIGKILLs
what is left: SIGTERM is not enough, JAX's preemption handler catches it. SIGINT/SIGTERM to the
launcher are passed on as SIGTERM (a preemption: the trainer saves a checkpoint and stops); a
second one kills the job. The exit status is that of the first process that failed (128 + signal
for a signal), 124 after ``--timeout``, else 0. ``--dry_run`` prints the commands only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_OUTPUT = threading.RLock()  # one writer at a time: process output lines and the launcher's own


def free_port() -> int:
    """A TCP port that is free now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, index: int, num: int, port: int, cpu_devices: int | None) -> dict:
    """The environment of process ``index``: the VLFM_* variables, and no conflicting device-count flag."""
    env = dict(base)
    env.update(VLFM_COORDINATOR=f"127.0.0.1:{port}", VLFM_NUM_PROCESSES=str(num), VLFM_PROCESS_ID=str(index),
               PYTHONUNBUFFERED="1")
    if cpu_devices:
        env["VLFM_LOCAL_DEVICES"] = str(cpu_devices)
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS") or "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _pump(index: int, stream, log_file) -> None:
    for line in iter(stream.readline, ""):
        with _OUTPUT:
            sys.stdout.write(f"[p{index}] {line}")
            sys.stdout.flush()
            if log_file:
                log_file.write(line)
                log_file.flush()
    stream.close()


def say(message: str) -> None:
    with _OUTPUT:
        print(f"launch: {message}", flush=True)


def run(command: list[str], num_processes: int, cpu_devices: int | None, *, port: int | None = None,
        grace: float = 60.0, timeout: float | None = None, log_dir: str | None = None) -> int:
    """Runs the job to the end; returns the launcher's exit status (module docstring)."""
    port = port or free_port()
    procs, pumps, logs = [], [], []
    start = time.monotonic()
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    # The processes inherit an ignored SIGINT: Ctrl-C reaches the launcher alone, which passes it on as
    # SIGTERM (a checkpoint, then a clean stop) instead of a KeyboardInterrupt in every process.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    for i in range(num_processes):
        log_file = open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None
        logs.append(log_file)
        p = subprocess.Popen(command, env=process_env(os.environ, i, num_processes, port, cpu_devices),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, log_file), daemon=True))
        pumps[-1].start()
    say(f"started {num_processes} processes (pids {', '.join(str(p.pid) for p in procs)}), coordinator "
        f"127.0.0.1:{port}")

    interrupts = []

    def on_signal(signum, frame):
        interrupts.append(signum)
        if len(interrupts) == 1:
            say(f"{signal.Signals(signum).name} received: passing SIGTERM to every process (they save and stop)")
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        else:
            for p in procs:
                if p.poll() is None:
                    p.kill()

    for s in previous:
        signal.signal(s, on_signal)
    first_failure, failed_at, status = None, None, 0
    reported, killed = set(), set()
    try:
        while True:
            alive = [p.poll() is None for p in procs]
            now = time.monotonic()
            for i, p in enumerate(procs):
                if p.returncode is None or i in reported:
                    continue
                reported.add(i)
                if p.returncode == 0:
                    continue
                if i in killed:
                    say(f"process {i} was stopped by the launcher (SIGKILL)")
                elif first_failure is None:
                    first_failure, failed_at = i, now
                    say(f"process {i} {describe(p.returncode)} after {now - start:.1f} s; it failed first, its log "
                        f"([p{i}]) holds the cause. Waiting up to {grace:.0f} s for the others to stop.")
                else:
                    say(f"process {i} {describe(p.returncode)} by itself {now - failed_at:.1f} s after process "
                        f"{first_failure} failed")
            if failed_at is not None and now - failed_at > grace:
                for i, p in enumerate(procs):
                    if p.poll() is None and i not in killed:
                        say(f"process {i} still running {grace:.0f} s after process {first_failure} failed: SIGKILL")
                        p.kill()
                        killed.add(i)
            if timeout is not None and now - start > timeout and not status:
                say(f"timeout after {timeout:.0f} s: SIGKILL to every process")
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        killed.add(i)
                status = 124
            if not any(alive):
                break
            time.sleep(0.1)
    finally:
        for p in procs:  # never leave a process behind
            if p.poll() is None:
                p.kill()
            p.wait()
        for t in pumps:
            t.join(timeout=5)
        for f in logs:
            if f:
                f.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for i, p in enumerate(procs):
        if i not in reported and p.returncode != 0:
            say(f"process {i} {describe(p.returncode)}")
    if status:
        return status
    if first_failure is not None:
        return exit_status(procs[first_failure].returncode)
    say(f"all {num_processes} processes finished in {time.monotonic() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python launch/local.py [options] -- COMMAND ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.split("\n")[0])
    parser.add_argument("--num_processes", "-n", type=int, default=2)
    parser.add_argument("--cpu_devices", type=int, default=None, help="CPU devices per process (CPU runs)")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds the others get after a failure")
    parser.add_argument("--timeout", type=float, default=None, help="wall-clock limit of the whole job")
    parser.add_argument("--log_dir", default=None, help="also write process_I.log files here")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, start nothing")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("no command after --")
    if args.dry_run:
        port = args.port or free_port()
        for i in range(args.num_processes):
            env = process_env({}, i, args.num_processes, port, args.cpu_devices)
            env.pop("XLA_FLAGS", None)
            assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
            print(f"{assigns} {shlex.join(command)} &")
        print("wait")
        return 0
    return run(command, args.num_processes, args.cpu_devices, port=args.port, grace=args.grace,
               timeout=args.timeout, log_dir=args.log_dir)


if __name__ == "__main__":
    sys.exit(main())
