"""Where `tunewise demo`'s time goes: wall and CPU seconds per stage, in one process (issue 15).

Runs ``tunewise demo`` in this process with its stages wrapped by timers: CPU seconds are this
process's (every thread) plus those of the child processes it waited for (parallel fine-tune
workers), so on a shared machine the CPU column is the figure that compares, and the sum of the
stages' CPU seconds against wall time on free cores is what a parallel design can gain. Stages
nest (the sweep holds its model load, zero-shot evaluation and runs); the table prints them flat,
in order of first start, with their call counts.

    PYTHONPATH=src OMP_NUM_THREADS=... python bench/demo_stages.py -o bench/out/demo_stages/NAME.json -- \\
        demo -o /tmp/demo --model smollm2

Everything after ``--`` is the CLI's arguments. ``TUNEWISE_CACHE`` should name an empty folder, as
on a first ``make demo``.
"""

from __future__ import annotations

import time

_WALL0, _CPU0 = time.perf_counter(), time.process_time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


STAGES: dict[str, dict] = {}
WORKERS: list[float] = []


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stage(name: str):
    wall, cpu = time.perf_counter(), _cpu()
    try:
        yield
    finally:
        entry = STAGES.setdefault(name, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0, "first_start_s": wall - _WALL0})
        entry["calls"] += 1
        entry["wall_s"] += time.perf_counter() - wall
        entry["cpu_s"] += _cpu() - cpu


def wrap(owner, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        with stage(name):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def main() -> None:
    # What the CLI's callback sets (tunewise.cli.app.prefer_passive_openmp_waits), here before torch
    # is imported below: OpenMP reads it once, and spinning threads on shared cores cost several times
    # the CPU (this script's first runs, without it, took 7x the CPU seconds of a free-core demo).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli

    with stage("import tunewise.cli + torch"):
        import tunewise
        import tunewise.cli
        from tunewise.cli.app import app
        import torch  # noqa: F401  (the demo needs it; counted here, not inside the first stage that imports it)

        tunewise.cli._register_commands()
    import tunewise.indicators.score as score_module
    import tunewise.model.load as load_module
    import tunewise.report.html as report_module
    import tunewise.run as run_module
    import tunewise.training.sweep as sweep_module

    tunewise.load_backend = _timed(tunewise.__getattr__("load_backend"), "load model (plan)")
    wrap(score_module, "score", "scoring")
    wrap(run_module, "coslow_per_task", "CoS-Low")
    wrap(run_module, "write_run_folder", "plan: write run folder")
    wrap(sweep_module, "run_sweep", "sweep (all)")
    wrap(load_module, "load_model", "load_model (any)")
    wrap(sweep_module, "tertiles_by_answer_length", "sweep: test tertiles")
    wrap(sweep_module, "_selection_scores", "sweep: selection scores")
    # Not run_one: the processes engine sends it to its workers by reference, and a wrapper does not pickle.
    wrap(sweep_module.RunInputs, "evaluate", "sweep: evaluate")
    wrap(sweep_module, "summarise_sweep", "sweep: summarise + plot")
    wrap(report_module, "build_report", "report")
    wrap(sweep_module, "start_sweep", "sweep: start (processes engine)")
    wrap(sweep_module.StartedSweep, "finish", "sweep: finish (wait for / run the runs)")
    import tunewise.training.process_sweep as process_module

    close = process_module.RunWorkers.close

    def close_and_count(self):
        # Each worker's own CPU seconds, read before it exits: the longest is the chain no
        # second core can shorten.
        WORKERS.extend(_process_cpu(process.pid) for process in self._executor._processes.values())
        return close(self)

    process_module.RunWorkers.close = close_and_count

    started = time.perf_counter()
    try:
        app(cli_args, prog_name="tunewise", standalone_mode=False)
    finally:
        finished = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        document = {
            "command": " ".join(["bench/demo_stages.py", *cli_args]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_end": os.getloadavg(),
            "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TUNEWISE_THREADS")},
            "wall_s": round(finished - _WALL0, 2),
            "cpu_s": round(_cpu() - 0.0, 2),
            "cpu_s_at_script_start": round(_CPU0, 2),
            "command_wall_s": round(finished - started, 2),
            "user_s": round(usage.ru_utime + children.ru_utime, 2),
            "system_s": round(usage.ru_stime + children.ru_stime, 2),
            "peak_rss_gb_self": round(usage.ru_maxrss / 2**20, 3),
            "peak_rss_gb_largest_child": round(children.ru_maxrss / 2**20, 3),
            "worker_cpu_s": [round(value, 2) for value in WORKERS],
            "stages": {name: {k: round(v, 2) for k, v in entry.items()} for name, entry in STAGES.items()},
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"{'stage':44} {'calls':>5} {'wall s':>8} {'CPU s':>8}", file=sys.stderr)
        for name, entry in sorted(STAGES.items(), key=lambda item: item[1]["first_start_s"]):
            print(f"{name:44} {entry['calls']:5d} {entry['wall_s']:8.1f} {entry['cpu_s']:8.1f}", file=sys.stderr)
        print(f"{'whole process':44} {'':5} {document['wall_s']:8.1f} {document['cpu_s']:8.1f}", file=sys.stderr)


def _timed(function, name: str):
    def timed(*args, **kwargs):
        with stage(name):
            return function(*args, **kwargs)

    return timed


if __name__ == "__main__":
    main()
