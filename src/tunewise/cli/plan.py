"""``tunewise plan`` (score → predict → allocate → select → report) and ``tunewise report``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import command, console, stdout
from tunewise.cli.progress import progress_bar
from tunewise.errors import TunewiseError

PLAN_STRATEGIES_HELP = ("weighted_task_diversity (default), task_diversity, efficiency (needs predictions), "
                        "or any `tunewise select` strategy (random, uncertainty …).")


@command("plan")
def plan_command(
    pool_path: Path = typer.Argument(..., metavar="POOL", help="Pool file (labelled or not) or saved HF dataset folder."),
    budget: int = typer.Option(..., "--budget", "-n", help="Labels to spend across all tasks."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder to write (created if needed)."),
    strategy: str = typer.Option("weighted_task_diversity", "--strategy", "-s", help=PLAN_STRATEGIES_HELP),
    within: str = typer.Option("random", help="Order inside each task: random, difficulty_window, weighted_indicators."),
    weights: Optional[Path] = typer.Option(None, help="Indicator weights (weights.json of `tunewise tune-weights`) "
                                                      "to order examples within each task."),
    dev: Optional[Path] = typer.Option(None, help="Labelled dev file: learn indicator weights on it with the "
                                                  "in-context proxy (paper D) and order examples within each task "
                                                  "by them."),
    trials: int = typer.Option(30, min=1, help="With --dev: trials of the weight search."),
    target: float = typer.Option(0.9, help="Normalised target for 'labels needed': fraction of the way from "
                                           "zero-shot to ceiling."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    coefficients: Optional[str] = typer.Option(
        None, help="CoS-Low → AUC coefficients: a calibration file, or paper:llama-3.1-8b | paper:mistral-7b | "
                   "paper:qwen2.5-14b (default: the model's shipped calibration, if any)."),
    coslow: Optional[bool] = typer.Option(
        None, "--coslow/--no-coslow", help="Measure CoS-Low per labelled task (about a minute per task on a CPU; "
                                          "default: on when coefficients are available)."),
    seed: int = typer.Option(0, min=0, help="Seed for every random choice."),
    cap_to_pool: bool = typer.Option(False, "--cap-to-pool",
                                     help="Let a budget above the pool plan the whole pool instead of stopping."),
    indicators: Optional[str] = typer.Option(None, help="Comma-separated indicators to score (default: those of "
                                                        "`tunewise score`)."),
    skip_bad: bool = typer.Option(False, help="Skip malformed records (each is listed) instead of stopping."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, "
                                                        "else fp32), fp32, bf16."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest greedy answer when scoring confidence."),
    batch_tokens: Optional[int] = typer.Option(None, min=64, help="Token budget per scoring batch."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache folder (default: user cache)."),
) -> None:
    """Plan labels per task: how many each task needs, and which examples; writes a run folder and a report."""
    from tunewise.cli.score import parse_list
    from tunewise.cli.select import check_budget_fits_pool
    from tunewise.indicators.registry import DEFAULT_INDICATORS
    from tunewise.data.pool import read_pool

    started = time.perf_counter()
    if budget < 0:
        raise TunewiseError(f"--budget must be a whole number ≥ 0, got {budget}", field="budget",
                            fix="pass e.g. --budget 200")
    if not 0 < target <= 1:
        raise TunewiseError(f"--target must be in (0, 1], got {target}", field="target",
                            fix="give a fraction of the way from zero-shot to ceiling, e.g. --target 0.9")
    if output.exists() and not output.is_dir():
        raise TunewiseError("the output path is a file", file=output, field="output", fix="pass a folder with -o")
    check_strategy(strategy, within)
    if weights is not None and dev is not None:
        raise TunewiseError("give --weights or --dev, not both", field="dev",
                            fix="--dev learns the weights; --weights uses a file learned before")
    if (weights is not None or dev is not None) and within not in ("random", "weighted_indicators"):
        raise TunewiseError(f"--weights and --dev order examples by indicator weights, not by --within {within}",
                            field="within", fix="drop --within, or drop --weights / --dev")
    chosen_coefficients = resolve_coefficients(coefficients, model)
    names = parse_list(indicators) or list(DEFAULT_INDICATORS)
    pool = read_pool(pool_path, task_field, skip_bad=skip_bad)
    check_budget_fits_pool(budget, len(pool), pool_path, cap_to_pool)
    learning = None
    if dev is not None:
        learning = WeightLearning(dev, task_field, trials)
        learning.check(pool)
        names = list(dict.fromkeys([*names, *learning.indicators]))
    for skipped in pool.skipped:
        console.print("[yellow]skipped[/] " + escape(f"{skipped.file}:{skipped.line}: {skipped.reason}"),
                      highlight=False)
    result = run_plan(pool, output, budget=budget, strategy=strategy, within=within, weights=weights, target=target,
                      model=model, coefficients=chosen_coefficients, coslow=coslow, seed=seed, indicators=names,
                      device=device, dtype=dtype, max_new_tokens=max_new_tokens, batch_tokens=batch_tokens,
                      cache_dir=cache_dir, learning=learning)
    print_plan(result.document)
    console.print(f"done in {time.perf_counter() - started:.0f} s", highlight=False)
    stdout.print(f"report → {escape(str(output / 'report.html'))}", highlight=False, soft_wrap=True)


@command("report")
def report_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Folder written by `tunewise plan` (or demo)."),
) -> None:
    """Rebuild RUN_DIR/report.html from the files in the run folder."""
    from tunewise.report.html import build_report

    if not run_dir.is_dir():
        raise TunewiseError("no such run folder", file=run_dir, fix="pass the -o folder of `tunewise plan`")
    path = build_report(run_dir)
    stdout.print(f"report → {escape(str(path))}", highlight=False, soft_wrap=True)


def check_strategy(strategy: str, within: str) -> None:
    """Refuse an unknown strategy or within-task order before any model work."""
    from tunewise.errors import did_you_mean
    from tunewise.pipeline import EFFICIENCY
    from tunewise.select import WITHIN_TASK, available_strategies

    known = [*available_strategies(), EFFICIENCY]
    if strategy not in known:
        raise TunewiseError(f"unknown strategy '{strategy}'", field="strategy", fix=did_you_mean(strategy, known))
    if within not in WITHIN_TASK:
        raise TunewiseError(f"unknown within-task order '{within}'", field="within", fix=did_you_mean(within, WITHIN_TASK))


def resolve_coefficients(spec: str | None, model: str):
    """The coefficients asked for, else the model's known ones, else None (never made up)."""
    from tunewise.efficiency.predict import coefficients_for, load_coefficients

    if spec is not None:
        return load_coefficients(spec)
    try:
        return coefficients_for(model)
    except TunewiseError:
        return None


def run_plan(pool, output: Path, *, budget: int, strategy: str, within: str, weights: Path | None, target: float,
             model: str, coefficients, coslow: bool | None, seed: int, indicators: list[str], device: str,
             dtype: str, max_new_tokens: int, batch_tokens: int | None, cache_dir: Path | None,
             learning: WeightLearning | None = None):
    """Score, measure CoS-Low, plan, and write the run folder; shared by ``plan`` and ``demo``."""
    from tunewise.model import load_backend
    from tunewise.pipeline import EFFICIENCY, make_plan
    from tunewise.indicators.score import score_pool, scores_provenance

    if strategy == EFFICIENCY and coefficients is None:
        from tunewise.pipeline import NO_CALIBRATION

        raise TunewiseError(f"the efficiency strategy needs predicted learning curves, and there is {NO_CALIBRATION}",
                            field="strategy", fix="pass --coefficients, or use --strategy weighted_task_diversity")
    measure = coefficients is not None if coslow is None else coslow
    console.print(f"loading {model} …", highlight=False)
    backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                           max_batch_tokens=batch_tokens)
    with progress_bar("scoring") as update:
        scores = score_pool(pool, backend, indicators, cache_dir=cache_dir, progress=update,
                            max_batch_tokens=batch_tokens)
    provenance = scores_provenance(backend, indicators, pool.source)
    output.mkdir(parents=True, exist_ok=True)

    coslow_results = measure_coslow_per_task(pool, scores, backend, model, seed) if measure else {}
    if learning is not None:
        weights = learning.learn(pool, scores, backend, output, seed)
    within_params = None
    if weights is not None:
        from tunewise.select import read_indicator_weights

        within = "weighted_indicators"
        within_params = read_indicator_weights(weights)
    plan = make_plan(pool, scores, budget, strategy=strategy, within=within, target=target, coefficients=coefficients,
                     coslow_values={task: value["coslow"] for task, value in coslow_results.items()}, seed=seed,
                     within_params=within_params, provenance={"model": model, **provenance})
    if coslow_results:
        plan.document["coslow"] = coslow_results
    write_run_folder(output, pool, scores, plan, provenance, weights)
    return plan


@dataclass(frozen=True)
class WeightLearning:
    """``--dev``: learn indicator weights on a labelled dev set (DESIGN.md §4), as ``tunewise
    tune-weights`` does with its defaults, and write them to RUN_DIR/weights.json."""

    dev: Path
    task_field: str | None
    trials: int

    @property
    def indicators(self) -> tuple[str, ...]:
        """What to score for the features of `tunewise tune-weights`."""
        from tunewise.select.features import source_columns

        return source_columns()

    def check(self, pool) -> None:
        """The proxy shows pool examples as demonstrations, so each needs its answer."""
        if not pool.labelled:
            raise TunewiseError("--dev learns weights from demonstrations of the pool, and the pool has unlabelled "
                                "examples", file=pool.source, field="dev",
                                fix="label the pool first, or drop --dev (and pass --weights learned elsewhere)")

    def learn(self, pool, scores, backend, output: Path, seed: int) -> Path:
        import optuna

        from tunewise.weights.anchors import choose_anchors
        from tunewise.cli.weights import read_labelled, score_dev
        from tunewise.select.features import FEATURES, indicator_features
        from tunewise.weights.proxy import ProxyModel
        from tunewise.data.table import embedding_matrix
        from tunewise.select.manifest import encode_json, write_files_atomically
        from tunewise.weights.search import tune_weights

        dev = read_labelled(self.dev, self.task_field, "dev")
        matrix = indicator_features(scores, FEATURES)
        # Optuna's per-trial log lines would break the progress bar.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        anchors = choose_anchors(embedding_matrix(score_dev(backend, dev, ["embedding"])), seed=seed)
        anchor_examples = [dev.examples[int(position)] for position in anchors.positions]
        with progress_bar("learning indicator weights", unit="trials") as update:
            tuned = tune_weights(matrix, pool.examples, anchor_examples, anchors, ProxyModel(backend),
                                 output / "weights.run", trials=self.trials, seed=seed, progress=update)
        path = output / "weights.json"
        write_files_atomically({path: encode_json({**tuned.document(), "dev": str(self.dev)})})
        return path


def measure_coslow_per_task(pool, scores, backend, model: str, seed: int) -> dict:
    """CoS-Low of every task with enough labelled examples, on the model that scored the pool."""
    from tunewise.pipeline import measure_coslow

    loaded = getattr(backend, "loaded", None)
    if loaded is None:
        raise TunewiseError(f"CoS-Low needs the gradients of a real model, and '{model}' has none", field="model",
                            fix="use --no-coslow, or --model smollm2, tiny-random or a model folder")
    with progress_bar("CoS-Low gradients") as update:
        return measure_coslow(pool, scores, loaded, seed=seed, progress=update)


def write_run_folder(output: Path, pool, scores, plan, provenance: dict, weights_file: Path | None) -> None:
    """scores.parquet, plan.json, selection.jsonl (+ meta), to_label.jsonl when picks lack labels, then
    report.html."""
    from tunewise.report.html import build_report
    from tunewise.data.table import write_scores
    from tunewise.select.manifest import encode_json, encode_jsonl, selection_meta, write_selection

    meta = selection_meta(scores, plan.selection, plan.strategy, seed=plan.document["seed"],
                          budget=plan.document["budget"], scores_provenance=provenance,
                          scores_path=str(output / "scores.parquet"))
    extra = {output / "plan.json": encode_json(plan.document)}
    unlabelled = [pool.examples[p] for p in plan.selection.positions if pool.examples[p].response is None]
    to_label = output / "to_label.jsonl"
    if unlabelled:
        extra[to_label] = encode_jsonl(to_label_records(unlabelled))
    elif to_label.exists():
        to_label.unlink()  # left by an earlier plan of an unlabelled pool in this folder
    if weights_file is not None and Path(weights_file).resolve() != (output / "weights.json").resolve():
        extra[output / "weights.json"] = Path(weights_file).read_bytes()
    write_scores(scores, output / "scores.parquet", provenance)
    write_selection(output / "selection.jsonl", scores, plan.selection, meta, extra)
    build_report(output)


def to_label_records(examples) -> list[dict]:
    """The picks to annotate, in order, in the pool reader's prompt/response shape: fill in
    ``response`` and the file is a labelled pool (read it with ``--task-field task``)."""
    records = []
    for position, example in enumerate(examples):
        single_user_turn = len(example.prompt) == 1 and example.prompt[0]["role"] == "user"
        records.append({
            "position": position,
            "task": example.task,
            "prompt": example.prompt[0]["content"] if single_user_turn else [dict(t) for t in example.prompt],
            "response": None,
            "pool_id": example.id,
        })
    return records


def plan_table(document: dict) -> Table:
    """The per-task plan: pool, labelled, confidence, weight, budget, prediction."""
    target = document["target"]
    # A light box keeps the nine columns within an 80-character terminal.
    table = Table(title=f"Plan: {document['selected']} labels, {document['strategy']}, seed {document['seed']}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"conf.: mean confidence; AUC': predicted; need: labels to reach {target:.0%} of the way "
                          "to the ceiling")
    table.add_column("task", no_wrap=True)
    for name in ("pool", "labelled", "conf.", "weight", "budget", "share", "AUC'", "need"):
        table.add_column(name, justify="right")

    def cell(value, spec=".3f") -> str:
        return "-" if value is None else format(value, spec)

    for task, entry in document["tasks"].items():
        table.add_row(escape(task), str(entry["pool"]), str(entry["labelled"]), cell(entry["mean_confidence"]),
                      cell(entry["weight"]), str(entry["budget"]), cell(entry["share"], ".1%"),
                      cell(entry["predicted_auc"]), cell(entry["labels_needed"], "d"))
    return table


def print_plan(document: dict) -> None:
    """The plan table, then each task's reason, then the notes.

    When every task's reason ends with the same sentence (all lack a prediction for the same
    cause), that sentence is printed once after them instead of once per task.
    """
    from tunewise.pipeline import split_shared_closing_sentence

    stdout.print(plan_table(document))
    reasons, shared = split_shared_closing_sentence([entry["why"] for entry in document["tasks"].values()])
    for task, why in zip(document["tasks"], reasons):
        stdout.print(f"[bold]{escape(task)}[/]: {escape(why)}", highlight=False)
    if shared:
        stdout.print(f"[bold]every task[/]: {escape(shared)}", highlight=False)
    for note in document["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
