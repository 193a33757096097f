"""Sweeps: strategies x budgets x seeds of select → fine-tune → evaluate, and their summary.

A sweep lives in one folder::

    RUN_DIR/sweep_config.json            what the runs depend on (model, data, fine-tune, metric)
    RUN_DIR/runs/zero_shot.json          the base model on the test set, evaluated once
    RUN_DIR/runs/<strategy>__b<budget>__s<seed>.json   one finished run each
    RUN_DIR/sweep.json                   learning curves, AUC, gain over random (summarise_sweep)
    RUN_DIR/curves.png

Every run also records its test score on the easy, medium and hard third of the test set, by the
length of the reference answer in tokens within each task (paper C's measure of difficulty): paper
C's mechanism, easy training data helping easy test items and hurting hard ones, shows there.

Every run depends only on its (strategy, budget, seed) and the sweep's settings, and is written
atomically when it finishes; a finished run is never redone. A killed sweep therefore resumes
where it stopped and ends with the same results as an uninterrupted one, and more budgets,
strategies or seeds can be added to a finished sweep later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from tunewise import __version__
from tunewise.data.pool import READING_PROVENANCE_KEYS
from tunewise.errors import TunewiseError
from tunewise.io import atomic_path, check_output_folder, write_json
from tunewise.training.evaluate import DEFAULT_BATCH_TOKENS, evaluate, task_scores
from tunewise.training.finetune import MAX_SEED, FinetuneConfig, finetune

BASELINE = "random"
ZERO_SHOT = "zero_shot"
CONFIG_FILE = "sweep_config.json"
SUMMARY_FILE = "sweep.json"
PLOT_FILE = "curves.png"
RUNS_FOLDER = "runs"
CONFIDENCE_LEVEL = 0.95
ENGINES = ("local", "processes", "ray")
DEFAULT_WORKERS = 2


# A strategy spec's ':' ',' '=' are not portable in file names; these stand in for them there.
# Spec values may not hold them (see _SPEC_VALUE), so the mapping is one-to-one.
@dataclasses.dataclass(frozen=True)
class SweepRun:
    """How every run of a sweep loads its model and is evaluated (one declaration for ``sweep`` and
    ``calibrate-difficulty``; its fields are their flags)."""

    model: str = dataclasses.field(default="smollm2", metadata={
        "help": "smollm2 (bundled SmolLM2-135M-Instruct Q4_1), tiny-random, or a model folder."})
    task_field: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Record field holding the task name (pool and test)."})
    metric: str = dataclasses.field(default="auto", metadata={
        "help": "auto (per task), exact_match, multiple_choice, gsm8k, choice (log-likelihood of each choice, "
                "nothing generated) or log_likelihood (mean log-probability per gold-answer token)."})
    max_new_tokens: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Longest answer (default: each task's longest gold answer + 16 tokens)."})
    batch_tokens: int = dataclasses.field(default=8192, metadata={"help": "Token budget per generation batch."})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1 …"})
    engine: str = dataclasses.field(default="local", metadata={
        "help": "local (one run after another, in this process), processes (--workers runs at a time in worker "
                "processes on this CPU, no Ray) or ray (each run a Ray task: one GPU each on CUDA, else --workers "
                "at a time sharing the CPU threads; needs the tunewise[ray] extra)."})
    workers: int = dataclasses.field(default=DEFAULT_WORKERS, metadata={
        "help": "With --engine processes, or ray on the CPU: runs at a time, each on cores / workers threads."})

    def __post_init__(self) -> None:
        _check_engine(self.engine, self.workers)
        for name in ("max_new_tokens", "batch_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TunewiseError(f"--{name.replace('_', '-')} must be a whole number ≥ 1, got {value!r}",
                                    field=name, fix=f"pass --{name.replace('_', '-')} 1 or more")


_FILE_NAME_SAFE = str.maketrans({":": "@", ",": "+", "=": "~"})
_SPEC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPEC_VALUE = re.compile(r"[A-Za-z0-9_.-]+")


def run_file_name(strategy: str, budget: int, seed: int) -> str:
    """``<strategy>__b<budget>__s<seed>.json``, a strategy spec's ``:`` ``,`` ``=`` written as ``@`` ``+`` ``~``."""
    return f"{strategy.translate(_FILE_NAME_SAFE)}__b{budget}__s{seed}.json"


def split_strategy_specs(text: str) -> list[str]:
    """Split a comma-separated list of strategy specs, keeping each spec's own parameters with it.

    ``"random,difficulty_window:c0=0.15,beta=0"`` → ``["random", "difficulty_window:c0=0.15,beta=0"]``:
    a part holding ``=`` but no ``:`` continues the spec before it.
    """
    specs: list[str] = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and specs and ":" in specs[-1]:
            specs[-1] += f",{part}"
        else:
            specs.append(part)
    return specs


def parse_strategy_spec(spec: str) -> tuple[str, dict[str, int | float | str]]:
    """``"difficulty_window:c0=0.15,beta=0"`` → ``("difficulty_window", {"c0": 0.15, "beta": 0})``.

    A spec is a strategy name, optionally followed by a colon and comma-separated ``key=value``
    parameters; each value becomes an int, else a float, else stays a string. Only the syntax is
    checked here; :func:`strategy_from_spec` checks the name and parameters.
    """
    name, _, parameter_text = spec.partition(":")
    parameters: dict[str, int | float | str] = {}
    for assignment in parameter_text.split(",") if parameter_text else ():
        key, equals, value = (part.strip() for part in assignment.partition("="))
        if not equals or not _SPEC_NAME.fullmatch(key) or not _SPEC_VALUE.fullmatch(value) or key in parameters:
            raise TunewiseError(
                f"strategy spec '{spec}' has a malformed parameter '{assignment}'", field="strategies",
                fix="write NAME or NAME:key=value,key=value, each key once, values of letters, digits, "
                    "'.', '_' and '-' (e.g. difficulty_window:c0=0.15,beta=0)",
            )
        parameters[key] = _spec_value(value)
    if not _SPEC_NAME.fullmatch(name.strip()):
        raise TunewiseError(f"strategy spec '{spec}' does not start with a strategy name", field="strategies",
                            fix="use a strategy name from `tunewise select --help`, e.g. difficulty_window:c0=0.15")
    return name.strip(), parameters


def _spec_value(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def strategy_from_spec(spec: str, extra_parameters: Mapping | None = None):
    """The :class:`~tunewise.select.Strategy` a spec names, its parameters checked by
    :func:`~tunewise.select.get_strategy`; any error names the whole spec.

    A task strategy's ``within`` is given by name and its parameters flat beside it, e.g.
    ``task_diversity:within=difficulty_window,c0=0.15``. ``extra_parameters`` adds parameters a
    spec's text cannot carry, such as the mapping of predicted AUCs that ``efficiency`` takes; a
    parameter may not be given both ways.
    """
    from tunewise.select import get_strategy

    name, parameters = parse_strategy_spec(spec)
    twice = sorted(set(parameters) & set(extra_parameters or {}))
    if twice:
        raise TunewiseError(f"strategy spec '{spec}' and its extra parameters both set {', '.join(twice)}",
                            field="strategies", fix="give each parameter one way")
    parameters.update(extra_parameters or {})
    try:
        return get_strategy(name, **parameters)
    except TunewiseError as error:
        raise TunewiseError(f"strategy spec '{spec}': {error.message}", field="strategies", fix=error.fix) from None


def run_sweep(
    pool,
    test,
    budgets: Sequence[int],
    strategies: Sequence[str],
    seeds: Sequence[int],
    model_name: str,
    run_dir: str | os.PathLike,
    finetune_config: FinetuneConfig | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    metric: str = "auto",
    max_new_tokens: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int, str], None] | None = None,
    strategy_parameters: Mapping[str, Mapping] | None = None,
    sft_overrides: Mapping | None = None,
    engine: str = "local",
    workers: int = DEFAULT_WORKERS,
    loaded=None,
) -> dict:
    """Run every missing (strategy, budget, seed) and the zero-shot baseline, then summarise.

    Parameters
    ----------
    pool, test:
        Labelled :class:`~tunewise.data.pool.Pool` s (or lists of examples): the examples to select
        from, and the held-out examples every run is evaluated on.
    budgets, strategies, seeds:
        The grid. Strategies are specs (:func:`parse_strategy_spec`): a name known to
        :func:`tunewise.select.get_strategy`, optionally with parameters, e.g.
        ``difficulty_window:c0=0.15,beta=0``; the spec is the runs' strategy label. The seed
        drives both the selection and the fine-tune.
    model_name:
        The base model (see :func:`tunewise.model.load.load_model`); every run gets a fresh LoRA on it.
    finetune_config:
        Hyperparameters shared by every run (its ``seed`` is replaced by the run's seed), e.g.
        ``FinetuneConfig.from_profile("paper-a")``. With ``eval_steps`` set, each run's validation
        examples are drawn (seeded) from the pool examples it did not select, capped at
        ``validation_fraction`` of its budget, as paper A's validation split is separate from
        the training budget.
    dtype:
        Compute type for loading, training and evaluation (:func:`tunewise.model.precision.resolve_dtype`).
    sft_overrides:
        TRL ``SFTConfig`` fields passed through to every fine-tune (:func:`tunewise.training.finetune.read_sft_overrides`).
    metric, max_new_tokens, batch_tokens:
        Passed to :func:`tunewise.training.evaluate.evaluate`.
    progress:
        Called with ``(runs_done, runs_total, label)`` before each run starts (with ``engine="ray"``
        or ``"processes"``: once when the runs are handed out, then as each finishes) and once at
        the end; finished runs found on disk count as done.
    engine, workers:
        ``"local"`` runs the fine-tunes one after another in this process, on the model loaded
        here. ``"processes"`` runs ``workers`` at a time in worker processes on this CPU, each
        with ``cores / workers`` torch threads and its own copy of the model, the zero-shot
        evaluation among them (:mod:`tunewise.training.process_sweep`; no extra needed). ``"ray"``
        runs each as a Ray task with its own resources (:func:`tunewise.training.ray_sweep.run_on_ray`):
        one GPU each on a CUDA device, otherwise ``workers`` tasks at a time sharing the CPU
        threads. All three write the same records to the same folder, and all skip finished runs.
        Ray is an optional extra (``tunewise[ray]``).
    strategy_parameters:
        Spec → parameters its text cannot carry (:func:`strategy_from_spec`), e.g.
        ``{"efficiency": {"predicted_auc": {...}, "max_budget": 16}}``; each run of that spec
        records them.
    loaded:
        The :class:`~tunewise.model.load.LoadedModel` of ``model_name`` when the caller already
        has it (loaded with this ``device`` and ``dtype``), instead of a second load here; the
        local engine fine-tunes on it (each adapter is removed after its run).

    Returns the summary that :func:`summarise_sweep` writes to ``RUN_DIR/sweep.json``.
    """
    with start_sweep(pool, test, budgets, strategies, seeds, model_name, run_dir, finetune_config, device=device,
                     dtype=dtype, metric=metric, max_new_tokens=max_new_tokens, batch_tokens=batch_tokens,
                     progress=progress, strategy_parameters=strategy_parameters, sft_overrides=sft_overrides,
                     engine=engine, workers=workers, loaded=loaded) as sweep:
        return sweep.finish(progress)


def start_sweep(
    pool,
    test,
    budgets: Sequence[int],
    strategies: Sequence[str],
    seeds: Sequence[int],
    model_name: str,
    run_dir: str | os.PathLike,
    finetune_config: FinetuneConfig | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    metric: str = "auto",
    max_new_tokens: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int, str], None] | None = None,
    strategy_parameters: Mapping[str, Mapping] | None = None,
    sft_overrides: Mapping | None = None,
    engine: str = "local",
    workers: int = DEFAULT_WORKERS,
    loaded=None,
) -> "StartedSweep":
    """:func:`run_sweep` in two halves: everything up to the runs, then :meth:`StartedSweep.finish`.

    Takes :func:`run_sweep`'s arguments. It checks them, claims the folder, scores the pool for
    the strategies and (local and Ray engines) evaluates zero-shot; with ``engine="processes"``
    it also hands every pending run, zero-shot included, to the worker processes, which start
    on them at once. The caller may then use this process for other work (``tunewise demo``
    measures CoS-Low meanwhile) before ``finish`` collects the runs and summarises. Use it as a
    context manager: leaving the block unfinished stops the workers.
    """
    from tunewise.model.load import load_model
    from tunewise.model.precision import resolve_dtype

    pool_examples = list(getattr(pool, "examples", pool))
    test_examples = list(getattr(test, "examples", test))
    finetune_config = finetune_config or FinetuneConfig()
    budgets, strategies, seeds = _check_grid(budgets, strategies, seeds, len(pool_examples))
    _check_engine(engine, workers)
    strategy_parameters = {spec: dict(parameters) for spec, parameters in (strategy_parameters or {}).items()}
    unknown = sorted(set(strategy_parameters) - set(strategies))
    if unknown:
        raise TunewiseError(f"extra parameters for strategies that are not swept: {', '.join(unknown)}",
                            field="strategies", fix="key the extra parameters by a swept strategy spec")
    chosen = {spec: strategy_from_spec(spec, strategy_parameters.get(spec)) for spec in strategies}
    _check_examples(pool_examples, test_examples)
    if engine == "ray":
        from tunewise.training.ray_sweep import import_ray

        import_ray()  # before any model work: a missing extra is the user's to fix, not a crash later

    run_dir = Path(run_dir)
    runs = run_dir / RUNS_FOLDER
    check_sweep_folder(run_dir)
    if loaded is None:
        loaded = load_model(model_name, device=device, dtype=dtype)
    if engine == "processes":
        from tunewise.training.process_sweep import check_device

        check_device(loaded.device)
    settings = {
        "model": model_name,
        "model_fingerprint": loaded.fingerprint,
        "pool": {"examples": len(pool_examples), "ids_sha256": _ids_digest(pool_examples)},
        "test": {"examples": len(test_examples), "ids_sha256": _ids_digest(test_examples)},
        "finetune_config": {k: v for k, v in dataclasses.asdict(finetune_config).items() if k != "seed"},
        "train_dtype": resolve_dtype(dtype, loaded.device),
        "sft_overrides": dict(sft_overrides or {}),
        "metric": metric,
        "max_new_tokens": max_new_tokens,
        **_columns_provenance(pool, test),
    }
    _claim_run_dir(run_dir, settings)

    planned = [(strategy, budget, seed) for seed in seeds for budget in budgets for strategy in strategies]
    pending = [run for run in planned if not (runs / run_file_name(*run)).exists()]
    zero_shot_path = runs / f"{ZERO_SHOT}.json"
    sweep = StartedSweep(runs, model_name, engine, workers, pending, not zero_shot_path.exists(),
                         total=len(planned) + 1, loaded=loaded)
    sweep.done = sweep.total - len(pending) - (1 if sweep.zero_shot_pending else 0)

    inputs = RunInputs(pool_examples, test_examples, None, chosen, strategy_parameters, finetune_config,
                       tertiles_by_answer_length(test_examples, loaded.tokenizer), dtype, metric, max_new_tokens,
                       batch_tokens, sft_overrides)
    if sweep.zero_shot_pending and engine != "processes":
        if progress is not None:
            progress(sweep.done, sweep.total, "zero-shot")
        sweep.record(ZERO_SHOT, zero_shot_record(loaded, inputs))

    def scoring_progress(scored: int, to_score: int) -> None:
        if progress is not None:
            progress(sweep.done, sweep.total, f"scoring the pool {scored}/{to_score}")

    scores = _selection_scores(pool_examples, [chosen[s] for s, _, _ in pending], loaded, scoring_progress)
    sweep.inputs = dataclasses.replace(inputs, scores=scores)
    if engine == "processes":
        sweep.start_processes()
    return sweep


@dataclasses.dataclass(eq=False)
class StartedSweep:
    """A sweep whose folder is claimed and whose pool is scored (:func:`start_sweep`): the runs
    still to do, and with ``engine="processes"`` the worker processes doing them."""

    runs_folder: Path
    model_name: str
    engine: str
    workers: int
    pending: list
    zero_shot_pending: bool
    total: int
    loaded: object = None
    inputs: RunInputs | None = None
    done: int = 0
    _workers: object = None

    def record(self, run: tuple[str, int, int] | str, record: dict) -> None:
        """Write one finished run's record (``ZERO_SHOT`` for the zero-shot one) and count it."""
        name = f"{ZERO_SHOT}.json" if run == ZERO_SHOT else run_file_name(*run)
        write_json(self.runs_folder / name, record)
        if run == ZERO_SHOT:
            self.zero_shot_pending = False
        self.done += 1

    def start_processes(self) -> None:
        from tunewise.training.process_sweep import RunWorkers

        if not self.pending and not self.zero_shot_pending:
            return  # a finished sweep resumed: no worker to start
        # Longest first (a run's fine-tune grows with its budget; zero-shot only evaluates), so
        # that no long run starts last and keeps one worker busy while the others idle.
        work = sorted(self.pending, key=lambda run: -run[1])
        device = self.loaded.device
        self.loaded = None  # the workers load their own; this process may free its copy
        self._workers = RunWorkers(self.inputs, self.model_name, device, self.workers)
        for run in work:
            self._workers.submit(run, run_one, *run)
        if self.zero_shot_pending:
            self._workers.submit(ZERO_SHOT, zero_shot_record)

    def finish(self, progress: Callable[[int, int, str], None] | None = None) -> dict:
        """Run (or collect) every pending run, writing each record as it finishes; then summarise."""
        if self._workers is not None:
            if progress is not None:
                progress(self.done, self.total, self._workers.describe())
            for run, record in self._workers.finished():
                self.record(run, record)
                if progress is not None:
                    label = "zero-shot" if run == ZERO_SHOT else f"{run[0]} b={run[1]} s={run[2]}"
                    progress(self.done, self.total, f"{label} finished")
            self._workers.close()
            self._workers = None
        elif self.engine == "ray" and self.pending:
            from tunewise.training.ray_sweep import run_on_ray

            device_type, self.loaded = self.loaded.device.type, None  # the Ray tasks load their own
            run_on_ray(self.pending, self.inputs, run_one, self.model_name, device_type, self.workers, self.record,
                       progress=None if progress is None else lambda label: progress(self.done, self.total, label))
        else:
            for run in self.pending:
                if progress is not None:
                    progress(self.done, self.total, f"{run[0]} b={run[1]} s={run[2]}")
                self.record(run, run_one(self.loaded, self.inputs, *run))
        self.pending = []
        if progress is not None:
            progress(self.done, self.total, "done")
        return summarise_sweep(self.runs_folder.parent)

    def close(self) -> None:
        """Stop the worker processes, if any are still running (records already written stay)."""
        if self._workers is not None:
            self._workers.terminate()
            self._workers = None

    def __enter__(self) -> "StartedSweep":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def zero_shot_record(loaded, inputs: "RunInputs") -> dict:
    """The base model's record on the test set (the curves' budget 0)."""
    return _run_record(ZERO_SHOT, 0, None, inputs.evaluate(loaded, loaded.model), inputs.test_tertiles)


def _check_engine(engine: str, workers: int) -> None:
    if engine not in ENGINES:
        raise TunewiseError(f"unknown engine '{engine}'", field="engine", fix="use --engine local or ray")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TunewiseError(f"--workers must be a whole number ≥ 1, got {workers!r}", field="workers",
                            fix="pass e.g. --workers 2")


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """Everything one run of a sweep needs besides its (strategy, budget, seed) and the model: what
    the local engine shares between its runs, and what the Ray engine sends to every task."""

    pool_examples: list
    test_examples: list
    scores: object  # the strategies' scores table (pandas), None until the pool is scored
    strategies: Mapping  # spec → Strategy
    strategy_parameters: Mapping[str, Mapping]
    finetune_config: FinetuneConfig
    test_tertiles: Mapping[str, str]
    dtype: str | None
    metric: str
    max_new_tokens: int | None
    batch_tokens: int
    sft_overrides: Mapping | None

    def evaluate(self, loaded, model) -> dict:
        return evaluate(model, loaded.tokenizer, self.test_examples, metric=self.metric,
                        max_new_tokens=self.max_new_tokens, batch_tokens=self.batch_tokens,
                        truncate=self.finetune_config.truncate)


def run_one(loaded, inputs: RunInputs, strategy: str, budget: int, seed: int) -> dict:
    """Select, fine-tune on ``loaded`` (its adapter removed afterwards) and evaluate one run: its record.

    The record depends only on the run's (strategy, budget, seed), the inputs and the model, so
    either engine, in any process, writes the same one.
    """
    pool_examples = inputs.pool_examples
    selection = inputs.strategies[strategy].select(inputs.scores, budget, seed)
    selected = [pool_examples[position] for position in selection.positions]
    validation = None
    if inputs.finetune_config.eval_steps is not None:
        chosen_positions = set(selection.positions)
        validation = [e for k, e in enumerate(pool_examples) if k not in chosen_positions] or None
    with finetune(loaded, selected, dataclasses.replace(inputs.finetune_config, seed=seed), validation=validation,
                  dtype=inputs.dtype, sft_overrides=inputs.sft_overrides) as trained:
        results = inputs.evaluate(loaded, trained.model)
    record = _run_record(strategy, budget, seed, results, inputs.test_tertiles)
    record.update(_selected_ids(selected))
    record["selection_notes"] = selection.notes
    record["selection_details"] = selection.details
    if strategy in inputs.strategy_parameters:
        record["strategy_parameters"] = inputs.strategy_parameters[strategy]
    record["training"] = trained.log.to_dict()
    return record


def _check_grid(budgets, strategies, seeds, pool_size: int):
    budgets, strategies, seeds = list(budgets), list(strategies), list(seeds)
    for name, values in (("budgets", budgets), ("strategies", strategies), ("seeds", seeds)):
        if not values:
            raise TunewiseError(f"no {name} given", field=name, fix=f"pass at least one of --{name}")
        if len(set(values)) != len(values):
            raise TunewiseError(f"{name} repeat a value: {values}", field=name, fix="list each value once")
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise TunewiseError(f"budget {budget!r} is not a positive whole number", field="budgets",
                                fix="use budgets such as 50,100,200 (zero-shot is always evaluated)")
        if budget > pool_size:
            raise TunewiseError(f"budget {budget} is larger than the pool ({pool_size} examples)",
                                field="budgets", fix=f"use budgets up to {pool_size}, or a larger pool")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise TunewiseError(f"seed {seed!r} is not a whole number in [0, {MAX_SEED}]", field="seeds",
                                fix="use seeds such as 0,1,2")
    for strategy in strategies:
        if "__" in strategy or strategy == ZERO_SHOT:
            raise TunewiseError(f"'{strategy}' cannot name a sweep strategy", field="strategies",
                                fix="use a strategy name from `tunewise select --help`")
    return sorted(budgets), strategies, sorted(seeds)


def _check_examples(pool_examples, test_examples) -> None:
    for name, examples in (("pool", pool_examples), ("test", test_examples)):
        if not examples:
            raise TunewiseError(f"the {name} set has no examples", field=name, fix="pass a non-empty file")
        unlabelled = sum(example.response is None for example in examples)
        if unlabelled:
            raise TunewiseError(f"{unlabelled} of {len(examples)} {name} examples have no response", field=name,
                                fix="a sweep fine-tunes and evaluates, so both sets must be labelled")
    leaked = {example.id for example in pool_examples} & {example.id for example in test_examples}
    if leaked:
        raise TunewiseError(f"{len(leaked)} test examples also appear in the pool (e.g. {sorted(leaked)[0]})",
                            field="test", fix="remove them from the pool or the test set")


def _columns_provenance(pool, test) -> dict:
    """How the pool was read (a :class:`~tunewise.data.pool.Pool`'s ``provenance()``: ``columns``,
    ``split``, ``dataset_config``, ``keep_duplicates``), and the test set's under ``test_reading``
    when it was read another way; ``{}`` when neither says (lists of examples say nothing)."""
    pool_reading = pool.provenance() if hasattr(pool, "provenance") else {}
    test_reading = test.provenance() if hasattr(test, "provenance") else {}
    differs = hasattr(test, "provenance") and test_reading != pool_reading
    return {**pool_reading, **({"test_reading": test_reading} if differs else {})}


def _selected_ids(selected) -> dict:
    """A run's picks: ``selected_ids`` (content hashes) and, when the pool has its own ids
    (``--id-field``), ``selected_user_ids`` in the same order."""
    ids = {"selected_ids": [example.id for example in selected]}
    if any(example.user_id is not None for example in selected):
        ids["selected_user_ids"] = [example.user_id for example in selected]
    return ids


def _ids_digest(examples) -> str:
    return hashlib.sha256("\n".join(example.id for example in examples).encode()).hexdigest()[:16]


def check_sweep_folder(run_dir: str | os.PathLike) -> None:
    """Before any model work: the folder can be written, and is new, empty or a readable sweep folder."""
    run_dir = Path(run_dir)
    check_output_folder(run_dir)
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        read_settings(config_path)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise TunewiseError("the output folder exists and is not a sweep folder", file=str(run_dir),
                            fix="pass a new or empty folder with -o")


def read_settings(config_path: Path) -> dict:
    """The settings a sweep folder was made with, or a clear error when the file is damaged."""
    fix = "write the sweep to a new -o folder, or delete this one to start over"
    try:
        settings = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise TunewiseError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=str(config_path),
                            fix=fix) from None
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=str(config_path), line=error.lineno,
                            fix=fix) from None
    if not isinstance(settings, dict):
        raise TunewiseError(f"expected a JSON object of sweep settings, got {type(settings).__name__}",
                            file=str(config_path), fix=fix)
    return settings


def _claim_run_dir(run_dir: Path, settings: dict) -> None:
    """Write the sweep's settings, or check that a folder being resumed was made with the same."""
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        existing = read_settings(config_path)
        differing = sorted(key for key in settings.keys() | existing.keys() if settings.get(key) != existing.get(key))
        if differing:
            raise TunewiseError(
                f"this folder holds a sweep made with other settings ({', '.join(differing)} differ), "
                "so its runs cannot be resumed or compared",
                file=str(config_path), fix="write to a new -o folder, or delete this one to start over",
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TunewiseError("the output folder exists and is not a sweep folder", file=str(run_dir),
                            fix="pass a new or empty folder with -o")
    write_json(config_path, settings)


def _selection_scores(pool_examples, strategies, loaded, progress):
    """The scores table the strategies need: id and task, plus any indicator they read (scored
    once, through the content-addressed cache)."""
    import pandas as pd

    from tunewise.indicators.registry import INDICATORS

    needed = {column for strategy in strategies for column in strategy.required_columns()} - {"id", "task"}
    indicators = [name for name, indicator in INDICATORS.items() if needed & set(indicator.columns)]
    if not indicators:
        return pd.DataFrame({"id": [e.id for e in pool_examples], "task": [e.task for e in pool_examples]})
    from tunewise.model.hf import HFBackend
    from tunewise.indicators.score import score_pool

    return score_pool(pool_examples, HFBackend(loaded), indicators, progress=progress)


def _run_record(strategy: str, budget: int, seed: int | None, results: dict, test_tertiles: Mapping[str, str]) -> dict:
    return {
        "strategy": strategy,
        "budget": budget,
        "seed": seed,
        "score": results["average"],
        "scores": task_scores(results),
        "difficulty_tertiles": tertile_scores(results["samples"], test_tertiles),
        "results": results["results"],
        "evaluation_seconds": results["config"]["seconds"],
        "tunewise_version": __version__,
    }


TERTILES = ("easy", "medium", "hard")


def tertiles_by_answer_length(test_examples, tokenizer) -> dict[str, str]:
    """Test example id → ``easy``, ``medium`` or ``hard``: its third of its task by the number of
    tokens in its reference answer (paper C's chain-of-thought length), shorter first, equal
    lengths in test-set order (:func:`tunewise.select.difficulty.difficulty_tertiles`)."""
    import numpy as np

    from tunewise.select.difficulty import difficulty_tertiles

    lengths = [len(ids) for ids in tokenizer([e.response for e in test_examples], add_special_tokens=False)["input_ids"]]
    tasks = {task: code for code, task in enumerate(dict.fromkeys(e.task for e in test_examples))}
    tertiles = difficulty_tertiles(np.array(lengths, dtype=np.float64), np.array([tasks[e.task] for e in test_examples]))
    return {example.id: TERTILES[tertile] for example, tertile in zip(test_examples, tertiles)}


def tertile_scores(samples: Sequence[Mapping], test_tertiles: Mapping[str, str]) -> dict[str, float | None]:
    """The test score on each difficulty third: per task the mean over its samples in that third,
    then the mean over tasks (as the overall score averages tasks). A sample's value is its
    correctness, or its log-likelihood under ``--metric log_likelihood``; None for a third no task has."""
    from tunewise.training.evaluate import LOG_LIKELIHOOD

    values: dict[str, dict[str, list[float]]] = {tertile: {} for tertile in TERTILES}
    for sample in samples:
        value = sample["correct"] if "correct" in sample else sample.get(LOG_LIKELIHOOD)
        if value is not None and sample["id"] in test_tertiles:
            values[test_tertiles[sample["id"]]].setdefault(sample["task"], []).append(float(value))
    return {tertile: _mean([_mean(task_values) for task_values in by_task.values()]) if by_task else None
            for tertile, by_task in values.items()}


def read_runs(run_dir: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """The zero-shot record (None when missing) and every finished run record of a sweep folder."""
    runs = Path(run_dir) / RUNS_FOLDER
    if not runs.is_dir():
        raise TunewiseError("no runs in this folder", file=str(run_dir),
                            fix="run `tunewise sweep ... -o RUN_DIR` first")
    zero_shot, records = None, []
    for path in sorted(runs.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TunewiseError(f"unreadable run file ({error})", file=str(path),
                                fix="delete it; the next `tunewise sweep` redoes that run") from None
        required = ("strategy", "budget", "seed", "score", "scores")
        if not isinstance(record, dict) or any(name not in record for name in required):
            raise TunewiseError(f"not a run record (it needs {', '.join(required)})", file=str(path),
                                fix="delete it; the next `tunewise sweep` redoes that run")
        if record["strategy"] == ZERO_SHOT:
            zero_shot = record
        else:
            records.append(record)
    return zero_shot, records


def paired_gain(scores: dict[int, float], baseline: dict[int, float]) -> dict:
    """Mean per-seed difference ``scores - baseline`` over the seeds both have, with its 95 %
    Student-t confidence interval (None with fewer than two seeds)."""
    from scipy import stats

    seeds = sorted(scores.keys() & baseline.keys())
    differences = [scores[seed] - baseline[seed] for seed in seeds]
    n = len(differences)
    mean = sum(differences) / n if n else None
    low = high = None
    if n >= 2:
        spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
        half_width = stats.t.ppf((1 + CONFIDENCE_LEVEL) / 2, n - 1) * spread / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return {"mean": mean, "ci_low": low, "ci_high": high, "n_seeds": n, "seeds": seeds}


def summarise_sweep(run_dir: str | os.PathLike, ceiling: float | None = None) -> dict:
    """Summarise every finished run of a sweep folder into ``sweep.json`` and ``curves.png``.

    Per strategy: the learning curve (budget → mean score over seeds, budget 0 the zero-shot
    score), the per-seed scores, per-task mean scores, the AUC and per budget the gain over
    ``random`` (:func:`paired_gain`).

    The AUC is paper A's (:func:`tunewise.efficiency.curve.curve_auc`, with the sweep's budgets as
    the grid and the largest as N): each seed's curve gets its own monotone envelope, then the
    envelopes are averaged (``utils/calculate_per_task_auc.py:103-122`` of the released code), over
    the seeds that finished every budget of the sweep (``auc_seeds``). All strategies share one
    ceiling, max(``ceiling``, the best score of any run), so that their AUCs compare; without
    ``ceiling`` it is the best score alone, which is not paper A's normalisation (``ceiling_source``
    says which). A flat curve has AUC None.
    """
    from tunewise.efficiency.curve import curve_auc

    run_dir = Path(run_dir)
    zero_shot, records = read_runs(run_dir)
    budgets = sorted({record["budget"] for record in records})
    strategies = list(dict.fromkeys(record["strategy"] for record in sorted(records, key=_record_order)))
    per_seed: dict[str, dict[int, dict[int, float]]] = {s: {} for s in strategies}
    task_runs: dict[str, dict[int, list[dict]]] = {s: {} for s in strategies}
    tertile_runs: dict[str, dict[int, list[dict]]] = {s: {} for s in strategies}
    for record in records:
        per_seed[record["strategy"]].setdefault(record["budget"], {})[record["seed"]] = record["score"]
        task_runs[record["strategy"]].setdefault(record["budget"], []).append(record["scores"])
        if "difficulty_tertiles" in record:  # runs of older versions have none
            tertile_runs[record["strategy"]].setdefault(record["budget"], []).append(record["difficulty_tertiles"])

    curves = {}
    for strategy in strategies:
        curve = {budget: _mean(list(seed_scores.values())) for budget, seed_scores in per_seed[strategy].items()}
        if zero_shot is not None:
            curve[0] = zero_shot["score"]
        curves[strategy] = dict(sorted(curve.items()))
    # The released code's ceiling is max(human, best raw score of any seed): raw, not averaged.
    best = max([record["score"] for record in records] + ([zero_shot["score"]] if zero_shot else []), default=0.0)
    shared_ceiling = best if ceiling is None else max(ceiling, best)

    summary_strategies = {}
    for strategy in strategies:
        seed_curves = _seed_curves(per_seed[strategy], budgets, zero_shot)
        entry = {
            "curve": {str(budget): score for budget, score in curves[strategy].items()},
            "auc": _auc_or_none(curve_auc, list(seed_curves.values()), shared_ceiling, budgets),
            "auc_seeds": sorted(seed_curves),
            "per_seed": {str(b): {str(s): v for s, v in sorted(seeds.items())}
                         for b, seeds in sorted(per_seed[strategy].items())},
            "task_curves": _task_curves(task_runs[strategy], zero_shot),
            "difficulty_tertile_curves": _tertile_curves(tertile_runs[strategy], zero_shot),
        }
        if strategy != BASELINE and BASELINE in per_seed:
            entry["gain_over_random"] = {
                str(budget): paired_gain(per_seed[strategy][budget], per_seed[BASELINE][budget])
                for budget in budgets
                if budget in per_seed[strategy] and budget in per_seed[BASELINE]
            }
        summary_strategies[strategy] = entry

    config_path = run_dir / CONFIG_FILE
    settings = read_settings(config_path) if config_path.exists() else None
    summary = {
        "tunewise_version": __version__,
        "settings": settings,
        **{key: settings[key] for key in READING_PROVENANCE_KEYS if settings and key in settings},
        "budgets": budgets,
        "seeds": sorted({record["seed"] for record in records}),
        "baseline": BASELINE if BASELINE in per_seed else None,
        "ceiling": shared_ceiling,
        "ceiling_source": "given" if ceiling is not None and ceiling >= best else
                          "best score of any run" + ("" if ceiling is not None else
                                                     " (no human or target ceiling given: not paper A's scale)"),
        "confidence_level": CONFIDENCE_LEVEL,
        "zero_shot": None if zero_shot is None else {"score": zero_shot["score"], "scores": zero_shot["scores"],
                                                     "difficulty_tertiles": zero_shot.get("difficulty_tertiles")},
        "strategies": summary_strategies,
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    if curves and budgets:
        plot_sweep(summary, run_dir / PLOT_FILE)
    return summary


def _record_order(record: dict) -> tuple:
    # random first, then the others in name order, so summaries list strategies the same way.
    return (record["strategy"] != BASELINE, record["strategy"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _seed_curves(scores: dict[int, dict[int, float]], budgets: list[int], zero_shot: dict | None) -> dict:
    """seed → {budget: score} (budget 0 the zero-shot score) for every seed that finished every budget.

    A seed missing a budget is left out rather than filled in: the AUC's envelope would otherwise
    carry its previous score into the unfinished run.
    """
    seeds = set.intersection(*(set(scores.get(budget, {})) for budget in budgets)) if budgets else set()
    curves = {}
    for seed in sorted(seeds):
        curve = {budget: scores[budget][seed] for budget in budgets}
        if zero_shot is not None:
            curve[0] = zero_shot["score"]
        curves[seed] = curve
    return curves


def _auc_or_none(curve_auc, seed_curves: list[dict[int, float]], ceiling: float, budgets: list[int]) -> float | None:
    if not budgets or max(budgets) < 2 or not seed_curves:
        return None
    try:
        return curve_auc(seed_curves, ceiling=ceiling, max_budget=max(budgets), grid=budgets)
    except TunewiseError:
        return None  # a flat curve: no gain over zero-shot to normalise by


def _task_curves(runs_by_budget: dict[int, list[dict]], zero_shot: dict | None) -> dict:
    """task → {budget: mean score over seeds}, budget 0 the zero-shot score."""
    tasks = {task for runs in runs_by_budget.values() for scores in runs for task in scores}
    curves = {}
    for task in sorted(tasks):
        curve = {}
        if zero_shot is not None and task in zero_shot["scores"]:
            curve["0"] = zero_shot["scores"][task]
        for budget, runs in sorted(runs_by_budget.items()):
            curve[str(budget)] = _mean([scores[task] for scores in runs if task in scores])
        curves[task] = curve
    return curves


def _tertile_curves(runs_by_budget: dict[int, list[dict]], zero_shot: dict | None) -> dict:
    """easy/medium/hard → {budget: mean test score on that third over seeds}, budget 0 zero-shot."""
    curves = {}
    for tertile in TERTILES:
        curve = {}
        if zero_shot is not None and (zero_shot.get("difficulty_tertiles") or {}).get(tertile) is not None:
            curve["0"] = zero_shot["difficulty_tertiles"][tertile]
        for budget, runs in sorted(runs_by_budget.items()):
            values = [run[tertile] for run in runs if run.get(tertile) is not None]
            if values:
                curve[str(budget)] = _mean(values)
        curves[tertile] = curve
    return curves


def plot_sweep(summary: dict, path: str | os.PathLike) -> Path:
    """Mean score against budget (log scale) per strategy, with the seeds' spread and zero-shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    try:
        for strategy, entry in summary["strategies"].items():
            budgets = [int(b) for b in entry["per_seed"]]
            means = [entry["curve"][str(b)] for b in budgets]
            lows = [min(entry["per_seed"][str(b)].values()) for b in budgets]
            highs = [max(entry["per_seed"][str(b)].values()) for b in budgets]
            auc = entry["auc"]
            label = strategy + (f" (AUC {auc:.3f})" if auc is not None else "")
            (line,) = axes.plot(budgets, means, marker="o", label=label)
            axes.fill_between(budgets, lows, highs, color=line.get_color(), alpha=0.15)
        if summary["zero_shot"] is not None:
            axes.axhline(summary["zero_shot"]["score"], color="grey", linestyle="--", label="zero-shot")
        axes.set_xscale("log")
        axes.set_xticks(summary["budgets"], [str(b) for b in summary["budgets"]])
        axes.minorticks_off()
        axes.set_xlabel("fine-tuning examples (log scale)")
        axes.set_ylabel("test score (mean over seeds; band: min–max)")
        axes.set_title("learning curves")
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path


__all__ = [
    "ENGINES",
    "RunInputs",
    "StartedSweep",
    "check_sweep_folder",
    "paired_gain",
    "parse_strategy_spec",
    "plot_sweep",
    "read_runs",
    "read_settings",
    "run_file_name",
    "run_one",
    "run_sweep",
    "split_strategy_specs",
    "start_sweep",
    "strategy_from_spec",
    "summarise_sweep",
    "tertile_scores",
    "tertiles_by_answer_length",
    "zero_shot_record",
]
