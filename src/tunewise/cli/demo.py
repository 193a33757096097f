"""``tunewise demo``: the whole loop on a built-in pool, start to finish on a laptop CPU.

score → plan → select → fine-tune at two budgets, the plan's strategy against random → report.
The pool is generated in code (:mod:`tunewise.data.demo`), so the demo needs no data files; with
the bundled SmolLM2 it is sized to finish within a few minutes on a 2-core CPU. Its pool gives
every task CoS-Low's 32 labelled examples, so the plan shows the headline answer: the labels each
task needs, predicted from CoS-Low, with the calibration's caveat beside it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.training.finetune import MAX_SEED
from tunewise.cli.progress import progress_bar

DEMO_STRATEGY = "weighted_task_diversity"
POOL_FILE, TEST_FILE, SWEEP_FOLDER = "pool.jsonl", "test.jsonl", "sweep"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: examples per task, the two budgets, the seeds, and the fine-tunes."""

    pool_per_task: int
    test_per_task: int
    budgets: tuple[int, int]
    seeds: tuple[int, ...]
    epochs: int
    answer_tokens: int


# Sized from timings of SmolLM2 on a 2-core CPU (BENCHMARKS.md, "The demo end to end"). 32 labelled
# examples per task are CoS-Low's k, so the plan predicts every task's curve and the labels it
# needs. CoS-Low's 160 gradients and the fine-tunes take most of the time, so one seed (each
# budget compares the plan's picks with random once: a second seed doubled the fine-tunes and
# gave an interval too wide to read anyway) and two epochs in batches of 8, which still teach
# these tasks' answer format: zero-shot 10 % exact match, 33 % after 10 examples, 45–48 % after
# 40 (three epochs: 55–60 %, for 15 % more CPU time).
FULL = DemoSize(pool_per_task=32, test_per_task=8, budgets=(10, 40), seeds=(0,), epochs=2, answer_tokens=8)
QUICK = DemoSize(pool_per_task=8, test_per_task=4, budgets=(5, 15), seeds=(0,), epochs=1, answer_tokens=4)


@command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "-o", "--output", "--out", help="Run folder to write."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    quick: bool = typer.Option(False, help="A smaller pool, one seed and one epoch of fine-tuning (a smoke test)."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the generated pool and of the plan."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    workers: Optional[int] = typer.Option(None, min=1, help="Worker processes that fine-tune and evaluate while "
                                          "this one measures CoS-Low, each on cores / workers threads (default: 2 on "
                                          "a CPU of 2 or more cores; 1: everything in this process, one step after "
                                          "another, as on a GPU)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run score → plan → select → fine-tune vs random → report on a built-in multi-task pool."""
    import tunewise as tw
    from tunewise.cli.progress import stage_progress
    from tunewise.cli.tables import curves_table, gains_table, print_plan
    from tunewise.data.demo import demo_records
    from tunewise.io import RunFolder, encode_jsonl
    from tunewise.run import run_folder_names
    from tunewise.training.sweep import check_sweep_folder
    from tunewise.training.finetune import FinetuneConfig
    from tunewise.data.pool import read_pool
    from tunewise.report.html import build_report
    from tunewise.training.process_sweep import threads_per_worker
    from tunewise.training.sweep import run_sweep, start_sweep

    started = time.perf_counter()
    size = QUICK if quick else FULL
    folder = RunFolder(out)
    pool_path, test_path = out / POOL_FILE, out / TEST_FILE
    plan_config = tw.PlanConfig(budget=size.budgets[1], strategy=DEMO_STRATEGY, seed=seed)
    # Every file the demo writes is checked before any is: none may be the user's own.
    folder.check([POOL_FILE, TEST_FILE, *run_folder_names(plan_config, labelled=True, writes_weights=False)],
                 field="out")
    check_sweep_folder(out / SWEEP_FOLDER)
    pool_records, test_records = demo_records(size.pool_per_task, size.test_per_task, seed)
    folder.write({POOL_FILE: encode_jsonl(pool_records), TEST_FILE: encode_jsonl(test_records)})
    pool, test = read_pool(pool_path, "task"), read_pool(test_path, "task")
    console.print(f"[bold]1/3[/] score and plan: {len(pool)} examples in {len(pool.tasks)} tasks "
                  f"({', '.join(pool.tasks)}), budget {size.budgets[1]}", highlight=False)
    console.print(f"loading {escape(model)} …", highlight=False)
    backend = tw.load_backend(model, device=device, dtype="auto", max_new_tokens=30)
    loaded = getattr(backend, "loaded", None)
    workers = demo_workers(workers, loaded)
    config = FinetuneConfig(epochs=size.epochs, batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-3,
                            warmup_ratio=0.0)
    runs_description = (f"{DEMO_STRATEGY} against random at budgets {size.budgets[0]} and {size.budgets[1]}, seeds "
                        f"{', '.join(map(str, size.seeds))}, evaluated on {len(test)} held-out examples")
    sweep_args = (pool, test, list(size.budgets), [DEMO_STRATEGY, "random"], list(size.seeds), model,
                  out / SWEEP_FOLDER, config)
    sweep_options = dict(device=device, metric="exact_match", max_new_tokens=size.answer_tokens, loaded=loaded)
    progress_runs = progress_bar("fine-tune and evaluate", unit="runs")
    if workers == 1:
        plan = tw.plan(pool, backend, plan_config, out, model_name=model, progress=stage_progress)
        console.print(f"[bold]2/3[/] fine-tune: {runs_description}", highlight=False)
        with progress_runs as update:
            summary = run_sweep(*sweep_args, **sweep_options, progress=lambda done, total, _: update(done, total))
    else:
        # The runs need the pool's scores (the plan's strategy weighs the tasks by confidence), not
        # CoS-Low: score, hand the runs to the worker processes, then measure CoS-Low here, on
        # fewer threads, while they fine-tune (BENCHMARKS.md, "The demo in two worker processes").
        # The plan reads the scores back from the cache.
        with stage_progress("scoring", "examples") as update:
            tw.score(pool, backend, plan_config.indicator_names(), cache_dir=plan_config.cache_dir, progress=update,
                     max_batch_tokens=plan_config.batch_tokens)
        with start_sweep(*sweep_args, **sweep_options, engine="processes", workers=workers) as sweep:
            console.print(f"fine-tuning meanwhile in {workers} worker processes: {runs_description}", highlight=False)
            with _torch_threads(threads_per_worker(workers)):
                plan = tw.plan(pool, backend, plan_config, out, model_name=model, progress=stage_progress)
            console.print("[bold]2/3[/] fine-tune: waiting for the worker processes", highlight=False)
            with progress_runs as update:
                summary = sweep.finish(progress=lambda done, total, _: update(done, total))

    console.print("[bold]3/3[/] report", highlight=False)
    report = build_report(out)
    if as_json:
        print_json({"plan": plan.document, "sweep": summary, "report": str(report), "seconds": round(time.perf_counter() - started, 1)})
        return
    print_plan(plan.document)
    stdout.print(curves_table(summary))
    if len(summary["strategies"]) > 1:
        stdout.print(gains_table(summary))
    stdout.print(f"demo finished in {time.perf_counter() - started:.0f} s; report → {escape(str(report))}",
                 highlight=False, soft_wrap=True)


def demo_workers(requested: int | None, loaded) -> int:
    """Worker processes for the demo's runs on ``loaded`` (a :class:`~tunewise.model.load.LoadedModel`):
    as asked, else 2 on a CPU of two or more cores and 1 elsewhere (a GPU runs them one after
    another). More than one is refused on a GPU."""
    from tunewise.errors import TunewiseError
    from tunewise.training.process_sweep import cpu_cores

    device = getattr(loaded, "device", None)
    if device is None or device.type != "cpu":
        if requested is not None and requested > 1:
            raise TunewiseError(f"worker processes run on the CPU, and the model is on {device}", field="workers",
                                fix="drop --workers (a GPU runs the fine-tunes one after another)")
        return 1
    return requested if requested is not None else min(2, cpu_cores())


@contextlib.contextmanager
def _torch_threads(threads: int):
    """This process on ``threads`` torch threads for the block (``--threads`` wins), then back."""
    import torch

    from tunewise.model.load import apply_thread_setting

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    apply_thread_setting()
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["demo_command"]
