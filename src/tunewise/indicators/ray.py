"""Scoring on Ray Data: the same scores as the local engine, computed by a pool of model actors.

The driver looks the pool up in the score cache and sends only the examples with a missing value
to Ray: a Dataset of (id, prompt, response) rows, mapped in batches by model actors (one per GPU
when the cluster has GPUs, otherwise a few CPU actors sharing the cores). Each actor loads the
model once and runs the local engine's own batch code (:func:`tunewise.indicators.score.score_encoded_batch`).
The driver commits every finished batch to the same cache the local engine uses, so the two
engines interchange and a killed run resumes; the table is then assembled by
:func:`tunewise.indicators.score.score_pool`, which finds every value cached.

Ray is an optional extra (``pip install 'tunewise[ray]'``) and is imported only when called. On
a cluster, every node needs tunewise and the model installed, as on the driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from tunewise.indicators.cache import ScoreCache
from tunewise.errors import TunewiseError
from tunewise.model.load import cache_root
from tunewise.data.pool import Example
from tunewise.indicators.registry import OUTPUT_VERSIONS
from tunewise.indicators.score import (ProgressCallback, cache_output_name, plan_scoring_batches,
                              required_outputs, score_encoded_batch, score_pool, scores_provenance,
                              check_context)

DEFAULT_CPU_ACTORS = 2
# Rows handed to an actor per call: enough for full token-budgeted batches, few enough that
# every actor gets several calls and a fast one takes over work a slow one has not started.
_MAX_ROWS_PER_CALL = 256
_MIN_ROWS_PER_CALL = 8
_CALLS_PER_ACTOR = 4


def score_pool_ray(
    examples: Sequence[Example] | object,
    model: str,
    indicators: Sequence[str],
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    address: str | None = None,
    progress: ProgressCallback | None = None,
    max_new_tokens: int = 30,
    max_batch_tokens: int | None = None,
    cpu_actors: int = DEFAULT_CPU_ACTORS,
) -> tuple[pd.DataFrame, dict]:
    """Score ``examples`` (a list or a ``Pool``) on Ray Data: the scores table and its provenance
    (a ``Pool``'s source file and field mapping included, as the local engine records them).

    Parameters
    ----------
    model, device, dtype, max_new_tokens, max_batch_tokens:
        As for :func:`tunewise.model.load_backend`; each actor loads the model with them. With
        GPUs in the cluster and ``device`` ``auto`` or ``cuda``, Ray gives each actor one GPU.
    cache_dir:
        The score cache folder, shared with the local engine (default: the user cache).
    address:
        A Ray cluster to connect to (``ray://host:10001`` or ``host:6379``); without one, a
        local Ray instance is started on this machine's cores and stopped afterwards. An already
        initialised Ray session is used as it is.
    progress:
        ``progress(done, total)`` after every batch the actors return, counting examples that
        needed the model.
    cpu_actors:
        How many CPU actors share the cores when there is no GPU.
    """
    from tunewise.training.ray_sweep import import_ray

    ray = import_ray(data=True)
    pool_examples = list(getattr(examples, "examples", examples))
    outputs = required_outputs(indicators)
    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(ray, address)
    try:
        actors = _actor_layout(ray, device, cpu_actors)
        model_options = {"model": model, "device": actors.device, "dtype": dtype,
                         "max_new_tokens": max_new_tokens, "max_batch_tokens": max_batch_tokens}
        fingerprint = _remote_fingerprint(ray, model_options, actors)
        cached_model = _CachedModel(fingerprint, max_new_tokens)
        cache = ScoreCache(cache_dir or cache_root() / "scores")
        try:
            missing = _missing_examples(pool_examples, outputs, cached_model, cache)
            if missing:
                _score_on_actors(ray, missing, outputs, model_options, actors, cached_model, cache, progress)
        finally:
            cache.close()
    finally:
        if started_here:
            ray.shutdown()
    scores = score_pool(pool_examples, cached_model, indicators, cache_dir=cache_dir)
    provenance = scores_provenance(cached_model, indicators, getattr(examples, "source", None))
    provenance |= examples.provenance() if hasattr(examples, "provenance") else {}  # how a Pool was read
    return scores, provenance


def _start_ray(ray, address: str | None) -> None:
    settings = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        ray.init(num_cpus=os.cpu_count() or 1, **settings)
        return
    try:
        ray.init(address=address, **settings)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise TunewiseError(f"cannot connect to the Ray cluster at '{address}' ({error})", field="address",
                            fix="check the address (ray://HOST:10001 or HOST:6379) and that the cluster is up") from None


@dataclass(frozen=True)
class _ActorLayout:
    count: int
    gpus_per_actor: int
    cpus_per_actor: float
    torch_threads: int | None
    device: str


def _actor_layout(ray, device: str, cpu_actors: int) -> _ActorLayout:
    """One actor per GPU when GPUs are asked for (or ``auto``) and present; else CPU actors."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    wants_gpu = device == "auto" or device.startswith("cuda")
    if wants_gpu and gpus > 0:
        # Ray hides every GPU but the actor's own, which is then plain "cuda".
        return _ActorLayout(count=gpus, gpus_per_actor=1, cpus_per_actor=1, torch_threads=None, device="cuda")
    if device.startswith("cuda"):
        raise TunewiseError(f"device '{device}' asked for, but the Ray cluster has no GPU", field="device",
                            fix="use --device cpu (or auto)")
    if cpu_actors < 1:
        raise TunewiseError(f"cpu_actors must be at least 1, got {cpu_actors}", field="cpu_actors")
    node_cpus = max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
    # Actors split a node's cores between them rather than each running a thread per core.
    share = node_cpus / cpu_actors
    return _ActorLayout(count=cpu_actors, gpus_per_actor=0, cpus_per_actor=share,
                        torch_threads=max(1, int(share)), device="cpu" if device == "auto" else device)


@dataclass(frozen=True)
class _CachedModel:
    """What the cache keys and provenance need from a backend, without the model itself."""

    fingerprint: str
    max_new_tokens: int


def _remote_fingerprint(ray, model_options: dict, actors: _ActorLayout) -> str:
    # The fingerprint names the dtype, which depends on the device the actors get (bf16 on a
    # GPU): load the model once where they run, in a worker that exits afterwards.
    probe = ray.remote(num_cpus=actors.cpus_per_actor, num_gpus=actors.gpus_per_actor, max_calls=1)(
        _load_fingerprint
    )
    try:
        return ray.get(probe.remote(model_options))
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, TunewiseError):  # an unknown model, dtype or device: the user's to fix
            raise error.cause from None
        raise


def _load_fingerprint(model_options: dict) -> str:
    from tunewise.model import load_backend

    return load_backend(**model_options).fingerprint


def _missing_examples(examples: list[Example], outputs: list[str], cached_model: _CachedModel, cache) -> list[Example]:
    ids = [example.id for example in examples]
    missing: set[str] = set()
    for output in outputs:
        found = cache.get(cached_model.fingerprint, cache_output_name(output, cached_model.max_new_tokens),
                          OUTPUT_VERSIONS[output], ids)
        missing.update(example_id for example_id in ids if example_id not in found)
    return [example for example in examples if example.id in missing]


class ModelActor:
    """A Ray Data callable class: loads the model once, then scores batches of rows."""

    def __init__(self, model_options: dict, outputs: list[str], torch_threads: int | None) -> None:
        import torch

        from tunewise.model import load_backend

        if torch_threads is not None:
            # load_model then applies TUNEWISE_THREADS (--threads) when the user set it: theirs wins.
            torch.set_num_threads(torch_threads)
        self.backend = load_backend(**model_options)
        self.outputs = outputs
        self.max_batch_tokens = model_options["max_batch_tokens"]

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [json.loads(prompt) for prompt in rows["prompt"]]
        responses = [None if response is None else str(response) for response in rows["response"]]
        sources = [f"example {example_id}" for example_id in rows["id"]]
        encoded = self.backend.encode(prompts, responses, sources=sources)
        check_context(self.backend, encoded, self.outputs, sources)
        values: dict[str, list] = {output: [None] * len(encoded) for output in self.outputs}
        for batch in plan_scoring_batches(self.backend, encoded, self.outputs, self.max_batch_tokens):
            produced = score_encoded_batch(self.backend, [encoded[p] for p in batch], self.outputs)
            for output in self.outputs:
                for position, value in zip(batch, produced[output]):
                    values[output][position] = value
        columns = {"id": rows["id"]}
        for output, column in values.items():
            if output == "embedding":
                columns[output] = np.stack(column).astype(np.float32)
            else:
                columns[output] = np.array([math.nan if v is None else float(v) for v in column], dtype=np.float64)
        return columns


def _score_on_actors(ray, missing: list[Example], outputs: list[str], model_options: dict, actors: _ActorLayout,
                     cached_model: _CachedModel, cache, progress: ProgressCallback | None) -> None:
    """Run the missing examples through the actors, committing each returned batch to the cache."""
    done = 0
    with _quiet_ray_data(ray):
        scored = _scored_dataset(ray, missing, outputs, model_options, actors)
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            ids = [str(example_id) for example_id in batch["id"]]
            for output in outputs:
                if output == "embedding":
                    values = [np.asarray(vector, dtype=np.float32) for vector in batch[output]]
                else:
                    values = [None if math.isnan(v) else float(v) for v in batch[output]]
                cache.put(cached_model.fingerprint, cache_output_name(output, cached_model.max_new_tokens),
                          OUTPUT_VERSIONS[output], zip(ids, values))
            done += len(ids)
            if progress is not None:
                progress(done, len(missing))


def _scored_dataset(ray, missing: list[Example], outputs: list[str], model_options: dict, actors: _ActorLayout):
    # Rows sorted by text length keep each call's examples alike in length, so little padding.
    ordered = sorted(missing, key=lambda e: -(len(e.response or "") + sum(len(t["content"]) for t in e.prompt)))
    rows = [{"id": e.id, "prompt": json.dumps(list(e.prompt)), "response": e.response} for e in ordered]
    rows_per_call = min(_MAX_ROWS_PER_CALL,
                        max(_MIN_ROWS_PER_CALL, math.ceil(len(rows) / (actors.count * _CALLS_PER_ACTOR))))
    return ray.data.from_items(rows).map_batches(
        ModelActor,
        fn_constructor_kwargs={"model_options": model_options, "outputs": outputs,
                               "torch_threads": actors.torch_threads},
        compute=ray.data.ActorPoolStrategy(size=actors.count),
        batch_size=rows_per_call,
        batch_format="numpy",
        num_cpus=actors.cpus_per_actor,
        num_gpus=actors.gpus_per_actor,
    )


@contextlib.contextmanager
def _quiet_ray_data(ray):
    # The caller owns the terminal (the CLI draws its own progress bar): Ray Data's own bars and
    # notes about its plan would interleave with it. Failures still raise.
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    previous = context.enable_progress_bars, logger.level
    context.enable_progress_bars = False
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, level = previous
        logger.setLevel(level)
