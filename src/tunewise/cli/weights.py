"""``tunewise anchors`` and ``tunewise tune-weights``: learned indicator weights (DESIGN.md §4)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.training.finetune import MAX_SEED
from tunewise.cli.progress import progress_bar
from tunewise.cli.options import check_output_path, parse_list, with_pool_options
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.data.pool import PoolReading, SourcePath, read_labelled_pool
from tunewise.select.weighted import FEATURES


def score_dev(backend, dev, outputs: list[str]):
    """The dev set as an :class:`~tunewise.data.table.ExampleTable` with ``outputs`` (``loss``
    and/or ``embedding``), scored with a progress bar."""
    from tunewise.indicators.score import score

    with progress_bar("scoring the dev set") as update:
        return score(dev, backend, outputs, progress=update)


@command("anchors")
@with_pool_options(panel="Dev set reading")
def anchors_command(
    dev_path: Path = typer.Argument(..., parser=SourcePath, metavar="DEV", help="Labelled dev file (any pool format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Anchors file to write (JSONL)."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    count: int = typer.Option(64, "-m", "--anchors", min=1, help="Number of anchors m (k-means clusters)."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the k-means that picks the written anchors."),
    check_seeds: int = typer.Option(5, min=1, help="Seeds the tracking check is repeated over."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), fp32, bf16."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Choose m weighted anchors of a dev set by embedding-stratified sampling (one per k-means
    cluster of the embeddings, weighted by the cluster's size; not tinyBenchmarks' IRT anchors) and
    check how well they track the full dev score.

    The score checked is the base model's per-token log-likelihood of each gold answer: its full
    dev mean, the anchors' weighted estimate, and the mean of a random subset of the same size,
    over several seeds.
    """
    from tunewise.weights.anchors import embedding_stratified_anchors, tracking_report, write_anchors
    from tunewise.model import load_backend
    from tunewise.data.table import embedding_matrix

    check_output_path(output, {"the dev set": dev_path}, example="-o anchors.jsonl")
    dev = read_labelled_pool(dev_path, task_field, "dev", reading)
    backend = load_backend(model, device=device, dtype=dtype)
    table = score_dev(backend, dev, ["loss", "embedding"])
    logliks = -table.scores["loss"].to_numpy()
    embeddings = embedding_matrix(table.scores)
    anchors = embedding_stratified_anchors(embeddings, count, seed)
    report = tracking_report(logliks, embeddings, count, seeds=range(seed, seed + check_seeds))
    write_anchors(output, dev.examples, anchors, logliks)

    if as_json:
        print_json({**report, "anchors": len(anchors), "dev": len(dev), "output": str(output),
                    **reading.provenance()})
        return
    stdout.print(tracking_table(report))
    if count >= len(dev):
        console.print(f"[yellow]note:[/] m = {count} is not smaller than the dev set ({len(dev)} examples): every "
                      "example is its own anchor and the estimate is the full mean", highlight=False)
    better = report["mean_anchor_error"] <= report["mean_random_error"]
    verdict = "anchors track the dev mean better" if better else "a random subset did better here"
    stdout.print(
        f"mean |error| over {check_seeds} seeds: anchors {report['mean_anchor_error']:.4f}, random subset "
        f"{report['mean_random_error']:.4f} ({verdict})"
    )
    stdout.print(f"{len(anchors)} anchors of {len(dev)} dev examples → {output}", markup=False, highlight=False)


def tracking_table(report: dict) -> Table:
    """Per seed: the anchor estimate and a random subset's mean against the full dev mean."""
    table = Table(title=f"Gold-answer log-likelihood per token: full dev mean {report['full_mean']:.4f} "
                        f"({report['dev_size']} examples)")
    for column in ("seed", "anchors", "anchor estimate", "|error|", "random subset", "|error|"):
        table.add_column(column, justify="right")
    for run in report["runs"]:
        table.add_row(str(run["seed"]), str(run["anchors"]), f"{run['anchor_estimate']:.4f}",
                      f"{run['anchor_error']:.4f}", f"{run['random_estimate']:.4f}", f"{run['random_error']:.4f}")
    return table


def parse_orientation(text: str | None) -> dict[str, str]:
    """``"length=lower,loss=higher"`` → ``{"length": "lower", "loss": "higher"}``."""
    orientation = {}
    for part in parse_list(text):
        name, separator, prefer = part.partition("=")
        if not separator or not name.strip():
            raise TunewiseError(f"cannot read the orientation '{part}'", field="orientation",
                                fix="write feature=higher or feature=lower, comma-separated")
        orientation[name.strip()] = prefer.strip()
    return orientation


@command("tune-weights")
@with_pool_options(panel="Pool reading (pool and dev)")
def tune_weights_command(
    scores_path: Path = typer.Argument(..., metavar="SCORES", help="Scores file of the pool (`tunewise score`)."),
    pool_path: Path = typer.Option(..., "--pool", parser=SourcePath, help="The labelled pool the scores came from."),
    dev_path: Path = typer.Option(..., "--dev", help="Labelled dev set the anchors are chosen from."),
    output: Path = typer.Option(..., "-o", "--output", help="Weights file to write (JSON)."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name (pool and dev)."),
    features: str = typer.Option(",".join(FEATURES), help="Comma-separated features to weigh."),
    orientation: Optional[str] = typer.Option(
        None, help="Preferred direction per feature, e.g. length=lower (default: higher, confidence lower)."
    ),
    fraction: float = typer.Option(0.3, help="ρ: the selection S(w) is the top ρ·N of the pool."),
    set_diversity: bool = typer.Option(False, "--set-diversity/--no-set-diversity",
                                       help="Make S(w) a diverse set: greedy facility location (on the pool's "
                                            "embeddings) picks ρ·N among the 2ρ·N best-scored; needs an embedding "
                                            "column."),
    trials: int = typer.Option(30, min=1, help="Trials of the search (counting those of a resumed run)."),
    timeout: Optional[float] = typer.Option(None, help="Stop the search after this many seconds."),
    sampler: str = typer.Option("tpe", help="Optuna sampler: tpe or gp."),
    repeats: int = typer.Option(3, min=1, help="R: seeded demonstration draws per trial (J's spread over them is "
                                               "reported)."),
    demos: int = typer.Option(8, min=1, help="d: demonstrations per draw, one from each of d rank strata of S(w) "
                                             "(with the shared prefix cache, more demonstrations cost little: the "
                                             "anchors' own tokens dominate)."),
    anchors: int = typer.Option(64, min=1, help="m: anchor items of the tiny validation set, an embedding-stratified "
                                                "sample of the dev set (one per k-means cluster)."),
    metric: str = typer.Option("log_likelihood", help="Proxy score: log_likelihood (gold answer; 'loglik' is its "
                                                      "deprecated name) or exact_match (greedy answer)."),
    validate: int = typer.Option(0, min=0, help="Fine-tune for real on K selections and correlate J with accuracy."),
    validate_steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps of each --validate fine-tune "
                                                                  "(default: one epoch)."),
    validate_metric: str = typer.Option("auto", help="Dev score of each --validate fine-tune: auto (per task), "
                                                     "exact_match, multiple_choice, gsm8k or log_likelihood "
                                                     "(use it where accuracy stays near zero)."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the anchors, the demonstrations and the search."),
    run_dir: Optional[Path] = typer.Option(None, help="Search folder (Optuna study, trial log); default: "
                                                      "beside -o, named after it with .run."),
    batch_tokens: Optional[int] = typer.Option(None, min=64, help="Token budget of one proxy batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), fp32, bf16."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Learn indicator weights with an in-context proxy on a tiny validation set.

    Use the result with `tunewise select --strategy weighted_indicators --weights FILE`.
    """
    from tunewise.select.weighted import check_feature_names, indicator_features, resolve_orientation
    from tunewise.weights.proxy import METRICS
    from tunewise.data.table import ExampleTable, read_scores
    from tunewise.weights.search import SAMPLERS

    if not 0 < fraction <= 1:
        raise TunewiseError(f"--fraction must be in (0, 1], got {fraction}", field="fraction")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise TunewiseError(f"--timeout must be positive, got {timeout} (seconds)", field="timeout",
                            fix="pass e.g. --timeout 600, or leave it out")
    if sampler not in SAMPLERS:
        raise TunewiseError(f"unknown sampler '{sampler}'", field="sampler", fix="use --sampler tpe or gp")
    from tunewise.training.metrics import canonical_metric

    metric = canonical_metric(metric)
    if metric not in METRICS:
        raise TunewiseError(f"unknown metric '{metric}'", field="metric", fix=did_you_mean(metric, METRICS))
    from tunewise.training.evaluate import check_metric

    check_metric(validate_metric, field="validate-metric")
    if validate in (1, 2):
        raise TunewiseError(f"--validate {validate} gives too few points for a rank correlation", field="validate",
                            fix="use --validate 3 or more (or 0 to skip the check)")
    names = check_feature_names(parse_list(features))
    if len(names) < 2:
        raise TunewiseError("one feature leaves nothing to weigh", field="features",
                            fix="name two or more features, or rank by one with `select --strategy top_k`")
    inputs = {"the scores": scores_path, "--pool": pool_path, "--dev": dev_path}
    check_output_path(output, inputs, example="-o weights.json")
    run_dir = run_dir or output.with_name(output.stem + ".run")
    from tunewise.io import check_output_folder, refuse_overwriting_inputs

    refuse_overwriting_inputs({"--run-dir": run_dir, "-o": output}, inputs)
    check_output_folder(run_dir, field="run-dir")

    scores, provenance = read_scores(scores_path)
    orientations = parse_orientation(orientation)
    resolve_orientation(names, orientations)  # refuse a bad --orientation before the model loads
    table = ExampleTable.join(read_labelled_pool(pool_path, task_field, "pool", reading), scores)
    dev = read_labelled_pool(dev_path, task_field, "dev", reading)

    import optuna

    from tunewise.weights.anchors import embedding_stratified_anchors
    from tunewise.model import load_backend
    from tunewise.weights.proxy import ProxyModel
    from tunewise.data.table import embedding_matrix
    from tunewise.weights.search import tune_weights

    # Optuna's per-trial log lines would break the progress bar; its notices are not for the user.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from tunewise.indicators.score import complete
    from tunewise.select.weighted import source_columns

    backend = load_backend(model, device=device, dtype=dtype)
    with progress_bar("scoring missing indicators") as update:
        needed = source_columns([*names, *(["diversity"] if set_diversity else [])])  # diversity: the embedding
        table = complete(table, backend, needed, progress=update)
    matrix = indicator_features(table.scores, names, orientations, set_diversity=set_diversity)
    dev_table = score_dev(backend, dev, ["embedding"])
    chosen = embedding_stratified_anchors(embedding_matrix(dev_table.scores), anchors, seed)
    anchor_examples = list(dev_table.take(chosen.positions).examples)
    with progress_bar("tuning weights", unit="trials") as update:
        tuned = tune_weights(
            matrix, table.examples, anchor_examples, chosen, ProxyModel(backend, batch_tokens), run_dir,
            fraction=fraction, trials=trials, timeout=timeout, sampler=sampler, repeats=repeats, demos=demos,
            metric=metric, seed=seed, progress=update,
        )
    if tuned.search.resumed_from:
        console.print(f"[yellow]note:[/] continued the search in {escape(str(run_dir))} "
                      f"({tuned.search.resumed_from} trials were already done)", highlight=False)

    validation = None
    if validate:
        validation = validate_selections(backend, table.examples, tuned, dev, validate, validate_steps, seed,
                                         validate_metric)

    document = {
        **tuned.document(),
        "scores": str(scores_path),
        "scores_model_fingerprint": provenance.get("model_fingerprint"),
        "pool": str(pool_path),
        "dev": str(dev_path),
        "run_dir": str(run_dir),
        "validation": validation,
        **reading.provenance(),
    }
    from tunewise.io import write_json

    write_json(output, document)
    if as_json:
        print_json({**document, "output": str(output)})
        return
    stdout.print(weights_table(document))
    if validation is not None:
        stdout.print(validation_table(validation))
        colour = "green" if validation["spearman"] is not None and validation["spearman"] >= 0.4 else "yellow"
        stdout.print(f"[{colour}]proxy check:[/] {escape(validation['verdict'])}", highlight=False)
        if "note" in validation:
            console.print(f"[yellow]note:[/] {escape(validation['note'])}", highlight=False)
    distinct = document["distinct"]
    stdout.print(f"{distinct['selections']} distinct selections and {distinct['demonstrations']} distinct "
                 f"demonstration draws over {distinct['trials']} trials", highlight=False)
    if distinct["demonstrations"] is not None and distinct["demonstrations"] < distinct["selections"]:
        console.print("[yellow]note:[/] some different selections showed the same demonstrations, so J could not "
                      "tell them apart; raise --demos or --repeats", highlight=False)
    repeats = len(document["trials"][document["best_trial"]].get("J_repeats", []))
    spread = "" if repeats < 2 else f" (sd {document['J_spread']:.4f} over {repeats} repeats)"
    stdout.print(f"best J {document['J']:.4f}{spread} after {len(document['trials'])} trials (log: {run_dir}) "
                 f"→ {output}", markup=False, highlight=False)


def validate_selections(backend, pool_examples, tuned, dev, count: int, steps: int | None, seed: int,
                        metric: str) -> dict:
    """Fine-tune on ``count`` selections spread over J and correlate J with the dev score."""
    from tunewise.training.finetune import FinetuneConfig
    from tunewise.weights.search import validate_proxy

    config = FinetuneConfig(epochs=1, max_steps=steps, seed=seed)
    with progress_bar("checking the proxy", unit="fine-tunes") as update:
        return validate_proxy(backend.loaded, pool_examples, tuned.search.trials, tuned.selection, dev.examples,
                              count, config, progress=update, metric=metric)


def weights_table(document: dict) -> Table:
    """The learned weights, largest first."""
    table = Table(title=f"Learned weights (best of {len(document['trials'])} trials, J = {document['J']:.4f}, "
                        f"ρ = {document['fraction']}, {document['metric']})")
    table.add_column("feature")
    table.add_column("prefer")
    table.add_column("weight", justify="right")
    for name, weight in sorted(document["weights"].items(), key=lambda item: -item[1]):
        table.add_row(escape(name), document["orientation"][name], f"{weight:.3f}")
    return table


def validation_table(validation: dict) -> Table:
    """J against the post-fine-tuning dev score, one row per fine-tune."""
    table = Table(title=f"Proxy check: J against the dev score ({validation['metric']}) after fine-tuning")
    for column in ("trial", "J", "dev score"):
        table.add_column(column, justify="right")
    for point in validation["fine_tunes"]:
        table.add_row(str(point["trial"]), f"{point['J']:.4f}", f"{point['accuracy']:.3f}")
    return table
