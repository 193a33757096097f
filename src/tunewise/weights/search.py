"""Learn indicator weights with Bayesian optimisation of the in-context proxy (DESIGN.md §4 steps 5–6).

The search space is the simplex of feature weights. Optuna proposes one value u_k in (0, 1] per
feature and the weights are w_k = −log(u_k) / Σ_j −log(u_j): uniform draws of u give uniform
points on the simplex, so the sampler's random start-up covers it evenly.

A search is resumable and reproducible:

- the study lives in ``RUN_DIR/optuna.db`` (Optuna RDB storage) and every finished trial is
  logged to ``RUN_DIR/trials.jsonl`` (weights, J, seconds);
- before every trial the sampler is re-created with a seed derived from (seed, number of finished
  trials), so a proposal depends only on the seed and the finished trials, never on how many
  processes the search took: a run killed mid-trial and started again ends with the same trials
  and the same best weights as an uninterrupted one (the killed trial is marked failed and the
  samplers ignore failed trials);
- the run folder remembers the settings of its search and refuses to continue it with others.

``timeout`` stops the search after that many seconds of this process, so a run that hits it is
not reproducible by trial count; ``trials`` is.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.select.weighted import DIVERSITY_NEIGHBOURS, FeatureMatrix, selection_size
from tunewise.training.metrics import canonical_metric

SAMPLERS = ("tpe", "gp")
STUDY_NAME = "tune-weights"
STORAGE_FILE = "optuna.db"
TRIAL_LOG_FILE = "trials.jsonl"
# u = 0 would give an infinite weight: Optuna draws u from [1e-9, 1] instead.
_SMALLEST_DRAW = 1e-9

# weights → J, or → a ProxyValue (tunewise.weights.proxy) whose per-repeat values and drawn
# demonstrations are logged with the trial.
Objective = Callable[[dict[str, float]], object]


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its place among the finished trials, the weights, J and its cost;
    with a proxy objective also J of each repeat and a digest of the demonstrations shown."""

    index: int
    weights: dict[str, float]
    value: float
    seconds: float
    repeats: tuple[float, ...] = ()
    demonstrations: str | None = None

    @property
    def spread(self) -> float | None:
        """Standard deviation of J over the repeats (None without per-repeat values)."""
        return float(np.std(self.repeats, ddof=1)) if len(self.repeats) > 1 else (0.0 if self.repeats else None)

    def to_dict(self) -> dict:
        record = {"trial": self.index, "weights": self.weights, "J": self.value, "seconds": round(self.seconds, 3)}
        if self.repeats:
            record.update(J_repeats=list(self.repeats), J_spread=self.spread, demonstrations=self.demonstrations)
        return record


@dataclass(frozen=True)
class SearchResult:
    """The finished trials in order, and how many of them an earlier process had already run."""

    trials: list[TrialRecord]
    resumed_from: int

    @property
    def best(self) -> TrialRecord:
        """The trial with the highest J (the earliest on ties)."""
        return max(self.trials, key=lambda record: (record.value, -record.index))


def simplex_weights(draws: Mapping[str, float]) -> dict[str, float]:
    """Weights on the simplex from one draw u_k in (0, 1] per feature: −log(u_k), normalised."""
    raw = {name: -math.log(value) for name, value in draws.items()}
    total = sum(raw.values())
    if total <= 0:
        return {name: 1.0 / len(raw) for name in raw}
    return {name: value / total for name, value in raw.items()}


def _sampler(name: str, seed: int, finished: int):
    import warnings

    import optuna

    trial_seed = int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])
    if name == "gp":
        with warnings.catch_warnings():
            # J is deterministic (seeded draws, fixed batches), which this experimental flag exploits.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=trial_seed, deterministic_objective=True)
    return optuna.samplers.TPESampler(seed=trial_seed, constant_liar=False)


def _finished_records(study) -> list[TrialRecord]:
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finished.sort(key=lambda trial: trial.number)
    return [
        TrialRecord(index, dict(trial.user_attrs["weights"]), float(trial.value), float(trial.user_attrs["seconds"]),
                    tuple(trial.user_attrs.get("repeats", ())), trial.user_attrs.get("demonstrations"))
        for index, trial in enumerate(finished)
    ]


def write_trial_log(run_dir: str | os.PathLike, records: Sequence[TrialRecord]) -> Path:
    """Rewrite ``trials.jsonl`` from the finished trials, so it always matches the study."""
    from tunewise.io import write_jsonl

    path = Path(run_dir) / TRIAL_LOG_FILE
    write_jsonl(path, (record.to_dict() for record in records))
    return path


def open_study(run_dir: str | os.PathLike, settings: Mapping | None = None):
    """The search study of a run folder, created on first use.

    Trials left running by a killed process are marked failed. ``settings`` (JSON-ready) are
    stored with the study; a study that has finished trials under other settings is refused.
    """
    import optuna
    from optuna.trial import TrialState

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(run_dir / STORAGE_FILE).resolve()}"
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction="maximize")
    settings = dict(settings or {})
    stored = study.user_attrs.get("settings")
    if stored is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
        raise TunewiseError(
            f"the run folder holds a search with other settings ({', '.join(changed)} differ)",
            file=str(run_dir), field="run_dir",
            fix="pass the same settings to continue it, or a new --run-dir to start another search",
        )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def search_weights(
    objective: Objective,
    features: Sequence[str],
    run_dir: str | os.PathLike,
    *,
    trials: int = 30,
    timeout: float | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    settings: Mapping | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Maximise ``objective(weights)`` over the simplex of ``features``' weights.

    The objective returns J, or a :class:`~tunewise.weights.proxy.ProxyValue` whose per-repeat
    values and demonstrations are kept with the trial.

    Runs until ``trials`` trials have finished in the run folder (counting those of earlier,
    interrupted runs), or until a trial ends after ``timeout`` seconds of this call (as Optuna's
    ``timeout``: the running trial is finished, so every call runs at least one trial when any
    is left). ``progress(finished, trials)`` is called after every trial.
    """
    if sampler not in SAMPLERS:
        raise TunewiseError(f"unknown sampler '{sampler}'", field="sampler", fix=did_you_mean(sampler, SAMPLERS))
    study = open_study(run_dir, settings)
    records = _finished_records(study)
    resumed_from = len(records)
    write_trial_log(run_dir, records)  # a run killed between a trial's end and its log line
    started = time.monotonic()
    if progress is not None:
        progress(len(records), trials)
    while len(records) < trials:
        study.sampler = _sampler(sampler, seed, len(records))
        trial = study.ask()
        weights = simplex_weights({name: trial.suggest_float(f"u_{name}", _SMALLEST_DRAW, 1.0) for name in features})
        trial_started = time.perf_counter()
        result = objective(weights)
        value = float(getattr(result, "value", result))
        trial.set_user_attr("weights", weights)
        trial.set_user_attr("seconds", time.perf_counter() - trial_started)
        if hasattr(result, "repeats"):
            trial.set_user_attr("repeats", [float(v) for v in result.repeats])
            trial.set_user_attr("demonstrations", _digest(",".join(map(str, draw)) for draw in result.draws))
        study.tell(trial, value)
        records = _finished_records(study)
        write_trial_log(run_dir, records)
        if progress is not None:
            progress(len(records), trials)
        if timeout is not None and time.monotonic() - started >= timeout:
            break
    return SearchResult(trials=records, resumed_from=resumed_from)


# -- the whole search: features, proxy, Optuna ---------------------------------------------------


@dataclass
class TunedWeights:
    """The outcome of :func:`tune_weights`: the search, and what is needed to use its weights."""

    features: FeatureMatrix
    selection_size: int
    search: SearchResult
    settings: dict

    @property
    def best(self) -> TrialRecord:
        return self.search.best

    def selection(self, weights: Mapping[str, float]) -> np.ndarray:
        """S(w): the pool positions these weights select, best first."""
        return self.features.top(weights, self.selection_size)

    def document(self) -> dict:
        """The ``weights.json`` content; ``tunewise select --weights`` reads its ``weights`` and
        ``orientation``, the rest records how they were found."""
        from tunewise import __version__

        best = self.best
        document = {
            "weights": best.weights,
            "orientation": self.features.orientation,
            "set_diversity": self.features.set_diversity,
            "J": best.value,
            "J_spread": best.spread,
            "metric": self.settings["metric"],
            "features": list(self.features.names),
            "diversity_neighbours": self.settings["diversity_neighbours"],
            "fraction": self.settings["fraction"],
            "selection_size": self.selection_size,
            "pool_size": len(self.features),
            "best_trial": best.index,
            "trials": [record.to_dict() for record in self.search.trials],
            "trials_resumed_from": self.search.resumed_from,
            "sampler": self.settings["sampler"],
            "seed": self.settings["seed"],
            "proxy": {key: self.settings[key] for key in ("repeats", "demos", "demonstrations", "anchors", "dev_size")},
            "distinct": self.distinct(),
            "model_fingerprint": self.settings["model_fingerprint"],
            "tunewise_version": __version__,
        }
        return document

    def distinct(self) -> dict:
        """How many of the trials differ: in the selection S(w), in the demonstrations the proxy
        showed, and in J. Fewer distinct demonstrations than selections means the proxy could not
        tell some selections apart (raise ``demos`` or ``repeats``)."""
        trials = self.search.trials
        selections = {tuple(sorted(self.selection(record.weights).tolist())) for record in trials}
        shown = {record.demonstrations for record in trials if record.demonstrations is not None}
        return {"trials": len(trials), "selections": len(selections),
                "demonstrations": len(shown) if shown else None,
                "J_values": len({round(record.value, 12) for record in trials})}


def tune_weights(
    features: FeatureMatrix,
    pool: Sequence,
    anchor_examples: Sequence,
    anchors,
    model,
    run_dir: str | os.PathLike,
    *,
    fraction: float = 0.3,
    trials: int = 30,
    timeout: float | None = None,
    sampler: str = "tpe",
    repeats: int = 3,
    demos: int = 8,
    metric: str = "log_likelihood",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> TunedWeights:
    """Learn feature weights whose selection S(w) maximises the in-context proxy J(w).

    Parameters
    ----------
    features:
        The pool's oriented features (:func:`tunewise.select.weighted.indicator_features`).
    pool:
        The labelled pool examples, one per feature row, in the same order.
    anchor_examples, anchors:
        The tiny validation set: labelled anchor items and their
        :class:`~tunewise.weights.anchors.Anchors` weights.
    model:
        The :class:`~tunewise.weights.proxy.ProxyModel` that computes J.
    run_dir:
        Where the Optuna study and the trial log live; a search there is continued.
    fraction:
        ρ: S(w) is the top ``round(ρ · N)`` of the pool.
    trials, timeout, sampler, seed:
        The search (:func:`search_weights`).
    repeats, demos, metric:
        The proxy (:class:`~tunewise.weights.proxy.InContextProxy`); the proxy draws with ``seed`` too.

    Set-level diversity is a property of ``features`` (``indicator_features(..., set_diversity=True)``).
    """
    from tunewise.weights.proxy import InContextProxy

    if len(pool) != len(features):
        raise ValueError("the pool examples must match the feature rows one to one, in order")
    size = selection_size(fraction, len(features))
    if size < 1:
        raise TunewiseError(f"a fraction of {fraction} of {len(features)} examples selects none", field="fraction",
                            fix="choose a larger --fraction")
    metric = canonical_metric(metric)
    proxy = InContextProxy(model, pool, anchor_examples, anchors, repeats=repeats, demos=demos, metric=metric,
                           seed=seed)
    settings = {
        "features": list(features.names),
        "orientation": features.orientation,
        "diversity_neighbours": DIVERSITY_NEIGHBOURS,
        "fraction": fraction,
        "metric": metric,
        "repeats": repeats,
        "demos": demos,
        "demonstrations": "stratified",
        "set_diversity": features.set_diversity,
        "anchors": len(anchors),
        "dev_size": anchors.dev_size,
        "sampler": sampler,
        "seed": seed,
        "model_fingerprint": model.fingerprint,
        "pool_digest": _digest(example.id for example in pool),
        "features_digest": _digest([features.values.tobytes()]),
        "anchor_digest": _digest(f"{e.id}:{members}" for e, members in zip(anchor_examples, anchors.cluster_sizes)),
    }
    search = search_weights(lambda weights: proxy.evaluate(features.top(weights, size)), features.names, run_dir,
                            trials=trials, timeout=timeout, sampler=sampler, seed=seed, settings=settings,
                            progress=progress)
    return TunedWeights(features=features, selection_size=size, search=search, settings=settings)


def _digest(parts) -> str:
    """A short content hash of a sequence of strings or bytes (for the run folder's settings)."""
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# -- checking the proxy against real fine-tunes --------------------------------------------------


def spread_trials(
    records: Sequence[TrialRecord], count: int, selection_of: Callable[[dict], Sequence[int]]
) -> list[TrialRecord]:
    """Up to ``count`` trials whose J values spread evenly over the observed range of J.

    Trials that select the same examples as one already chosen are skipped (they would repeat
    the same fine-tune), so fewer than ``count`` come back when the search found fewer distinct
    selections.
    """
    if not records or count < 1:
        return []
    values = np.array([record.value for record in records])
    chosen: list[TrialRecord] = []
    seen: set[tuple[int, ...]] = set()
    for target in np.linspace(values.min(), values.max(), count):
        for position in np.argsort(np.abs(values - target), kind="mergesort"):
            record = records[int(position)]
            key = tuple(sorted(int(p) for p in selection_of(record.weights)))
            if key not in seen:
                seen.add(key)
                chosen.append(record)
                break
    return sorted(chosen, key=lambda record: record.value)


def rank_correlation(proxy_values: Sequence[float], accuracies: Sequence[float]) -> dict:
    """Spearman's ρ and Kendall's τ (scipy) between J and fine-tuned accuracy, with a verdict."""
    from scipy.stats import kendalltau, spearmanr

    points = len(proxy_values)
    constant = len(set(proxy_values)) < 2 or len(set(accuracies)) < 2
    if points < 2 or constant:
        spearman = kendall = (math.nan, math.nan)
    else:
        rho = spearmanr(proxy_values, accuracies)
        tau = kendalltau(proxy_values, accuracies)
        spearman, kendall = (float(rho.statistic), float(rho.pvalue)), (float(tau.statistic), float(tau.pvalue))
    return {
        "points": points,
        "spearman": _finite_or_none(spearman[0]),
        "spearman_p": _finite_or_none(spearman[1]),
        "kendall": _finite_or_none(kendall[0]),
        "kendall_p": _finite_or_none(kendall[1]),
        "verdict": correlation_verdict(spearman[0], kendall[0], points, constant),
    }


def correlation_verdict(spearman: float, kendall: float, points: int, constant: bool = False) -> str:
    """A plain sentence on whether the proxy tracks fine-tuning; a weak result says so."""
    if constant or not math.isfinite(spearman):
        return ("undefined: the fine-tuned dev scores (or the proxy values) are all equal, so this check "
                "cannot tell whether the proxy tracks fine-tuning")
    strength = "strong" if abs(spearman) >= 0.7 else "moderate" if abs(spearman) >= 0.4 else "weak"
    if strength == "weak":
        sentence = ("weak: the proxy does not track the post-fine-tuning dev score here; "
                    "treat the learned weights with caution")
    elif spearman < 0:
        sentence = (f"{strength} and negative: the proxy ranks weight settings opposite to fine-tuning; "
                    "do not trust the learned weights")
    else:
        sentence = f"{strength}: higher J went with a higher dev score after fine-tuning"
    sentence += f" (Spearman {spearman:+.2f}, Kendall {kendall:+.2f}, {points} fine-tunes)"
    if points < 5:
        sentence += f"; with only {points} points any rank correlation is very uncertain"
    return sentence


def validate_proxy(
    loaded,
    pool: Sequence,
    records: Sequence[TrialRecord],
    selection_of: Callable[[dict], Sequence[int]],
    dev: Sequence,
    count: int,
    finetune_config=None,
    progress: Callable[[int, int], None] | None = None,
    metric: str = "auto",
) -> dict:
    """Fine-tune for real on the selections of ``count`` trials spread over J, evaluate each on
    ``dev``, and report the rank correlation between J and the dev score.

    ``selection_of(weights)`` gives the pool positions a weight setting selects. Each fine-tune
    is a fresh LoRA adapter on the base model (:func:`tunewise.training.finetune.finetune`); the score is
    :func:`tunewise.training.evaluate.evaluate`'s macro average under ``metric`` (``auto``: chosen per
    task; ``log_likelihood`` where accuracy stays near zero whatever the selection).
    """
    from tunewise.training.evaluate import evaluate
    from tunewise.training.finetune import finetune

    chosen = spread_trials(records, count, selection_of)
    points = []
    if progress is not None:
        progress(0, len(chosen))
    for done, record in enumerate(chosen, start=1):
        selected = [pool[int(position)] for position in selection_of(record.weights)]
        with finetune(loaded, selected, finetune_config) as adapted:
            accuracy = evaluate(adapted.model, loaded.tokenizer, dev, metric=metric)["average"]
        points.append({"trial": record.index, "weights": record.weights, "J": record.value,
                       "accuracy": float(accuracy), "finetune_seconds": round(adapted.log.seconds, 3)})
        if progress is not None:
            progress(done, len(chosen))
    report = rank_correlation([p["J"] for p in points], [p["accuracy"] for p in points])
    report["requested"] = count
    report["metric"] = metric
    report["fine_tunes"] = points
    if len(chosen) < count:
        report["note"] = (f"only {len(chosen)} distinct selections among the trials, so {len(chosen)} "
                          f"fine-tunes instead of {count}")
    return report


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(kw_only=True, eq=False)
class WeightSearch:
    """Indicator weights learned with the in-context proxy, in scikit-learn's shape.

    The constructor stores the search's settings only (keyword arguments, as :func:`tune_weights`
    takes them); :meth:`fit` runs :func:`tune_weights` and returns ``self`` with the learned state
    in trailing-underscore attributes: ``weights_`` (the best weights), ``orientation_``, ``J_``
    (the best proxy score), ``trials_`` (every trial) and ``tuned_`` (the whole
    :class:`TunedWeights`, whose ``document()`` is ``weights.json``).
    """

    fraction: float = 0.3
    trials: int = 30
    timeout: float | None = None
    sampler: str = "tpe"
    repeats: int = 3
    demos: int = 8
    metric: str = "log_likelihood"
    seed: int = 0

    def fit(self, features: FeatureMatrix, pool: Sequence, anchor_examples: Sequence, anchors, model,
            run_dir: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> WeightSearch:
        """Search the weights (arguments as :func:`tune_weights`); returns ``self``."""
        self.tuned_ = tune_weights(features, pool, anchor_examples, anchors, model, run_dir, progress=progress,
                                   **asdict(self))
        best = self.tuned_.best
        self.weights_ = dict(best.weights)
        self.orientation_ = dict(self.tuned_.features.orientation)
        self.J_ = best.value
        self.trials_ = tuple(self.tuned_.search.trials)
        return self

    def select(self, size: int | None = None):
        """S(w) of the learned weights: pool positions, best first (``size`` defaults to ρ · N)."""
        if not hasattr(self, "tuned_"):
            raise TunewiseError("this WeightSearch is not fitted yet", fix="call fit(...) first")
        return self.tuned_.features.top(self.weights_, size or self.tuned_.selection_size)


__all__ = [
    "SAMPLERS",
    "WeightSearch",
    "SearchResult",
    "TrialRecord",
    "TunedWeights",
    "correlation_verdict",
    "open_study",
    "rank_correlation",
    "search_weights",
    "simplex_weights",
    "spread_trials",
    "tune_weights",
    "validate_proxy",
    "write_trial_log",
]
