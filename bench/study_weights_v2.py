"""Study 4 of evidence v2 (issue 14): learned indicator weights, paper D's way, on GSM8K.

Does a 30 % of a GSM8K pool chosen by weights tuned with the in-context proxy beat a random 30 %
and match training on all of it (paper D's headline), and does the proxy J rank weight settings
the way real fine-tunes rank them? This supersedes ``bench/study_weights.py`` (v1: a 100-example
pool, 12 trials of R = 1, d = 4 on 16 anchors, 5 proxy checks; BENCHMARKS.md "Study 3 — learned
indicator weights"), whose defaults and table stay reproducible with that script.

**Data** (``--split-seed``). GSM8K's training split, shuffled: the first ``--pool-size`` (1,000)
rows are the pool, the next ``--dev-size`` (512) the dev set the anchors are chosen from. The
held-out scores use ``--test-size`` (200) GSM8K *test* items (the same 200 as study 3 v2, drawn
with the same seed), ``--accuracy-items`` (100) of them, even over the test tertiles by reference
length, also answered by generation.

**Weights** (DESIGN.md §4, with the repaired proxy of review D3: demonstrations drawn stratified
over S(w), J's spread over the R draws logged with every trial). The pool is scored with the model
for every indicator ``tune-weights`` weighs (loss, ifd, confidence, length, cot_length, and the
embedding behind ``diversity``), cached in ``OUT/scores``; the six features of
:data:`tunewise.select.weighted.FEATURES` with their default orientations; ``--anchors`` (64)
anchors by embedding-stratified sampling of the dev set; :func:`tunewise.weights.search.tune_weights`
with TPE, ``--trials`` (30), R = ``--repeats`` (3) draws of d = ``--demos`` (8) demonstrations, J the
anchor-weighted mean log-likelihood per gold-answer token, ρ = ``--fraction`` (0.3); the search is
resumable in ``OUT/search`` and its best weights are written to ``OUT/weights.json`` (usable with
``tunewise select --strategy weighted_indicators --weights``).

**Arms.** ``tuned``: the best trial's S(w), 300 examples, the same for every seed. ``random``:
tunewise's ``random`` strategy, 300 drawn with the seed. ``all``: the 1,000. Seeds ``--seeds``
(0, 1, 2) drive the fine-tune (and the random draw); the search is run once (seeded by the split
seed), as in v1. Fine-tuning is study 3 v2's profile (LoRA r = 8 at 2e-4, cosine, effective batch
4, ``--dtype auto`` = bf16 on this CPU, ``max_seq_length`` 640, no validation split) for
``--epochs`` (2), so the random arm is comparable with study 3 v2's random arm at 256.

**Scores.** Every arm run and the base model (zero-shot) are scored on the test items by the
mean log-likelihood per gold-solution token (all ``--test-size`` items) and by accuracy
(``--accuracy-items``, greedy generation of at most ``--max-new-tokens``, tunewise's ``gsm8k``
answer metric), as study 3 v2 does (:func:`study_difficulty_v2.measure`).

**The proxy check.** ``--proxy-checks`` (8) weight settings: the search's trials whose J spread
evenly from the lowest to the highest J, one per distinct selection
(:func:`tunewise.weights.search.spread_trials`; the choice is fixed by the finished search, no
extra seed). The highest-J setting is the tuned arm, whose seed-0 run is its point; each other
setting is fine-tuned once, with the first seed and the same profile, and scored by the
log-likelihood on the test items only (SmolLM2's GSM8K accuracy, 0-3 %, cannot rank them). The
report gives Spearman's ρ with its p-value (and Kendall's τ) between J and the fine-tuned score
(:func:`tunewise.weights.search.rank_correlation`).

**Order and resuming.** Setup first (zero-shot, pool scoring, the search), then the passes, most
informative first: seed 0 of every arm; the proxy check; the other seeds of tuned and random (the
paired interval of the headline gain); the other seeds of all. Each finished run is a file
``OUT/cells/<name>.json`` that is never redone, so rerunning the same command resumes; more seeds
can be added, other settings are refused in the same ``OUT``. ``--plan-only`` writes
``OUT/plan.json`` (pool, dev, test, weight settings, the projected CPU-hours per pass from
STUDIES.md's cost model) and stops; ``--report-only`` writes ``OUT/report.md`` and ``report.json``
from whatever has finished (also while the study runs). ``--reduced`` is the cheaper grid (1 epoch,
20 trials, 32 anchors; pool, arms, seeds and the eight checks unchanged).

    bench/run_study.sh study_weights_v2 COMMIT -- python bench/study_weights_v2.py --out bench/out/study_weights_v2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_budget_v2 import CONFIDENCE_SECONDS_PER_PROMPT, COST_MODEL
from study_difficulty_v2 import (
    ACCURACY_SECONDS_PER_ITEM,
    CPU_PROFILE,
    LOG_LIKELIHOOD_SECONDS_PER_ITEM,
    PROFILE,
    TRAIN_TOKENS_PER_SECOND,
    claim,
    int_list,
    mean_interval,
    read_cells,
    stratified_subset,
)

TUNED, RANDOM, ALL, CHECK = "tuned", "random", "all", "check"
ARMS = (TUNED, RANDOM, ALL)
ZERO_SHOT = "zero_shot"
LOG_LIKELIHOOD, ACCURACY = "log_likelihood", "accuracy"
METRICS = (LOG_LIKELIHOOD, ACCURACY)
ANSWER_METRIC = "gsm8k"
CELLS_FOLDER, SEARCH_FOLDER, SCORES_FOLDER = "cells", "search", "scores"
PLAN_FILE, SETUP_FILE, WEIGHTS_FILE = "plan.json", "setup.json", "weights.json"
REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
NOT_ENOUGH = "not enough seeds yet"
# The issue asks for the rank correlation over at least eight weight settings.
MIN_CHECK_POINTS = 8
FULL = {"epochs": 2, "trials": 30, "anchors": 64}
REDUCED = {"epochs": 1, "trials": 20, "anchors": 32}
# The paired gains each arm reports: over random (the baseline), and tuned over all (the paper's claim).
GAINS = {TUNED: (RANDOM, ALL), RANDOM: (), ALL: (RANDOM,)}
FORWARD_TOKENS_PER_SECOND = COST_MODEL["bf16"]["forward_tokens_per_s"]
# The proxy runs slower per token than plain scoring (every anchor attends over the cached
# demonstrations): this script's smoke run (SmolLM2 bf16, 16 anchors after 8 demonstrations, 5,336
# tokens per draw) took 15 s of CPU per draw, 350 tokens per CPU second, at load 10 on the 2 cores.
PROXY_TOKENS_PER_SECOND = 350.0


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/test_study_weights_v2.py)
# ---------------------------------------------------------------------------------------------


def cell_name(arm: str, seed: int | None = None, trial: int | None = None) -> str:
    """The file of a run: ``zero_shot.json``, ``<arm>__s<seed>.json`` or ``check__t<trial>.json``."""
    if arm == ZERO_SHOT:
        return f"{ZERO_SHOT}.json"
    if arm == CHECK:
        return f"{CHECK}__t{trial}.json"
    return f"{arm}__s{seed}.json"


def plan_passes(seeds: list[int], check_trials: list[int | None]) -> list[tuple[str, list[tuple]]]:
    """The runs in passes, most informative first, as (label, cells) with cells (arm, seed, trial):

    1. the first seed of tuned, random and all (every arm measured once);
    2. the proxy check: one fine-tune per setting in ``check_trials`` (the trials other than the
       best, which is the tuned arm's first-seed run; None where the search has not decided yet),
       with the first seed;
    3. the other seeds of tuned and random (the interval of the headline gain);
    4. the other seeds of all (its interval; the dearest runs, 3.3 times a 30 % run)."""
    seeds = sorted(seeds)
    first, rest = seeds[0], seeds[1:]
    passes = [(f"seed {first} of every arm", [(arm, first, None) for arm in ARMS])]
    if check_trials:
        passes.append(("proxy check", [(CHECK, first, trial) for trial in check_trials]))
    if rest:
        label = f"seeds {rest[0]}-{rest[-1]}" if len(rest) > 1 else f"seed {rest[0]}"
        passes.append((f"{label} of tuned and random", [(arm, s, None) for s in rest for arm in (TUNED, RANDOM)]))
        passes.append((f"{label} of all", [(ALL, s, None) for s in rest]))
    return passes


def projected_hours(passes, examples: dict[str, int], tokens: dict, epochs: int, test_items: int,
                    accuracy_items: int) -> list[dict]:
    """CPU-hours of one core per pass: each run trains on ``epochs`` × its examples × their mean
    tokens (``tokens[arm]``, or ``tokens[(CHECK, trial)]`` when known, else ``tokens[CHECK]``) at
    TRAIN_TOKENS_PER_SECOND and is scored at the measured seconds per test item (arms: both metrics;
    proxy checks: log-likelihood only)."""
    rows = []
    for label, cells in passes:
        train = evaluation = 0.0
        for arm, _, trial in cells:
            size = examples[CHECK if arm == CHECK else arm]
            mean_tokens = tokens.get((CHECK, trial), tokens[CHECK]) if arm == CHECK else tokens[arm]
            train += epochs * size * mean_tokens / TRAIN_TOKENS_PER_SECOND
            evaluation += test_items * LOG_LIKELIHOOD_SECONDS_PER_ITEM
            if arm != CHECK:
                evaluation += accuracy_items * ACCURACY_SECONDS_PER_ITEM
        rows.append({"pass": label, "runs": len(cells), "train_h": train / 3600, "eval_h": evaluation / 3600,
                     "total_h": (train + evaluation) / 3600})
    return rows


def setup_hours(pool_forward_tokens: float, pool_size: int, dev_forward_tokens: float, draw_tokens: float,
                trials: int, repeats: int, test_items: int, accuracy_items: int) -> dict:
    """CPU-hours before the first fine-tune: zero-shot (both metrics), the pool's indicators
    (forward passes at the cost model's rate, plus one greedy answer per prompt for confidence),
    the dev set's embeddings, and the search (``trials`` × ``repeats`` proxy draws of ``draw_tokens``
    tokens each at PROXY_TOKENS_PER_SECOND: an upper bound, as draws repeated between trials are
    memoised)."""
    parts = {
        "zero_shot": test_items * LOG_LIKELIHOOD_SECONDS_PER_ITEM + accuracy_items * ACCURACY_SECONDS_PER_ITEM,
        "pool_scoring": pool_forward_tokens / FORWARD_TOKENS_PER_SECOND + pool_size * CONFIDENCE_SECONDS_PER_PROMPT,
        "dev_embedding": dev_forward_tokens / FORWARD_TOKENS_PER_SECOND,
        "search": trials * repeats * draw_tokens / PROXY_TOKENS_PER_SECOND,
    }
    hours = {name: seconds / 3600 for name, seconds in parts.items()}
    return {"pass": "setup: zero-shot, pool scoring, search", "runs": 0, "parts_h": hours, "train_h": 0.0,
            "eval_h": sum(hours.values()), "total_h": sum(hours.values())}


def cell_score(cell: dict, metric: str) -> float | None:
    entry = cell.get("metrics", {}).get(metric)
    return None if entry is None else entry["score"]


def per_seed(cells: list[dict], arm: str, metric: str) -> dict[int, float]:
    """seed → the arm's score (runs that did not measure ``metric`` left out)."""
    return {c["seed"]: cell_score(c, metric) for c in cells
            if c["arm"] == arm and cell_score(c, metric) is not None}


def summarise_arms(cells: list[dict], metric: str) -> dict:
    """arm → mean over seeds with its 95 % t interval, the per-seed scores, and the paired gains
    (:func:`tunewise.training.sweep.paired_gain`): every arm but random over random, tuned over all."""
    from tunewise.training.sweep import paired_gain

    summary = {}
    for arm in ARMS:
        scores = per_seed(cells, arm, metric)
        if not scores:
            continue
        entry = {**mean_interval([scores[s] for s in sorted(scores)]),
                 "per_seed": {str(s): v for s, v in sorted(scores.items())}}
        for other in GAINS[arm]:
            baseline = per_seed(cells, other, metric)
            if scores.keys() & baseline.keys():
                entry[f"gain_over_{other}"] = paired_gain(scores, baseline)
        summary[arm] = entry
    return summary


def proxy_points(cells: list[dict], seed: int) -> list[dict]:
    """The proxy check's points, lowest J first: every check run, and the tuned arm's run with the
    checks' ``seed`` (the best trial's setting)."""
    runs = [c for c in cells if c["arm"] == CHECK or (c["arm"] == TUNED and c["seed"] == seed)]
    points = [{"trial": c["trial"], "J": c["J"], "J_spread": c.get("J_spread"), "score": cell_score(c, LOG_LIKELIHOOD),
               "run": cell_name(c["arm"], c["seed"], c["trial"])} for c in runs]
    return sorted(points, key=lambda p: (p["J"], p["trial"]))


def proxy_check(cells: list[dict], seed: int) -> dict:
    """Spearman (with p) and Kendall between J and the fine-tuned log-likelihood over the points
    (:func:`tunewise.weights.search.rank_correlation`); below ``MIN_CHECK_POINTS`` the verdict says
    the check is incomplete."""
    from tunewise.weights.search import rank_correlation

    points = proxy_points(cells, seed)
    result = {**rank_correlation([p["J"] for p in points], [p["score"] for p in points]), "fine_tunes": points}
    if len(points) < MIN_CHECK_POINTS:
        result["verdict"] = (f"incomplete: {len(points)} of the {MIN_CHECK_POINTS} weight settings fine-tuned so far"
                             + (f"; so far {result['verdict']}" if len(points) >= 3 else ""))
    return result


def _signed(block: dict | None) -> str:
    if not block or block.get("mean") is None:
        return "–"
    if block.get("ci_low") is None:
        return f"{block['mean']:+.4f} ({NOT_ENOUGH})"
    return f"{block['mean']:+.4f} [{block['ci_low']:+.4f}, {block['ci_high']:+.4f}]"


def answers(summary: dict) -> dict[str, str]:
    """One sentence each: does tuned beat random, and does it match all (on one metric's summary)."""
    tuned = summary.get(TUNED, {})
    result = {}
    for key, other, question in (("tuned_vs_random", RANDOM, "tuned − random"), ("tuned_vs_all", ALL, "tuned − all")):
        gain = tuned.get(f"gain_over_{other}")
        if gain is None:
            result[key] = "not measured yet."
        elif gain["ci_low"] is None:
            result[key] = f"{NOT_ENOUGH}: {question} = {gain['mean']:+.4f} over {gain['n_seeds']} seed(s), no interval."
        elif gain["ci_low"] > 0:
            result[key] = f"tuned is better: {question} = {_signed(gain)}, an interval above 0."
        elif gain["ci_high"] < 0:
            result[key] = f"tuned is worse: {question} = {_signed(gain)}, an interval below 0."
        else:
            result[key] = f"no difference detected: {question} = {_signed(gain)}, an interval that holds 0."
    return result


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def build_report(out: Path) -> dict:
    """report.json's document: progress against the plan, zero-shot, per metric the arms and the
    answers, the proxy check, the weights, and what the finished runs cost."""
    plan, setup = _read(out / PLAN_FILE), _read(out / SETUP_FILE)
    zero_shot, cells = read_cells(out)
    done = {(c["arm"], c["seed"], c["trial"] if c["arm"] == CHECK else None) for c in cells}
    passes = [{"pass": p["pass"], "planned": len(p["cells"]),
               "finished": sum(tuple(cell) in done for cell in p["cells"])} for p in plan.get("passes", [])]
    summaries = {metric: summarise_arms(cells, metric) for metric in METRICS}
    training = [c["training"] for c in cells if c.get("training")]
    per_item = {}
    for metric in METRICS:
        rates = [c["metrics"][metric]["seconds"] / c["metrics"][metric]["n"] for c in cells + [zero_shot or {}]
                 if c.get("metrics", {}).get(metric) and c["metrics"][metric]["n"]]
        per_item[metric] = statistics.median(rates) if rates else None
    return {
        "settings": plan.get("settings"),
        "passes": passes,
        "zero_shot": None if zero_shot is None else {m: zero_shot["metrics"][m]["score"] for m in zero_shot["metrics"]},
        "summary": summaries,
        "answers": {metric: answers(summary) for metric, summary in summaries.items()},
        "proxy_check": proxy_check(cells, min(plan.get("seeds", [0]))),
        "search": setup.get("search"),
        "projected_cpu_hours": plan.get("projected_cpu_hours"),
        "measured": {"setup": setup.get("seconds"),
                     "train_tokens_per_second_median": statistics.median([t["tokens_per_second"] for t in training])
                     if training else None,
                     "evaluation_seconds_per_item_median": per_item},
    }


def report_markdown(report: dict) -> str:
    settings = report["settings"] or {}
    lines = ["# Study 4 (evidence v2): learned indicator weights, paper D's way", "",
             (f"Pool {settings.get('pool_examples')} GSM8K train examples, ρ = {settings.get('fraction')}; "
             f"{settings.get('test_size')} test items for log-likelihood, {settings.get('accuracy_items')} for accuracy. "
             "Intervals are 95 % Student-t over seeds; gains are paired per seed."), "",
             "| pass | finished / planned runs |", "|---|---:|"]
    lines += [f"| {p['pass']} | {p['finished']} / {p['planned']} |" for p in report["passes"]]
    for metric in METRICS:
        name = "mean log-likelihood per gold token" if metric == LOG_LIKELIHOOD else "accuracy (gsm8k answer)"
        lines += ["", f"## {name}", "", f"**Tuned 30 % against random 30 %:** {report['answers'][metric]['tuned_vs_random']}",
                  "", f"**Tuned 30 % against all:** {report['answers'][metric]['tuned_vs_all']}", "",
                  "| arm | seeds | mean [95 % CI] | gain over random | gain over all | per seed |", "|---|---:|---|---|---|---|"]
        zero = (report["zero_shot"] or {}).get(metric)
        if zero is not None:
            lines.append(f"| zero-shot | — | {zero:.4f} | – | – | – |")
        for arm, entry in report["summary"][metric].items():
            interval = f"{entry['mean']:.4f}" + ("" if entry["ci_low"] is None else
                                                 f" [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]")
            per = " / ".join(f"{v:.4f}" for v in entry["per_seed"].values())
            lines.append(f"| {arm} | {entry['n']} | {interval} | {_signed(entry.get('gain_over_random'))} | "
                         f"{_signed(entry.get('gain_over_all'))} | {per} |")
    check = report["proxy_check"]
    lines += ["", "## Does the proxy rank weight settings as fine-tuning does?", "",
              f"**{check['verdict']}**" + ("" if check["spearman"] is None else
                                          f" Spearman {check['spearman']:+.3f} (p = {check['spearman_p']:.3g}), "
                                          f"Kendall {check['kendall']:+.3f} (p = {check['kendall_p']:.3g}), "
                                          f"{check['points']} settings."), "",
              "| trial | J | J spread over draws | fine-tuned log-likelihood | run |", "|---:|---:|---:|---:|---|"]
    for p in check["fine_tunes"]:
        spread = "–" if p["J_spread"] is None else f"{p['J_spread']:.4f}"
        lines.append(f"| {p['trial']} | {p['J']:.4f} | {spread} | {p['score']:.4f} | {p['run']} |")
    search = report["search"]
    if search:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in sorted(search["best_weights"].items(), key=lambda kv: -kv[1]))
        lines += ["", (f"Best weights (trial {search['best_trial']} of {search['trials']}, J {search['best_J']:.4f}): "
                      f"{weights}. Distinct: {search['distinct']}.")]
    lines += ["", "## Cost", "", "| pass | runs | training h | evaluation h | CPU-h (projected) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['pass']} | {c['runs']} | {c['train_h']:.2f} | {c['eval_h']:.2f} | {c['total_h']:.2f} |"
              for c in report["projected_cpu_hours"] or []]
    if report["projected_cpu_hours"]:
        lines.append(f"| **all** | | | | **{sum(c['total_h'] for c in report['projected_cpu_hours']):.2f}** |")
    measured = report["measured"]
    rate = measured["train_tokens_per_second_median"]
    lines += ["", "Measured: training " + ("–" if rate is None else f"{rate:.0f}") + " tokens/s (median); seconds per "
              "test item " + ", ".join(f"{m} {'–' if v is None else f'{v:.2f}'}"
                                       for m, v in measured["evaluation_seconds_per_item_median"].items())
              + "; setup " + (", ".join(f"{part.replace('_', ' ')} {t['cpu']:.0f} s CPU ({t['wall']:.0f} s wall)"
                                        for part, t in measured["setup"].items()) if measured["setup"] else "–") + "."]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """The study's figure: per metric each arm's mean over seeds with its 95 % interval (where two
    seeds or more finished) and zero-shot as a line; then the proxy check, J against the fine-tuned
    log-likelihood (the tuned arm's point marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(METRICS) + 1, figsize=(4.5 * (len(METRICS) + 1), 3.8), squeeze=False)
    for panel, metric in zip(panels[0], METRICS):
        summary = report["summary"][metric]
        arms = [arm for arm in ARMS if arm in summary]
        means = [summary[arm]["mean"] for arm in arms]
        errors = [0.0 if summary[arm]["ci_low"] is None else summary[arm]["mean"] - summary[arm]["ci_low"] for arm in arms]
        panel.errorbar(range(len(arms)), means, yerr=errors, marker="o", capsize=4, linestyle="none")
        panel.set_xticks(range(len(arms)), [f"{arm}\n(n={summary[arm]['n']})" for arm in arms])
        zero = (report["zero_shot"] or {}).get(metric)
        if zero is not None:
            panel.axhline(zero, color="grey", linestyle="--", label="zero-shot")
            panel.legend(fontsize=7)
        panel.set(title="log-likelihood per gold token" if metric == LOG_LIKELIHOOD else "accuracy (gsm8k)")
    panel = panels[0][-1]
    points = report["proxy_check"]["fine_tunes"]
    for marked, label in ((False, "check"), (True, "tuned (best J)")):
        chosen = [p for p in points if p["run"].startswith(TUNED) == marked]
        if chosen:
            panel.scatter([p["J"] for p in chosen], [p["score"] for p in chosen], label=label,
                          marker="*" if marked else "o", s=120 if marked else 36)
    rho = report["proxy_check"]["spearman"]
    panel.set(title=f"proxy check: Spearman {'–' if rho is None else f'{rho:+.2f}'} ({len(points)} settings)",
              xlabel="J (proxy)", ylabel="fine-tuned log-likelihood")
    if points:
        panel.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(out: Path) -> dict:
    from tunewise.io import write_json

    report = build_report(out)
    write_json(out / REPORT_JSON, report)
    (out / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    plot_report(report, out / REPORT_PNG)
    return report


# ---------------------------------------------------------------------------------------------
# Setup and runs
# ---------------------------------------------------------------------------------------------


def _digest(examples) -> str:
    import hashlib

    return hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()[:16]


def example_tokens(tokenizer, examples) -> tuple[list[int], list[int]]:
    """Per example: its training tokens (rendered prompt + response + the end-of-turn token the
    fine-tune learns) and its response tokens."""
    from tunewise.model.chat import encode_prompts, encode_responses

    prompts = encode_prompts(tokenizer, [e.prompt for e in examples], examples)
    responses = encode_responses(tokenizer, [e.response for e in examples])
    return [len(p) + len(r) + 1 for p, r in zip(prompts, responses)], [len(r) for r in responses]


def _timed(function):
    """``function()``'s result, and its wall and CPU seconds (CPU: this process, so a loaded machine
    does not inflate it)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, {"wall": round(time.perf_counter() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}


def run_search(args, loaded, pool, dev, out: Path):
    """Score the pool and the dev set (cached in OUT/scores), choose the anchors and run (or resume)
    the search in OUT/search: (scores table, :class:`~tunewise.weights.search.TunedWeights`, seconds)."""
    import optuna

    from tunewise.data.table import embedding_matrix
    from tunewise.indicators.registry import DEFAULT_INDICATORS
    from tunewise.indicators.score import score_pool
    from tunewise.model.hf import HFBackend
    from tunewise.select.weighted import FEATURES, indicator_features
    from tunewise.weights.anchors import embedding_stratified_anchors
    from tunewise.weights.proxy import ProxyModel
    from tunewise.weights.search import tune_weights

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    backend = HFBackend(loaded)
    cache = str(out / SCORES_FOLDER)
    scores, pool_seconds = _timed(lambda: score_pool(
        pool, backend, (*DEFAULT_INDICATORS, "embedding"), cache_dir=cache,
        progress=lambda done, total: print(f"  scoring the pool {done}/{total}", flush=True)))
    dev_scores, dev_seconds = _timed(lambda: score_pool(dev, backend, ["embedding"], cache_dir=cache))
    features = indicator_features(scores, FEATURES, set_diversity=args.set_diversity)
    anchors = embedding_stratified_anchors(embedding_matrix(dev_scores), args.anchors, args.split_seed)
    anchor_examples = [dev[int(position)] for position in anchors.positions]
    tuned, search_seconds = _timed(lambda: tune_weights(
        features, pool, anchor_examples, anchors, ProxyModel(backend), out / SEARCH_FOLDER, fraction=args.fraction,
        trials=args.trials, sampler=args.sampler, repeats=args.repeats, demos=args.demos, metric=LOG_LIKELIHOOD,
        seed=args.split_seed,
        progress=lambda done, total: print(f"  weight search: trial {done}/{total}", flush=True)))
    return scores, tuned, {"pool_scoring": pool_seconds, "dev_embedding": dev_seconds, "search": search_seconds}


def setup_document(tuned, args, tokens: list[int], seconds: dict) -> dict:
    """setup.json: the search's outcome, the proxy check's settings (trial, J, weights and the mean
    training tokens of each selection) and what the setup cost in this process."""
    from tunewise.weights.search import spread_trials

    def mean_tokens(weights) -> float:
        return statistics.fmean(tokens[int(p)] for p in tuned.selection(weights))

    best = tuned.best
    chosen = spread_trials(tuned.search.trials, args.proxy_checks, tuned.selection)
    return {
        "search": {"trials": len(tuned.search.trials), "best_trial": best.index, "best_J": best.value,
                   "best_J_spread": best.spread, "best_weights": best.weights, "distinct": tuned.distinct(),
                   "resumed_from": tuned.search.resumed_from, "anchors": tuned.settings["anchors"]},
        "tuned": {"trial": best.index, "mean_tokens": mean_tokens(best.weights)},
        "check_settings": [{"trial": r.index, "J": r.value, "J_spread": r.spread, "weights": r.weights,
                            "mean_tokens": mean_tokens(r.weights), "run": "tuned (first seed)" if r.index == best.index
                            else cell_name(CHECK, trial=r.index)} for r in chosen],
        "seconds": seconds,
    }


def run_cell(study, tuned, scores, arm: str, seed: int, trial: int | None) -> dict:
    """Select for ``arm`` (a check: trial ``trial``'s weights), fine-tune with ``seed`` and score:
    the run's record. Proxy checks are scored by log-likelihood only."""
    from study_difficulty_v2 import measure

    from tunewise.training.finetune import finetune
    from tunewise.training.sweep import strategy_from_spec

    started = time.perf_counter()
    extra = {}
    if arm == ALL:
        positions = list(range(len(study.pool)))
    elif arm == RANDOM:
        positions = [int(p) for p in strategy_from_spec("random").select(scores, tuned.selection_size, seed).positions]
    else:
        record = tuned.best if arm == TUNED else next(r for r in tuned.search.trials if r.index == trial)
        positions = [int(p) for p in tuned.selection(record.weights)]
        extra = {"trial": record.index, "J": record.value, "J_spread": record.spread, "weights": record.weights}
    selected = [study.pool[p] for p in positions]
    measured = study if arm != CHECK else dataclasses.replace(study, accuracy_test=[])
    with finetune(study.loaded, selected, dataclasses.replace(study.config, seed=seed), dtype=study.args.dtype) as trained:
        metrics = measure(measured, trained.model)
    return {"arm": arm, "seed": seed, **extra, "examples": len(selected), "metrics": metrics,
            "selection": {"ids": [e.id for e in selected]}, "training": trained.log.to_dict(),
            "seconds": round(time.perf_counter() - started, 3)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tunewise.weights import DEFAULT_DEMOS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_weights_v2"))
    parser.add_argument("--pool-size", type=int, default=1000, help="GSM8K train rows in the pool.")
    parser.add_argument("--dev-size", type=int, default=512, help="Further GSM8K train rows the anchors are chosen from.")
    parser.add_argument("--test-size", type=int, default=200, help="Held-out GSM8K test items (log-likelihood).")
    parser.add_argument("--accuracy-items", type=int, default=100,
                        help="Of those, how many arm runs answer by generation (even over the test tertiles).")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Longest generated answer.")
    parser.add_argument("--fraction", type=float, default=0.3, help="ρ: the tuned and random arms take ρ of the pool.")
    parser.add_argument("--reduced", action="store_true",
                        help=f"The cheaper grid: {REDUCED} instead of {FULL} (flags given explicitly win).")
    parser.add_argument("--epochs", type=int, default=None, help=f"Fine-tuning epochs (default {FULL['epochs']}).")
    parser.add_argument("--trials", type=int, default=None, help=f"Trials of the weight search (default {FULL['trials']}).")
    parser.add_argument("--anchors", type=int, default=None, help=f"m: anchor items (default {FULL['anchors']}).")
    parser.add_argument("--repeats", type=int, default=3, help="R: demonstration draws per trial.")
    parser.add_argument("--demos", type=int, default=DEFAULT_DEMOS, help="d: demonstrations per draw.")
    parser.add_argument("--sampler", default="tpe", help="Optuna sampler: tpe or gp.")
    parser.add_argument("--set-diversity", action="store_true", help="Make every S(w) set-diverse (review D2's fix).")
    parser.add_argument("--proxy-checks", type=int, default=MIN_CHECK_POINTS,
                        help="Weight settings spread over J whose selections are fine-tuned for the rank correlation.")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--max-seq-length", type=int, default=CPU_PROFILE["max_seq_length"],
                        help="Tokens per training example (640 holds every GSM8K example in SmolLM2's tokens).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a CPU with bf16 instructions), fp32, bf16.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plan-only", action="store_true", help="Write OUT/plan.json (and the cost) and stop.")
    parser.add_argument("--report-only", action="store_true", help="Only rebuild OUT/report.md and report.json.")
    args = parser.parse_args(argv)
    for name, value in (REDUCED if args.reduced else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.proxy_checks < 3:
        parser.error("--proxy-checks must be 3 or more (a rank correlation over fewer points says nothing)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        print(report_markdown(write_report(args.out)))
        return
    command = shlex.join(["python", "bench/study_weights_v2.py", *(sys.argv[1:] if argv is None else argv)])

    import torch
    from realdata import gsm8k
    from study_difficulty_v2 import Study

    from tunewise.io import write_json
    from tunewise.model.load import load_model
    from tunewise.select.weighted import FEATURES, selection_size
    from tunewise.training.finetune import FinetuneConfig
    from tunewise.training.sweep import tertiles_by_answer_length

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    out = args.out
    config = FinetuneConfig.from_profile(PROFILE, **{**CPU_PROFILE, "epochs": args.epochs,
                                                     "max_seq_length": args.max_seq_length})
    train = gsm8k("train", limit=args.pool_size + args.dev_size, seed=args.split_seed)
    pool, dev = train[:args.pool_size], train[args.pool_size:]
    test = gsm8k("test", limit=args.test_size, seed=args.split_seed)
    loaded = load_model(args.model, dtype=args.dtype)
    test_tertiles = tertiles_by_answer_length(test, loaded.tokenizer)
    accuracy_ids = set(stratified_subset([e.id for e in test], test_tertiles, args.accuracy_items))
    accuracy_test = [e for e in test if e.id in accuracy_ids]
    pool_tokens, pool_responses = example_tokens(loaded.tokenizer, pool)
    dev_tokens, _ = example_tokens(loaded.tokenizer, dev)
    size = selection_size(args.fraction, len(pool))
    if not 1 <= size < len(pool):
        raise SystemExit(f"--fraction {args.fraction} of {len(pool)} examples selects {size}; choose a fraction in (0, 1)")

    settings = {"model": args.model, "model_fingerprint": loaded.fingerprint, "dtype": args.dtype,
                "split_seed": args.split_seed, "pool_examples": len(pool), "pool_ids_sha256": _digest(pool),
                "dev_examples": len(dev), "dev_ids_sha256": _digest(dev), "test_size": len(test),
                "test_ids_sha256": _digest(test), "accuracy_items": len(accuracy_test),
                "max_new_tokens": args.max_new_tokens, "answer_metric": ANSWER_METRIC, "fraction": args.fraction,
                "selection_size": size, "features": list(FEATURES), "set_diversity": args.set_diversity,
                "anchors": args.anchors, "trials": args.trials, "repeats": args.repeats, "demos": args.demos,
                "sampler": args.sampler, "proxy_metric": LOG_LIKELIHOOD, "proxy_checks": args.proxy_checks,
                "profile": PROFILE, "finetune": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}}

    def write_plan(setup: dict) -> list:
        """plan.json: the settings, the passes (the proxy check's trials once the search has chosen
        them) and their projected cost; returns the passes."""
        best = setup.get("tuned", {}).get("trial")
        chosen = setup.get("check_settings")
        check_trials = ([c["trial"] for c in chosen if c["trial"] != best] if chosen is not None
                        else [None] * (args.proxy_checks - 1))
        passes = plan_passes(args.seeds, check_trials)
        pool_mean = statistics.fmean(pool_tokens)
        tokens = {RANDOM: pool_mean, ALL: pool_mean, CHECK: pool_mean,
                  TUNED: setup.get("tuned", {}).get("mean_tokens", pool_mean),
                  **{(CHECK, c["trial"]): c["mean_tokens"] for c in chosen or []}}
        longest = statistics.fmean(sorted(pool_tokens)[-size:])
        examples = {TUNED: size, RANDOM: size, CHECK: size, ALL: len(pool)}
        draw_tokens = args.anchors * statistics.fmean(dev_tokens) + args.demos * pool_mean
        cost = [setup_hours(sum(pool_tokens) + sum(r + 1 for r in pool_responses), len(pool), sum(dev_tokens),
                            draw_tokens, args.trials, args.repeats, len(test), len(accuracy_test)),
                *projected_hours(passes, examples, tokens, args.epochs, len(test), len(accuracy_test))]
        if_longest = projected_hours(passes, examples, {**tokens, TUNED: longest, CHECK: longest}, args.epochs,
                                     len(test), len(accuracy_test))
        claim(out, settings, {
            "seeds": args.seeds,
            "data": {"source": "../shared/data/gsm8k: train.jsonl shuffled with the split seed (pool first, then dev); "
                               "test.jsonl shuffled with the split seed",
                     "pool_ids": [e.id for e in pool], "dev_ids": [e.id for e in dev], "test_ids": [e.id for e in test],
                     "accuracy_ids": [e.id for e in accuracy_test]},
            "passes": [{"pass": label, "cells": [list(cell) for cell in cells]} for label, cells in passes],
            "weight_settings": {
                "search_space": f"the simplex over {', '.join(FEATURES)} (default orientations)",
                "tuned": "the best of the search's trials (highest J)",
                "proxy_check": (f"{args.proxy_checks} of the search's trials, J spread evenly from the lowest to the "
                                "highest, one per distinct selection (tunewise.weights.search.spread_trials); the "
                                "highest is the tuned arm's first-seed run"),
                "chosen": chosen},
            "tokens": {"pool_mean": pool_mean, "dev_mean": statistics.fmean(dev_tokens),
                       f"longest_{size}_mean": longest, "proxy_draw_estimate": draw_tokens},
            "projected_cpu_hours": cost,
            "projected_cpu_hours_total": sum(c["total_h"] for c in cost),
            "projected_cpu_hours_total_if_selections_are_the_longest": cost[0]["total_h"] + sum(
                c["total_h"] for c in if_longest),
            "cost_model": {"train_tokens_per_second": TRAIN_TOKENS_PER_SECOND,
                           "forward_tokens_per_second": FORWARD_TOKENS_PER_SECOND,
                           "proxy_tokens_per_second": PROXY_TOKENS_PER_SECOND,
                           "log_likelihood_seconds_per_item": LOG_LIKELIHOOD_SECONDS_PER_ITEM,
                           "accuracy_seconds_per_item": ACCURACY_SECONDS_PER_ITEM,
                           "confidence_seconds_per_prompt": CONFIDENCE_SECONDS_PER_PROMPT,
                           "source": "bench/STUDIES.md's cost model; the smoke runs of studies 2, 3 and 4 v2"},
        }, command)
        return passes

    out.mkdir(parents=True, exist_ok=True)
    passes = write_plan(_read(out / SETUP_FILE))
    plan = _read(out / PLAN_FILE)
    print(f"gsm8k: pool {len(pool)}, dev {len(dev)}, test {len(test)} (accuracy on {len(accuracy_test)}); "
          f"{size} selected; seeds {args.seeds}", flush=True)
    for row in plan["projected_cpu_hours"]:
        print(f"  {row['pass']}: {row['runs']} runs, projected {row['total_h']:.2f} CPU-h", flush=True)
    print(f"  total {plan['projected_cpu_hours_total']:.2f} CPU-h (one core, bf16; "
          f"{plan['projected_cpu_hours_total_if_selections_are_the_longest']:.2f} if the weights pick the longest "
          "examples)", flush=True)
    if args.plan_only:
        return

    study = Study(loaded, pool, None, test, accuracy_test, test_tertiles, config, args)
    cells = out / CELLS_FOLDER
    if not (cells / cell_name(ZERO_SHOT)).exists():
        from study_difficulty_v2 import measure

        print("[setup] zero-shot", flush=True)
        metrics, seconds = _timed(lambda: measure(study, loaded.model))
        write_json(cells / cell_name(ZERO_SHOT), {"arm": ZERO_SHOT, "seed": None, "metrics": metrics,
                                                  "seconds": seconds["wall"]})
    print("[setup] pool scoring and the weight search", flush=True)
    scores, tuned, seconds = run_search(args, loaded, pool, dev, out)
    write_json(out / WEIGHTS_FILE, tuned.document())
    if not (out / SETUP_FILE).exists():
        write_json(out / SETUP_FILE, setup_document(tuned, args, pool_tokens, seconds))
    passes = write_plan(_read(out / SETUP_FILE))
    write_report(out)
    for number, (label, pass_cells) in enumerate(passes, start=1):
        for arm, seed, trial in pass_cells:
            path = cells / cell_name(arm, seed, trial)
            if path.exists():
                continue
            name = path.stem
            print(f"[pass {number}: {label}] {name}", flush=True)
            record = run_cell(study, tuned, scores, arm, seed, trial)
            write_json(path, record)
            scored = ", ".join(f"{m} {record['metrics'][m]['score']:.4f}" for m in record["metrics"])
            print(f"[pass {number}: {label}] {name}: {scored} ({record['seconds']:.0f} s)", flush=True)
        write_report(out)
    print(report_markdown(write_report(out)))


if __name__ == "__main__":
    main()
