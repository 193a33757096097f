"""Study 3 of evidence v2 (issue 14): difficulty, paper C's way. Does the best bucket move harder as the budget grows?

GSM8K's training split is the pool (``--pool-size`` caps it, drawn with ``--split-seed``); its test
split, shuffled with ``--split-seed``, gives ``--test-size`` (200) held-out items. Four arms, each a
``tunewise select`` strategy:

- ``easy``, ``medium``, ``hard``: ``difficulty_bucket:bucket=<b>,difficulty=length``, the budget drawn
  at random from one tertile of the pool by the reference solution's length in tokens (the
  ``length`` indicator: the response encoded by :mod:`tunewise.model.chat` with the SmolLM2
  tokenizer). Paper C's design: three buckets of equal size by chain-of-thought length;
- ``random``: the budget drawn at random from the whole pool (the baseline every gain is paired with).

Budgets ``--budgets`` (64, 256 by default; 1,024 when asked and the smallest tertile holds it, as
GSM8K's 7,473 rows do) × seeds ``--seeds`` (0, 1, 2); one seed drives both the draw and the
fine-tune. Fine-tuning is the profile study 1 runs (``paper-a`` as LoRA rank 8 at 2e-4, cosine decay
after 10 % warmup, effective batch 4, ``--dtype auto`` = bf16 on this CPU) with the schedule
STUDIES.md plans for this study: **2 epochs** at every budget (32 optimizer steps at 64, 128 at 256,
512 at 1,024), no validation split and no early stopping (the cost model counts 2 × budget
examples seen and nothing else). ``max_seq_length`` is 640: 7 of GSM8K's training examples are
longer than the default 512 tokens and none is longer than 568, so no example is cut.

Every run, and the base model once (zero-shot), is scored on the held-out items two ways:

- **log-likelihood** (cheap, all ``--test-size`` items): the mean log-probability per gold-solution
  token (``evaluate --metric log_likelihood``), which moves where SmolLM2-135M's accuracy cannot;
- **accuracy** (``--accuracy-items``, a subset drawn evenly from the three test tertiles): greedy
  generation of at most ``--max-new-tokens`` (256; 95 % of GSM8K's reference solutions are shorter
  than 230 tokens), scored by tunewise's ``gsm8k`` metric (the final number, after ``####``, ``\\boxed{}``
  or "the answer is", else the last number, equal by value). Generation costs about 1.7 s per item on
  one core of this CPU, six times a log-likelihood item (0.3 s; smoke run, SmolLM2 bf16). The
  default, 100 items, adds 1.2 CPU-hours (37 %) to the 64 + 256 grid's 3.2; all 200 would add 2.4
  (74 %) for a standard error that only shrinks from about 0.02 to 0.015 at SmolLM2's 5 % accuracy.
  ``--accuracy-items 0`` leaves accuracy out, ``--accuracy-items 200`` scores every item.

Both are reported overall and per test-difficulty tertile: the held-out items split into easy,
medium and hard thirds by their own reference solution's length in tokens
(:func:`tunewise.training.sweep.tertiles_by_answer_length`).

Order: the run is cut off long before the grid ends, so the most informative cells come first. Pass 1
is the zero-shot baseline and seed 0 of every arm at the smallest budget, then seed 0 at each larger
budget (with seed 0 the best bucket is known at every budget), then the remaining seeds budget by
budget (the 95 % intervals). Each finished cell is a file ``OUT/cells/<arm>__b<budget>__s<seed>.json``
that is never redone, so rerunning the same command resumes; more budgets or seeds can be added to a
finished study; other settings (model, split, test set, accuracy items, fine-tuning) are refused in the
same ``OUT``. After every pass (and with ``--report`` alone) ``OUT/report.md`` and ``OUT/report.json``
report what has finished: per budget each arm's mean with its 95 % t interval over seeds, the paired
gain over random, the best bucket per budget, and the answer to the study's question (or "not
enough seeds yet").

    bench/run_study.sh study_difficulty_v2 COMMIT -- python bench/study_difficulty_v2.py --out bench/out/study_difficulty_v2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = ("random", "easy", "medium", "hard")
BUCKETS = ("easy", "medium", "hard")
TERTILES = ("easy", "medium", "hard")
ZERO_SHOT = "zero_shot"
LOG_LIKELIHOOD = "log_likelihood"
ACCURACY = "accuracy"
METRICS = (LOG_LIKELIHOOD, ACCURACY)
ANSWER_METRIC = "gsm8k"
CELLS_FOLDER = "cells"
PLAN_FILE = "plan.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
CONFIDENCE_LEVEL = 0.95
# The study plans three seeds; fewer give an interval so wide (t = 12.7 at two) that no answer is honest.
MIN_SEEDS_FOR_VERDICT = 3
PROFILE = "paper-a"
# Study 1's CPU departures from paper A (LoRA at 2e-4, batches of 2 × 2), with STUDIES.md's fixed
# 2-epoch schedule for this study in place of fixed steps and early stopping.
CPU_PROFILE = {"method": "lora", "learning_rate": 2e-4, "max_steps": None, "epochs": 2, "batch_size": 2,
               "gradient_accumulation_steps": 2, "eval_steps": None, "early_stopping_patience": None,
               "max_seq_length": 640}
# The projection's rates, one thread, bf16: training tokens/s is STUDIES.md's cost model (study 1's
# TRL fine-tunes reach 150-170 when they have a core, median 109 on the shared machine); seconds per
# test item were measured by the smoke run (SmolLM2, 10 items, load 1.5; about twice that at load 6).
TRAIN_TOKENS_PER_SECOND = 165.0
LOG_LIKELIHOOD_SECONDS_PER_ITEM = 0.3
ACCURACY_SECONDS_PER_ITEM = 1.7


def arm_spec(arm: str) -> str:
    """The ``tunewise select`` strategy spec of an arm."""
    if arm == "random":
        return "random"
    if arm not in BUCKETS:
        raise ValueError(f"unknown arm {arm!r}")
    return f"difficulty_bucket:bucket={arm},difficulty=length"


def cell_name(arm: str, budget: int, seed: int | None) -> str:
    return f"{ZERO_SHOT}.json" if arm == ZERO_SHOT else f"{arm}__b{budget}__s{seed}.json"


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/test_study_difficulty_v2.py)
# ---------------------------------------------------------------------------------------------


def stratified_subset(ids: list[str], tertile_of: dict[str, str], k: int) -> list[str]:
    """``k`` of ``ids`` taken evenly from the three tertiles: round robin over easy, medium, hard,
    each in the order of ``ids`` (a seeded shuffle, so each tertile's first items are a random
    sample of it); tertile counts differ by at most one while every tertile has items left.
    Returned in the order of ``ids``. ``k`` larger than ``ids`` returns all of them."""
    queues = {tertile: [i for i in ids if tertile_of[i] == tertile] for tertile in TERTILES}
    chosen: set[str] = set()
    while len(chosen) < min(k, len(ids)):
        for tertile in TERTILES:
            if queues[tertile] and len(chosen) < k:
                chosen.add(queues[tertile].pop(0))
    return [i for i in ids if i in chosen]


def plan_passes(budgets: list[int], seeds: list[int]) -> list[list[tuple[str, int, int]]]:
    """The cells in passes, most informative first: the first seed of every arm at each budget
    (ascending), then the other seeds, budget by budget. Within a pass the cells go seed by seed,
    arms in ``ARMS`` order, so a pass cut short leaves whole seeds behind."""
    budgets, seeds = sorted(budgets), sorted(seeds)
    passes = [[(arm, budget, seeds[0]) for arm in ARMS] for budget in budgets]
    if len(seeds) > 1:
        passes += [[(arm, budget, seed) for seed in seeds[1:] for arm in ARMS] for budget in budgets]
    return passes


def mean_interval(values: list[float]) -> dict:
    """Mean of ``values`` with its 95 % Student-t interval (None below two values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = sum(values) / n
    low = high = None
    if n >= 2:
        half = stats.t.ppf((1 + CONFIDENCE_LEVEL) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def cell_value(cell: dict, metric: str, tertile: str | None = None) -> float | None:
    """A cell's score on ``metric``: overall, or on one test-difficulty tertile; None when not measured."""
    entry = cell.get("metrics", {}).get(metric)
    if entry is None:
        return None
    return entry["score"] if tertile is None else entry["tertiles"].get(tertile)


def per_seed(cells: list[dict], metric: str, arm: str, budget: int, tertile: str | None = None) -> dict[int, float]:
    """seed → the arm's score at ``budget`` (cells that did not measure ``metric`` left out)."""
    values = {}
    for cell in cells:
        if cell["arm"] == arm and cell["budget"] == budget:
            value = cell_value(cell, metric, tertile)
            if value is not None:
                values[cell["seed"]] = value
    return values


def summarise(cells: list[dict], metric: str) -> dict:
    """budget → arm → ``overall`` and per test tertile (``easy``/``medium``/``hard``): the mean over
    seeds with its 95 % t interval and the per-seed scores; beside every bucket arm its paired gain
    over random (:func:`tunewise.training.sweep.paired_gain`), overall and per tertile."""
    from tunewise.training.sweep import paired_gain

    budgets = sorted({cell["budget"] for cell in cells if cell["arm"] != ZERO_SHOT})
    summary: dict = {}
    for budget in budgets:
        summary[str(budget)] = {}
        for arm in ARMS:
            entry = {}
            for part in (None, *TERTILES):
                scores = per_seed(cells, metric, arm, budget, part)
                if not scores:
                    continue
                block = {**mean_interval(list(scores.values())), "per_seed": {str(s): v for s, v in sorted(scores.items())}}
                baseline = per_seed(cells, metric, "random", budget, part)
                if arm != "random" and scores.keys() & baseline.keys():
                    block["gain_over_random"] = paired_gain(scores, baseline)
                entry["overall" if part is None else part] = block
            if entry:
                summary[str(budget)][arm] = entry
    return summary


def best_bucket(cells: list[dict], metric: str, budget: int, tertile: str | None = None) -> dict | None:
    """The bucket with the highest mean score at ``budget`` (over the seeds every bucket has), and
    whether it is clearly best: its paired difference to the runner-up has a 95 % interval above 0.
    None until every bucket has a common seed."""
    from tunewise.training.sweep import paired_gain

    scores = {arm: per_seed(cells, metric, arm, budget, tertile) for arm in BUCKETS}
    common = set.intersection(*(set(values) for values in scores.values()))
    if not common:
        return None
    means = {arm: statistics.fmean(scores[arm][seed] for seed in common) for arm in BUCKETS}
    ranked = sorted(BUCKETS, key=lambda arm: (-means[arm], BUCKETS.index(arm)))
    top = [arm for arm in ranked if math.isclose(means[arm], means[ranked[0]], rel_tol=0, abs_tol=1e-12)]
    best, runner_up = ranked[0], ranked[1]
    lead = paired_gain({s: scores[best][s] for s in common}, {s: scores[runner_up][s] for s in common})
    return {"best": "/".join(top) if len(top) > 1 else best, "tied": len(top) > 1, "runner_up": runner_up,
            "means": means, "seeds": sorted(common), "lead_over_runner_up": lead,
            "clear": bool(lead["ci_low"] is not None and lead["ci_low"] > 0)}


def shift_contrast(cells: list[dict], metric: str, low_budget: int, high_budget: int) -> dict:
    """Per seed, how much more the hard bucket gains over the easy one at ``high_budget`` than at
    ``low_budget``: [hard − easy](high) − [hard − easy](low), paired by seed over the seeds that have
    all four cells, with its mean and 95 % t interval. Above 0: the best difficulty moves harder as
    the budget grows."""
    values = {}
    for seed in set(per_seed(cells, metric, "hard", high_budget)):
        parts = [per_seed(cells, metric, arm, budget).get(seed)
                 for arm, budget in (("hard", high_budget), ("easy", high_budget), ("hard", low_budget),
                                     ("easy", low_budget))]
        if None not in parts:
            values[seed] = (parts[0] - parts[1]) - (parts[2] - parts[3])
    return {**mean_interval(list(values.values())), "per_seed": {str(s): v for s, v in sorted(values.items())},
            "low_budget": low_budget, "high_budget": high_budget}


def verdict(cells: list[dict], metric: str, min_seeds: int = MIN_SEEDS_FOR_VERDICT) -> dict:
    """The answer to "does the best bucket move harder as the budget grows?" on ``metric``: the best
    bucket per budget and the hard-minus-easy contrast between the smallest and largest budget
    with every bucket measured; ``answer`` is one sentence, "not enough ..." while it cannot be given."""
    budgets = sorted({c["budget"] for c in cells if c["arm"] in BUCKETS and cell_value(c, metric) is not None})
    best = {budget: best_bucket(cells, metric, budget) for budget in budgets}
    measured = [budget for budget in budgets if best[budget] is not None]
    result = {"metric": metric, "best": {str(b): v for b, v in best.items()}, "contrast": None}
    path = ", ".join(f"{'a tie of ' * best[b]['tied']}{best[b]['best']} at {b}" for b in measured)
    if len(measured) < 2:
        result["answer"] = "not enough budgets yet: every bucket needs a finished seed at two budgets."
        return result
    contrast = shift_contrast(cells, metric, measured[0], measured[-1])
    result["contrast"] = contrast
    if contrast["n"] < min_seeds:
        result["answer"] = (f"not enough seeds yet ({contrast['n']} of the {min_seeds} needed for an interval); "
                            f"so far the best bucket is {path}, and hard − easy changes by "
                            f"{contrast['mean']:+.4f} from {measured[0]} to {measured[-1]} (no interval).")
        return result
    scores = {cell_value(c, metric) for c in cells if c["arm"] in BUCKETS and c["budget"] in measured}
    if len(scores) == 1:
        result["answer"] = f"cannot tell: every bucket's fine-tune scores {scores.pop():.4f} at every budget."
        return result
    interval = f"{contrast['mean']:+.4f} [{contrast['ci_low']:+.4f}, {contrast['ci_high']:+.4f}]"
    change = f"hard − easy changes by {interval} from budget {measured[0]} to {measured[-1]} ({contrast['n']} seeds)"
    if contrast["ci_low"] > 0:
        answer = f"yes: {change}, an interval above 0; the best bucket is {path}."
    elif contrast["ci_high"] < 0:
        answer = f"no, it moves easier: {change}, an interval below 0; the best bucket is {path}."
    else:
        answer = f"no move detected: {change}, an interval that holds 0; the best bucket is {path}."
    result["answer"] = answer
    return result


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def read_cells(out: Path) -> tuple[dict | None, list[dict]]:
    """The zero-shot cell (None when missing) and every finished fine-tune cell of a study folder."""
    zero_shot, cells = None, []
    for path in sorted((out / CELLS_FOLDER).glob("*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        if cell["arm"] == ZERO_SHOT:
            zero_shot = cell
        else:
            cells.append(cell)
    return zero_shot, cells


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(block: dict | None, signed: bool = False) -> str:
    if not block or block.get("mean") is None:
        return "–"
    sign = "+" if signed else ""
    text = f"{block['mean']:{sign}.4f}"
    if block.get("ci_low") is not None:
        text += f" [{block['ci_low']:{sign}.4f}, {block['ci_high']:{sign}.4f}]"
    return text + f" (n={block.get('n', block.get('n_seeds'))})"


def cost_summary(cells: list[dict], zero_shot: dict | None) -> dict:
    """What the finished cells cost on this machine: median fine-tune seconds per budget, training
    tokens/s, and seconds per test item of each metric."""
    everything = cells + ([zero_shot] if zero_shot else [])
    per_item = {}
    for metric in METRICS:
        rates = [c["metrics"][metric]["seconds"] / c["metrics"][metric]["n"]
                 for c in everything if c.get("metrics", {}).get(metric) and c["metrics"][metric]["n"]]
        per_item[metric] = statistics.median(rates) if rates else None
    budgets = sorted({c["budget"] for c in cells})
    return {
        "finetune_seconds_median": {str(b): statistics.median([c["training"]["seconds"] for c in cells if c["budget"] == b])
                                    for b in budgets},
        "train_tokens_per_second_median": statistics.median([c["training"]["tokens_per_second"] for c in cells])
        if cells else None,
        "evaluation_seconds_per_item_median": per_item,
        "cell_seconds_median": {str(b): statistics.median([c["seconds"] for c in cells if c["budget"] == b])
                                for b in budgets},
    }


def build_report(out: Path) -> dict:
    """report.json's document: the plan's progress, zero-shot, per metric the summary and the verdict, costs."""
    plan = json.loads((out / PLAN_FILE).read_text(encoding="utf-8")) if (out / PLAN_FILE).exists() else {}
    zero_shot, cells = read_cells(out)
    planned = [tuple(cell) for cell in plan.get("cells", [])]
    done = {(c["arm"], c["budget"], c["seed"]) for c in cells}
    return {
        "settings": plan.get("settings"),
        "cells_planned": len(planned),
        "cells_done": len(done),
        "cells_missing": [list(cell) for cell in planned if cell not in done],
        "zero_shot_done": zero_shot is not None,
        "zero_shot": None if zero_shot is None else {metric: zero_shot["metrics"].get(metric) and
                                                    {k: zero_shot["metrics"][metric][k] for k in ("score", "tertiles", "n")}
                                                    for metric in METRICS},
        "summary": {metric: summarise(cells, metric) for metric in METRICS},
        "verdict": {metric: verdict(cells, metric) for metric in METRICS},
        "cost": cost_summary(cells, zero_shot),
    }


def report_markdown(report: dict) -> str:
    settings = report["settings"] or {}
    lines = ["# Study 3 (evidence v2): difficulty, paper C's way", "",
             f"{report['cells_done']} of {report['cells_planned']} planned fine-tunes finished, zero-shot "
             f"{'done' if report['zero_shot_done'] else 'not yet'}"
             f" (model {settings.get('model')}, pool {settings.get('pool_examples')}, "
             f"{settings.get('test_size')} test items for log-likelihood, {settings.get('accuracy_items')} for accuracy).", ""]
    for metric in METRICS:
        name = "mean log-likelihood per gold token" if metric == LOG_LIKELIHOOD else "accuracy (gsm8k exact match)"
        lines += [f"## {name}", "", f"**Does the best bucket move harder as the budget grows?** "
                  f"{report['verdict'][metric]['answer']}", ""]
        zero = (report["zero_shot"] or {}).get(metric)
        if zero:
            lines += [f"Zero-shot: {_number(zero['score'])} overall; " + ", ".join(
                f"{t} test {_number(zero['tertiles'].get(t))}" for t in TERTILES) + f" ({zero['n']} items).", ""]
        summary = report["summary"][metric]
        if not summary:
            lines += ["No fine-tune has finished yet.", ""]
            continue
        for budget, arms in summary.items():
            best = report["verdict"][metric]["best"].get(budget)
            lines += [f"### budget {budget}", "",
                      "| arm | overall [95 % CI] | gain over random | easy test | medium test | hard test |",
                      "|---|---|---|---|---|---|"]
            for arm, entry in arms.items():
                gain = (entry.get("overall") or {}).get("gain_over_random")
                lines.append(f"| {arm} | {_interval(entry.get('overall'))} | {_interval(gain, signed=True)} | "
                             + " | ".join(_interval(entry.get(t)) for t in TERTILES) + " |")
            if best and best["tied"]:
                lines += ["", f"Best bucket: a tie of {best['best']}."]
            elif best:
                lead = best["lead_over_runner_up"]
                lines += ["", f"Best bucket: **{best['best']}** ({'clearly' if best['clear'] else 'not clearly'} "
                          f"ahead of {best['runner_up']}: {_interval(lead, signed=True)})."]
            lines.append("")
    cost = report["cost"]
    lines += ["## Cost on this machine", "",
              f"Median fine-tune seconds per budget: {cost['finetune_seconds_median']}; whole cell "
              f"(fine-tune + both evaluations): {cost['cell_seconds_median']}; training tokens/s "
              f"{_number(cost['train_tokens_per_second_median'], 1)}; seconds per test item: "
              + ", ".join(f"{m} {_number(v, 2)}" for m, v in cost["evaluation_seconds_per_item_median"].items()) + ".", ""]
    if report["cells_missing"]:
        lines += [f"Missing cells (in run order): {', '.join(f'{a} b{b} s{s}' for a, b, s in report['cells_missing'])}.", ""]
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    """The study's figure: one row per metric, one column per test part (overall, then each test
    tertile); each arm's mean over seeds against the budget (zero-shot at 0), with its 95 % interval
    where two seeds or more have finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("overall", *TERTILES)
    figure, panels = plt.subplots(len(METRICS), len(parts), figsize=(4.2 * len(parts), 3.6 * len(METRICS)),
                                  squeeze=False)
    for row, metric in zip(panels, METRICS):
        zero = (report["zero_shot"] or {}).get(metric)
        summary = report["summary"][metric]
        for panel, part in zip(row, parts):
            zero_value = None if not zero else (zero["score"] if part == "overall" else zero["tertiles"].get(part))
            for arm in ARMS:
                points = [(int(budget), arms[arm][part]) for budget, arms in summary.items()
                          if part in arms.get(arm, {})]
                if not points:
                    continue
                xs = [0] * (zero_value is not None) + [budget for budget, _ in points]
                ys = [zero_value] * (zero_value is not None) + [block["mean"] for _, block in points]
                low = [0.0] * (zero_value is not None) + [
                    0.0 if block["ci_low"] is None else block["mean"] - block["ci_low"] for _, block in points]
                panel.errorbar(xs, ys, yerr=low, marker="o", capsize=3, label=arm)
            panel.set_xscale("symlog", linthresh=64)
            ticks = [0, *sorted(int(budget) for budget in summary)]
            panel.set_xticks(ticks, [str(tick) for tick in ticks])
            panel.set(title=f"{'log-likelihood' if metric == LOG_LIKELIHOOD else 'accuracy'}, {part} test",
                      xlabel="labelled examples")
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
# Running the cells
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Study:
    """What every cell shares: the model, pool, scores table, test sets and their tertiles."""

    loaded: object
    pool: list
    scores: object
    test: list
    accuracy_test: list
    test_tertiles: dict[str, str]
    config: object
    args: argparse.Namespace


def measure(study: Study, model) -> dict:
    """Both metrics of ``model`` on the test sets: score, per-tertile score, items, seconds, samples."""
    from tunewise.training.evaluate import evaluate
    from tunewise.training.sweep import tertile_scores

    measured = {}
    for metric, items in ((LOG_LIKELIHOOD, study.test), (ACCURACY, study.accuracy_test)):
        if not items:
            continue
        started = time.perf_counter()
        results = evaluate(model, study.loaded.tokenizer, items,
                           metric=LOG_LIKELIHOOD if metric == LOG_LIKELIHOOD else ANSWER_METRIC,
                           max_new_tokens=None if metric == LOG_LIKELIHOOD else study.args.max_new_tokens)
        keep = (LOG_LIKELIHOOD,) if metric == LOG_LIKELIHOOD else ("prediction", "extracted", "target_extracted",
                                                                     "correct", "truncated")
        measured[metric] = {
            "score": results["average"],
            "tertiles": tertile_scores(results["samples"], study.test_tertiles),
            "n": len(items),
            "seconds": round(time.perf_counter() - started, 3),
            "samples": [{"id": s["id"], **{k: s[k] for k in keep}} for s in results["samples"]],
        }
    return measured


def run_cell(study: Study, arm: str, budget: int, seed: int) -> dict:
    """Select ``budget`` examples for ``arm`` with ``seed``, fine-tune, and measure: the cell's record."""
    from tunewise.training.finetune import finetune
    from tunewise.training.sweep import strategy_from_spec

    started = time.perf_counter()
    selection = strategy_from_spec(arm_spec(arm)).select(study.scores, budget, seed)
    positions = list(selection.positions)
    selected = [study.pool[p] for p in positions]
    lengths = study.scores["length"].to_numpy()[positions]
    with finetune(study.loaded, selected, dataclasses.replace(study.config, seed=seed), dtype=study.args.dtype) as trained:
        metrics = measure(study, trained.model)
    return {"arm": arm, "strategy": arm_spec(arm), "budget": budget, "seed": seed, "metrics": metrics,
            "selection": {"ids": [e.id for e in selected], "length_mean": float(lengths.mean()),
                          "length_min": float(lengths.min()), "length_max": float(lengths.max()),
                          "notes": selection.notes},
            "training": trained.log.to_dict(), "seconds": round(time.perf_counter() - started, 3)}


def _digest(examples) -> str:
    return hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()[:16]


def tertile_ranges(lengths, tertiles) -> dict:
    """tertile → [shortest, longest] length and count, for the plan."""
    ranges = {}
    for index, name in enumerate(TERTILES):
        inside = [float(length) for length, t in zip(lengths, tertiles) if t == index]
        ranges[name] = {"min": min(inside), "max": max(inside), "count": len(inside),
                        "mean": round(statistics.fmean(inside), 1)} if inside else None
    return ranges


def projected_hours(passes, mean_tokens: dict[str, float], epochs: int, test_items: int,
                    accuracy_items: int) -> list[float]:
    """CPU-hours of one core per pass: training tokens (``epochs`` × budget × the arm's mean
    example length in tokens) at TRAIN_TOKENS_PER_SECOND, plus both evaluations at their measured
    seconds per item. Wall time on the shared machine has been 1.5-3 times this."""
    evaluation = test_items * LOG_LIKELIHOOD_SECONDS_PER_ITEM + accuracy_items * ACCURACY_SECONDS_PER_ITEM
    return [round(sum(epochs * budget * mean_tokens[arm] / TRAIN_TOKENS_PER_SECOND + evaluation
                      for arm, budget, _ in cells) / 3600, 2) for cells in passes]


def claim(out: Path, settings: dict, plan_extra: dict, command: str) -> None:
    """Write OUT/plan.json, or refuse a folder planned with other settings (cells would not compare)."""
    from tunewise.io import write_json

    path = out / PLAN_FILE
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"commands": []}
    if document.get("settings", settings) != settings:
        differing = sorted(k for k in settings.keys() | document["settings"].keys()
                           if settings.get(k) != document["settings"].get(k))
        raise SystemExit(f"{path} was planned with other settings ({', '.join(differing)} differ); use another --out")
    if command not in document["commands"]:
        document["commands"].append(command)
    document.update(settings=settings, **plan_extra)
    write_json(path, document)


def int_list(text: str) -> list[int]:
    return sorted(int(value) for value in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_difficulty_v2"))
    parser.add_argument("--budgets", type=int_list, default=[64, 256],
                        help="Fine-tuning budgets (1024 too on a long run; a budget larger than the pool's "
                             "smallest tertile is dropped).")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--pool-size", type=int, default=None, help="Cap the GSM8K training pool (default: all 7,473).")
    parser.add_argument("--test-size", type=int, default=200, help="Held-out GSM8K test items (log-likelihood).")
    parser.add_argument("--accuracy-items", type=int, default=100,
                        help="Of those, how many are answered by generation for accuracy (even over the test "
                             "tertiles; 0: no accuracy).")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Longest generated answer.")
    parser.add_argument("--max-seq-length", type=int, default=CPU_PROFILE["max_seq_length"],
                        help="Tokens per training example (640 holds every GSM8K example in SmolLM2's tokens; "
                             "the byte-level tiny-random model needs about 1,200).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a CPU with bf16 instructions), fp32, bf16.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plan-only", action="store_true", help="Write OUT/plan.json and stop (no fine-tunes).")
    parser.add_argument("--report", action="store_true", help="Only write OUT/report.md and report.json.")
    args = parser.parse_args(argv)
    if args.report:
        print(report_markdown(write_report(args.out)))
        return
    command = shlex.join(["python", "bench/study_difficulty_v2.py", *(sys.argv[1:] if argv is None else argv)])

    import numpy as np
    import torch
    from realdata import gsm8k

    from tunewise.indicators.score import score_pool
    from tunewise.io import write_json
    from tunewise.model.chat import encode_prompts, encode_responses
    from tunewise.model.hf import HFBackend
    from tunewise.model.load import load_model
    from tunewise.select.difficulty import difficulty_tertiles
    from tunewise.training.finetune import FinetuneConfig
    from tunewise.training.sweep import tertiles_by_answer_length

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    config = FinetuneConfig.from_profile(PROFILE, **{**CPU_PROFILE, "max_seq_length": args.max_seq_length})
    pool = gsm8k("train", limit=args.pool_size, seed=args.split_seed)
    test = gsm8k("test", limit=args.test_size, seed=args.split_seed)
    loaded = load_model(args.model, dtype=args.dtype)
    scores = score_pool(pool, HFBackend(loaded), ["length"])
    lengths = scores["length"].to_numpy()
    pool_tertiles = difficulty_tertiles(lengths)
    smallest = min(np.bincount(pool_tertiles, minlength=3))
    budgets = [b for b in args.budgets if b <= smallest]
    for budget in sorted(set(args.budgets) - set(budgets)):
        print(f"budget {budget} dropped: the pool's smallest tertile holds {smallest} examples", flush=True)
    test_tertiles = tertiles_by_answer_length(test, loaded.tokenizer)
    accuracy_ids = set(stratified_subset([e.id for e in test], test_tertiles, args.accuracy_items))
    accuracy_test = [e for e in test if e.id in accuracy_ids]
    test_lengths = [len(ids) for ids in encode_responses(loaded.tokenizer, [e.response for e in test])]
    prompt_lengths = np.array([len(p) for p in encode_prompts(loaded.tokenizer, [e.prompt for e in pool], pool)])
    example_tokens = prompt_lengths + lengths + 1  # + the end-of-turn token fine-tuning learns
    mean_tokens = {"random": float(example_tokens.mean()),
                   **{b: float(example_tokens[pool_tertiles == i].mean()) for i, b in enumerate(BUCKETS)}}
    passes = plan_passes(budgets, args.seeds)
    settings = {"model": args.model, "model_fingerprint": loaded.fingerprint, "dtype": args.dtype,
                "split_seed": args.split_seed, "pool_examples": len(pool), "pool_ids_sha256": _digest(pool),
                "test_size": len(test), "test_ids_sha256": _digest(test), "accuracy_items": len(accuracy_test),
                "max_new_tokens": args.max_new_tokens, "answer_metric": ANSWER_METRIC,
                "arms": {arm: arm_spec(arm) for arm in ARMS}, "profile": PROFILE, "profile_overrides": CPU_PROFILE,
                "finetune": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}}
    plan_extra = {
        "budgets": budgets, "seeds": args.seeds,
        "cells": [list(cell) for cells in passes for cell in cells],
        "passes": [[list(cell) for cell in cells] for cells in passes],
        "pool_tertiles_by_length": tertile_ranges(lengths, pool_tertiles),
        "mean_example_tokens": mean_tokens,
        "test_tertiles_by_length": tertile_ranges(test_lengths, [TERTILES.index(test_tertiles[e.id]) for e in test]),
        "projected_cpu_hours_per_pass": projected_hours(passes, mean_tokens, config.epochs, len(test),
                                                        len(accuracy_test)),
        "projected_cpu_hours_zero_shot": round((len(test) * LOG_LIKELIHOOD_SECONDS_PER_ITEM
                                                + len(accuracy_test) * ACCURACY_SECONDS_PER_ITEM) / 3600, 2),
        "projection_rates": {"train_tokens_per_second": TRAIN_TOKENS_PER_SECOND,
                             "log_likelihood_seconds_per_item": LOG_LIKELIHOOD_SECONDS_PER_ITEM,
                             "accuracy_seconds_per_item": ACCURACY_SECONDS_PER_ITEM},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    claim(args.out, settings, plan_extra, command)
    print(f"gsm8k: pool {len(pool)} (tertiles by length {plan_extra['pool_tertiles_by_length']}), test {len(test)}, "
          f"accuracy on {len(accuracy_test)}; budgets {budgets}, seeds {args.seeds}; projected CPU-h per pass "
          f"{plan_extra['projected_cpu_hours_per_pass']}", flush=True)
    if args.plan_only:
        return

    study = Study(loaded, pool, scores, test, accuracy_test, test_tertiles, config, args)
    cells = args.out / CELLS_FOLDER
    if not (cells / cell_name(ZERO_SHOT, 0, None)).exists():
        print("[pass 1] zero-shot", flush=True)
        started = time.perf_counter()
        write_json(cells / cell_name(ZERO_SHOT, 0, None),
                   {"arm": ZERO_SHOT, "budget": 0, "seed": None, "metrics": measure(study, loaded.model),
                    "seconds": round(time.perf_counter() - started, 3)})
    for number, pass_cells in enumerate(passes, start=1):
        for arm, budget, seed in pass_cells:
            path = cells / cell_name(arm, budget, seed)
            if path.exists():
                continue
            print(f"[pass {number}] {arm} b={budget} s={seed}", flush=True)
            record = run_cell(study, arm, budget, seed)
            write_json(path, record)
            scored = ", ".join(f"{m} {record['metrics'][m]['score']:.4f}" for m in record["metrics"])
            print(f"[pass {number}] {arm} b={budget} s={seed}: {scored} ({record['seconds']:.0f} s)", flush=True)
        write_report(args.out)
    print(report_markdown(write_report(args.out)))


if __name__ == "__main__":
    main()
