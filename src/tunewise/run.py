"""The pipeline as one library call: pool → scores (cached) → CoS-Low → weights → plan → run folder.

:func:`plan` is what ``tunewise plan`` and ``tunewise demo`` run; a Python user gets the same
result without the command line::

    import tunewise as tw

    pool = tw.read_pool("pool.jsonl", task_field="task")
    model = tw.load_backend("smollm2")
    result = tw.plan(pool, model, tw.PlanConfig(budget=200), output="runs/x")

:class:`PlanConfig` is the plan's whole surface (TRL's habit: one dataclass whose fields are the
command's flags); it validates itself once, at construction. The library never prints: long
stages report through ``progress(stage, unit)``, a factory of context managers that yield
``update(done, total)`` (the CLI passes its Rich progress bar).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tunewise.data.pool import SourcePath
from tunewise.errors import TunewiseError
from tunewise.io import encode_json, encode_jsonl

Progress = Callable[[str, str], contextlib.AbstractContextManager]
log = logging.getLogger(__name__)

#: Files of a run folder, read back by the report.
SCORES_FILE = "scores.parquet"
PLAN_FILE = "plan.json"
SELECTION_FILE = "selection.jsonl"
TO_LABEL_FILE = "to_label.jsonl"
WEIGHTS_FILE = "weights.json"
DATASET_INFO_FILE = "dataset_info.json"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class PlanConfig:
    """Everything ``tunewise plan`` needs besides the pool and the model; each field is a flag."""

    budget: int = field(metadata={"help": "Labels to spend across all tasks."})
    strategy: str = field(default="weighted_task_diversity", metadata={
        "help": "weighted_task_diversity (default), task_diversity, efficiency (needs predictions), "
                "or any `tunewise select` strategy (random, uncertainty …)."})
    # From Python, ``strategy`` may also be a strategy object (``TaskDiversity(within=DifficultyWindow(c0=0.4))``),
    # which carries its own within-task order; the flag takes a name.
    within: str = field(default="random", metadata={
        "help": "Order inside each task: random, difficulty_window, difficulty_bucket, weighted_indicators (with "
                "its defaults; `tunewise select` sets their parameters)."})
    weights: Optional[Path] = field(default=None, metadata={
        "help": "Indicator weights (weights.json of `tunewise tune-weights`) to order examples within each task."})
    dev: Optional[Path] = field(default=None, metadata={
        "parser": SourcePath,
        "help": "Labelled dev file (read as the pool is: field flags, --split, --dataset-config, --keep-duplicates): "
                "learn indicator weights on it with the in-context proxy (paper D) and order examples within each "
                "task by them."})
    trials: int = field(default=30, metadata={"help": "With --dev: trials of the weight search."})
    target: float = field(default=0.9, metadata={
        "help": "Normalised target for 'labels needed': fraction of the way from zero-shot to ceiling."})
    coefficients: Optional[str] = field(default=None, metadata={
        "help": "CoS-Low → AUC coefficients: a calibration file, or paper:llama-3.1-8b | paper:mistral-7b | "
                "paper:qwen2.5-14b (default: the model's shipped calibration, if any)."})
    coslow: Optional[bool] = field(default=None, metadata={
        "help": "Measure CoS-Low per labelled task (about a minute per task on a CPU; default: on when "
                "coefficients are available)."})
    seed: int = field(default=0, metadata={"help": "Seed for every random choice."})
    cap_to_pool: bool = field(default=False, metadata={
        "help": "Let a budget above the pool plan the whole pool instead of stopping."})
    indicators: Optional[tuple[str, ...]] = field(default=None, metadata={
        "help": "Comma-separated indicators to score (default: those of `tunewise score`)."})
    batch_tokens: Optional[int] = field(default=None, metadata={"help": "Token budget per scoring batch."})
    cache_dir: Optional[Path] = field(default=None, metadata={"help": "Score cache folder (default: user cache)."})
    export: Optional[str] = field(default=None, metadata={
        "help": "Also write the labelled picks as training data: messages, prompt_completion or alpaca "
                "(train.<format>.jsonl, with LLaMA-Factory's dataset_info.json beside it)."})
    label_format: str = field(default="tunewise", metadata={
        "help": "Shape of to_label.jsonl: tunewise (prompt/response records), label-studio (its task JSON) "
                "or argilla (its record shape); a filled-in file of any of them reads back as a pool."})

    @property
    def strategy_name(self) -> str:
        """The strategy's registered name, whether it was given by name or as an object."""
        return self.strategy if isinstance(self.strategy, str) else self.strategy.name

    def __post_init__(self) -> None:
        from tunewise.errors import did_you_mean
        from tunewise.select import WITHIN_TASK, available_strategies

        from tunewise.select.base import check_label_budget

        check_label_budget(self.budget)
        from tunewise.training.finetune import MAX_SEED

        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise TunewiseError(f"--seed must be a whole number in [0, {MAX_SEED}], got {self.seed}", field="seed",
                                fix="pass e.g. --seed 0")
        if not 0 < self.target <= 1:
            raise TunewiseError(f"--target must be in (0, 1], got {self.target}", field="target",
                                fix="give a fraction of the way from zero-shot to ceiling, e.g. --target 0.9")
        if self.trials < 1:
            raise TunewiseError(f"--trials must be at least 1, got {self.trials}", field="trials",
                                fix="pass e.g. --trials 30")
        from tunewise.select import Strategy

        if isinstance(self.strategy, Strategy):
            # From Python a strategy nests as an object (TaskDiversity(within=DifficultyWindow(c0=0.4)))
            # and carries its own within-task order.
            if self.within != "random" or self.weights is not None or self.dev is not None:
                raise TunewiseError("a strategy object carries its own within-task order, so within, weights and "
                                    "dev do not apply to it", field="strategy",
                                    fix="set the order on the object, e.g. TaskDiversity(within=DifficultyWindow("
                                        "c0=0.4)), or give the strategy by name")
        elif not isinstance(self.strategy, str):
            raise TunewiseError(f"strategy must be a name or a strategy object, got {self.strategy!r} (a "
                                f"{type(self.strategy).__name__})", field="strategy",
                                fix="pass e.g. strategy='task_diversity' or strategy=tw.TaskDiversity()")
        elif self.strategy not in (known := available_strategies()):
            raise TunewiseError(f"unknown strategy '{self.strategy}'", field="strategy",
                                fix=did_you_mean(self.strategy, known))
        if self.within not in WITHIN_TASK:
            raise TunewiseError(f"unknown within-task order '{self.within}'", field="within",
                                fix=did_you_mean(self.within, WITHIN_TASK))
        if self.weights is not None and self.dev is not None:
            raise TunewiseError("give --weights or --dev, not both", field="dev",
                                fix="--dev learns the weights; --weights uses a file learned before")
        from tunewise.data.export import EXPORT_FORMATS
        from tunewise.data.label import LABEL_FORMATS

        if self.export is not None and self.export not in EXPORT_FORMATS:
            raise TunewiseError(f"unknown export format '{self.export}'", field="export",
                                fix=did_you_mean(self.export, EXPORT_FORMATS))
        if self.label_format not in LABEL_FORMATS:
            raise TunewiseError(f"unknown label format '{self.label_format}'", field="label-format",
                                fix=did_you_mean(self.label_format, LABEL_FORMATS))
        if (self.weights is not None or self.dev is not None) and self.within not in ("random",
                                                                                       "weighted_indicators"):
            raise TunewiseError(f"--weights and --dev order examples by indicator weights, not by --within "
                                f"{self.within}", field="within", fix="drop --within, or drop --weights / --dev")

    def indicator_names(self) -> list[str]:
        """The indicators to score: the asked ones (default: ``tunewise score``'s), plus what --dev or
        the --weights file's features need (the embedding, for diversity)."""
        from tunewise.indicators.registry import DEFAULT_INDICATORS, INDICATORS
        from tunewise.select.weighted import read_indicator_weights, source_columns

        names = list(self.indicators or DEFAULT_INDICATORS)
        needed = list(source_columns()) if self.dev is not None else []
        if self.weights is not None:
            needed = list(source_columns(list(read_indicator_weights(self.weights)["weights"])))
        indicators = [name for name, indicator in INDICATORS.items() if set(indicator.columns) & set(needed)]
        return list(dict.fromkeys([*names, *indicators]))


def resolve_coefficients(spec: str | None, model_name: str):
    """The coefficients asked for, else the model's known ones, else None (never made up)."""
    from tunewise.efficiency.predict import coefficients_for, load_coefficients

    if spec is not None:
        return load_coefficients(spec)
    try:
        return coefficients_for(model_name)
    except TunewiseError:
        return None


def check_plan_inputs(pool, config: PlanConfig, coefficients, *, source=None, output: str | Path | None = None,
                      config_file: str | Path | None = None, writes_config: bool = False) -> None:
    """Every precondition that can fail before the model does any work.

    With ``output``, also the run folder: it can be written, and the files this plan would write
    there (config.yaml too with ``writes_config``) are none of its inputs (the pool, --weights,
    --dev, --coefficients, ``config_file``) and none the user made or edited
    (:class:`~tunewise.io.RunFolder`).
    """
    from tunewise.efficiency.coslow import DEFAULT_K
    from tunewise.pipeline import EFFICIENCY, NO_CALIBRATION
    from tunewise.select.base import check_budget_fits_pool

    check_budget_fits_pool(config.budget, len(pool), source, config.cap_to_pool)
    if config.strategy_name == EFFICIENCY:
        if coefficients is None:
            raise TunewiseError(f"the efficiency strategy needs predicted learning curves, and there is "
                                f"{NO_CALIBRATION}", field="strategy",
                                fix="pass --coefficients, or use --strategy weighted_task_diversity")
        if config.coslow is False:
            raise TunewiseError("the efficiency strategy predicts each task's curve from its CoS-Low, and --no-coslow "
                                "turns that off", field="coslow", fix="drop --no-coslow, or choose another --strategy")
        labelled = {task: 0 for task in pool.tasks}
        for example in pool.examples:
            labelled[example.task] += example.response is not None
        short = {task: count for task, count in labelled.items() if count < DEFAULT_K}
        if short:
            listed = ", ".join(f"'{task}' ({count})" for task, count in list(short.items())[:5])
            raise TunewiseError(f"the efficiency strategy needs CoS-Low for every task, from at least {DEFAULT_K} "
                                f"labelled examples each, and {len(short)} of {len(labelled)} tasks have fewer: "
                                f"{listed}", file=pool.source, field="strategy",
                                fix=f"label at least {DEFAULT_K} examples of each task, or use --strategy "
                                    "weighted_task_diversity")
    if config.dev is not None and not pool.labelled:
        raise TunewiseError("--dev learns weights from demonstrations of the pool, and the pool has unlabelled "
                            "examples", file=pool.source, field="dev",
                            fix="label the pool first, or drop --dev (and pass --weights learned elsewhere)")
    if config.weights is not None:
        from tunewise.select import read_indicator_weights

        read_indicator_weights(config.weights)
    if output is not None:
        from tunewise.io import RunFolder

        coefficients_file = config.coefficients if config.coefficients and Path(config.coefficients).exists() else None
        names = run_folder_names(config, pool.labelled, _copies_weights(config, Path(output)))
        if writes_config and _writes_config(config_file, Path(output)):
            names.append(CONFIG_FILE)
        RunFolder(output).check(names, inputs={"the pool": source or pool.source, "--weights": config.weights,
                                               "--dev": config.dev, "--coefficients": coefficients_file,
                                               "--config": config_file})


def _writes_config(config_file: str | Path | None, output: Path) -> bool:
    """config.yaml is written unless the --config file is the run folder's own (used in place, as read)."""
    from tunewise.io import same_file

    return config_file is None or not same_file(config_file, output / CONFIG_FILE)


def run_folder_names(config: PlanConfig, labelled: bool, writes_weights: bool) -> list[str]:
    """The files a plan may write into its run folder: to_label only for a pool with unlabelled
    examples, weights.json only when it learns weights or copies a weights file from elsewhere."""
    from tunewise.data.label import to_label_file_name
    from tunewise.report.html import REPORT_FILE
    from tunewise.select.manifest import meta_path

    names = [SCORES_FILE, PLAN_FILE, SELECTION_FILE, meta_path(SELECTION_FILE).name, REPORT_FILE]
    if not labelled:
        names.append(to_label_file_name(config.label_format))
    if config.export is not None:
        names += [_export_file_name(config.export), DATASET_INFO_FILE]
    if writes_weights:
        names.append(WEIGHTS_FILE)
    return names


def _copies_weights(config: PlanConfig, output: Path) -> bool:
    """Whether weights.json is written: learned with --dev, or copied from a --weights file elsewhere
    (a weights file already in the run folder is used in place, never rewritten)."""
    from tunewise.io import same_file

    return config.dev is not None or (config.weights is not None and not same_file(config.weights,
                                                                                    output / WEIGHTS_FILE))


def _export_file_name(export: str) -> str:
    return "train.alpaca.json" if export == "alpaca" else f"train.{export}.jsonl"


def plan(pool, model, config: PlanConfig, output: str | Path, *, model_name: str | None = None,
         task_field: str | None = None, progress: Progress | None = None, run_config: dict | None = None,
         config_file: str | Path | None = None):
    """Score the pool, measure CoS-Low, learn weights, plan, and write the run folder ``output``.

    Parameters
    ----------
    pool:
        A :class:`~tunewise.data.pool.Pool`.
    model:
        A scoring backend (:func:`tunewise.model.load_backend`); CoS-Low and the weight search use
        the same model.
    config:
        The :class:`PlanConfig`.
    output:
        The run folder (created): scores.parquet, plan.json, selection.jsonl and its meta,
        to_label.jsonl when picks lack labels, weights.json with --dev, report.html.
    model_name:
        The name the model was loaded by, recorded in the plan and used to find shipped
        coefficients (default: the backend's fingerprint).
    task_field:
        The field that named the tasks, used to read the ``--dev`` file the same way.
    run_config:
        The command's resolved flags, written to ``config.yaml`` in the run folder so that
        ``tunewise plan --config RUN/config.yaml`` runs it again.

    Returns
    -------
    :class:`~tunewise.pipeline.Plan`; ``document["coslow"]`` holds the CoS-Low measurements.

    Raises
    ------
    TunewiseError
        A precondition fails (checked before any model work; see :func:`check_plan_inputs`).
    """
    from tunewise.model.load import describe_model
    from tunewise.indicators.score import score, scores_provenance
    from tunewise.pipeline import make_plan

    import torch

    progress = progress or _no_progress
    output = Path(output)
    name = model_name or model.fingerprint
    coefficients = resolve_coefficients(config.coefficients, name)
    check_plan_inputs(pool, config, coefficients, source=pool.source, output=output, config_file=config_file,
                      writes_config=run_config is not None)
    if run_config is not None and not _writes_config(config_file, output):
        run_config = None  # the run folder's own config.yaml was the --config input: it stays as it was
    indicators = config.indicator_names()
    with progress("scoring", "examples") as update:
        table = score(pool, model, indicators, cache_dir=config.cache_dir, progress=update,
                      max_batch_tokens=config.batch_tokens)
    provenance = scores_provenance(model, indicators, pool.source) | pool.provenance()

    measure = coefficients is not None if config.coslow is None else config.coslow
    log.info("plan of %d examples in %d tasks, budget %d, strategy %s; CoS-Low %s", len(pool), len(pool.tasks),
             config.budget, config.strategy_name, "measured" if measure else "not measured")
    coslow_results = coslow_per_task(table, model, name, config.seed, progress) if measure else {}
    from tunewise.select import WeightedIndicators, read_indicator_weights

    within, weights_content = config.within, None
    if config.dev is not None:
        learned = learn_weights(table, model, config, output, task_field, progress, reading=pool.reading)
        within = WeightedIndicators(weights=learned["weights"], orientation=learned["orientation"])
        weights_content = encode_json(learned)
    elif config.weights is not None:
        within = WeightedIndicators(**read_indicator_weights(config.weights))
        if _copies_weights(config, output):
            weights_content = Path(config.weights).read_bytes()
    # Scores may come from the cache, computed with other threads; the plan records this run's.
    result = make_plan(table, config.budget, strategy=config.strategy, within=within, target=config.target,
                       coefficients=coefficients,
                       coslow_values={task: value["coslow"] for task, value in coslow_results.items()},
                       seed=config.seed,
                       provenance={"model": name, "model_description": describe_model(name), **provenance,
                                   "torch_threads": torch.get_num_threads()})
    if coslow_results:
        result.document["coslow"] = coslow_results
    if config.export is not None and all(e.response is None for e in table.take(result.selection.positions).examples):
        result.document["notes"].append(f"no pick has a label yet, so there is nothing to export as "
                                        f"{config.export}: label to_label first and plan the labelled file")
    write_run_folder(output, table, result, provenance, weights_content, export=config.export,
                     label_format=config.label_format, run_config=run_config)
    return result


@contextlib.contextmanager
def _no_progress(stage: str, unit: str):
    yield None


def coslow_per_task(table, model, model_name: str, seed: int, progress: Progress) -> dict:
    """CoS-Low of every task of ``table`` (the scored pool) with enough labelled examples
    (:func:`tunewise.pipeline.measure_coslow`), on the model that scored it: its adapter is
    attached in place and removed, never on a second copy (the gradients run in the model's dtype,
    as the paper's bf16 runs do, and accumulate in fp32)."""
    from tunewise.pipeline import measure_coslow

    loaded = getattr(model, "loaded", None)
    if loaded is None:
        raise TunewiseError(f"CoS-Low needs the gradients of a real model, and '{model_name}' has none",
                            field="model", fix="use --no-coslow, or --model smollm2, tiny-random or a model folder")
    with progress("CoS-Low gradients", "examples") as update:
        return measure_coslow(table, loaded, seed=seed, progress=update)


def learn_weights(table, model, config: PlanConfig, output: Path, task_field: str | None,
                  progress: Progress, reading=None) -> dict:
    """``--dev``: learn indicator weights for ``table`` (the scored pool) on a labelled dev set
    (DESIGN.md §4), as ``tunewise tune-weights`` does with its defaults; returns the weights.json
    document (the search itself resumes from RUN_DIR/weights.run). The dev set is read with
    ``task_field`` and ``reading`` (a :class:`~tunewise.data.pool.PoolReading`: how the pool was
    read), as ``tune-weights`` reads it."""
    import optuna

    from tunewise.data.pool import PoolReading, read_labelled_pool
    from tunewise.data.table import embedding_matrix
    from tunewise.indicators.score import score
    from tunewise.select.weighted import FEATURES, indicator_features
    from tunewise.weights.anchors import embedding_stratified_anchors
    from tunewise.weights.proxy import ProxyModel
    from tunewise.weights.search import tune_weights

    reading = reading or PoolReading()
    dev = read_labelled_pool(config.dev, task_field, "dev", reading)
    matrix = indicator_features(table.scores, FEATURES)
    # Optuna's per-trial log lines would break a progress display.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with progress("scoring the dev set", "examples") as update:
        dev_table = score(dev, model, ["embedding"], progress=update)
    anchors = embedding_stratified_anchors(embedding_matrix(dev_table.scores), seed=config.seed)
    anchor_examples = list(dev_table.take(anchors.positions).examples)
    with progress("learning indicator weights", "trials") as update:
        tuned = tune_weights(matrix, table.examples, anchor_examples, anchors, ProxyModel(model),
                             output / "weights.run", trials=config.trials, seed=config.seed, progress=update)
    return {**tuned.document(), "dev": str(config.dev), **reading.provenance()}


def write_run_folder(output: Path, table, result, provenance: dict, weights_content: bytes | None, *,
                     export: str | None = None, label_format: str = "tunewise", run_config: dict | None = None) -> None:
    """The run folder of ``result``, a plan of ``table`` (the scored pool): scores.parquet,
    plan.json, selection.jsonl (+ meta), the picks to label when they lack labels, train.<export>
    and dataset_info.json with ``export``, the weights used, config.yaml with ``run_config``, then
    report.html.

    Written through :class:`~tunewise.io.RunFolder`: only files tunewise wrote there are replaced,
    and an earlier to-label file is removed only while it still holds what tunewise wrote (a
    filled-in copy is the user's work and stays).
    """
    from tunewise.data.export import export_examples, llamafactory_dataset_info
    from tunewise.data.pool import READING_PROVENANCE_KEYS
    from tunewise.data.label import LABEL_FORMATS, encode_to_label, to_label_file_name
    from tunewise.data.table import encode_scores
    from tunewise.io import RunFolder
    from tunewise.report.html import build_report
    from tunewise.select.manifest import meta_path, selection_meta, selection_records

    meta = selection_meta(table, result.selection, result.strategy, seed=result.document["seed"],
                          budget=result.document["budget"], scores_provenance=provenance,
                          scores_path=str(output / SCORES_FILE))
    # where `tunewise select --pool` records how the pool was read too
    meta.update({key: provenance[key] for key in READING_PROVENANCE_KEYS if key in provenance})
    files = {
        SCORES_FILE: encode_scores(table.scores, provenance),
        PLAN_FILE: encode_json(result.document),
        SELECTION_FILE: encode_jsonl(selection_records(table, result.selection)),
        meta_path(SELECTION_FILE).name: encode_json(meta),
    }
    if run_config is not None:
        import yaml

        files[CONFIG_FILE] = yaml.safe_dump(run_config, sort_keys=True, allow_unicode=True).encode("utf-8")
    picks = table.take(result.selection.positions).examples
    unlabelled = [example for example in picks if example.response is None]
    if unlabelled:
        files[to_label_file_name(label_format)] = encode_to_label(unlabelled, label_format)
    labelled = [example for example in picks if example.response is not None]
    if export is not None and labelled:
        name = _export_file_name(export)
        files[name] = export_examples(labelled, export)
        if export != "prompt_completion":
            files[DATASET_INFO_FILE] = encode_json(llamafactory_dataset_info("tunewise_plan", name, export))
    if weights_content is not None:
        files[WEIGHTS_FILE] = weights_content
    stale = [] if unlabelled else [to_label_file_name(f) for f in LABEL_FORMATS]
    RunFolder(output).write(files, remove=stale)
    build_report(output)


__all__ = ["PlanConfig", "check_plan_inputs", "run_folder_names", "learn_weights", "plan", "resolve_coefficients", "write_run_folder"]
