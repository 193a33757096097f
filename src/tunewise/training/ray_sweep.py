"""``sweep --engine ray``: each (strategy, budget, seed) of a sweep as a Ray task with its own resources.

A task gets one GPU when the sweep's model runs on CUDA; on the CPU, ``workers`` tasks run at a
time and share the node's cores, each with ``cores / workers`` of them and that many torch threads
(two single-thread runs can beat one run on two threads of a busy 2-core machine; BENCHMARKS.md,
"Sweeps on Ray", measures which). Every task runs :func:`tunewise.training.sweep.run_one`, the
local engine's own run, on a model it loads itself (once per Ray worker process, reused by the
tasks that process runs next, as the local engine reuses its one model), and returns the record;
the driver writes each record as its task finishes. The records, the folder and the resume rule
(a finished run is never redone) are therefore the local engine's.

Without an address a local Ray instance is started on this machine's cores (no dashboard, worker
output kept off the terminal) and stopped afterwards; an already initialised Ray session is used
as it is. Ray is an optional extra (``pip install 'tunewise[ray]'``), imported only here.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Sequence

from tunewise.errors import TunewiseError

# The model a Ray worker process loaded for its last task, keyed by what it was loaded with.
_WORKER_MODEL: dict[tuple, object] = {}


def import_ray(data: bool = False):
    """The ``ray`` module (with Ray Data when ``data``), or a :class:`TunewiseError` (field ``engine``)
    naming the extra to install."""
    try:
        import ray
        if data:
            import ray.data  # noqa: F401  (fails when the [data] extra's dependencies are missing)
    except ImportError:
        raise TunewiseError("the Ray engine needs Ray, which is not installed here", field="engine",
                            fix="pip install 'tunewise[ray]', or use the local engine (--engine local)") from None
    return ray


def run_on_ray(
    pending: Sequence[tuple[str, int, int]],
    inputs,
    run_one: Callable[..., dict],
    model_name: str,
    device_type: str,
    workers: int,
    finished: Callable[[tuple[str, int, int], dict], None],
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run every pending ``(strategy, budget, seed)`` as a Ray task; ``finished(run, record)`` as each ends.

    Parameters
    ----------
    run_one:
        The sweep's one run, ``run_one(model, inputs, strategy, budget, seed) -> record``
        (:func:`tunewise.training.sweep.run_one`), passed in so that this module does not import
        the sweep that imports it.
    inputs:
        The sweep's :class:`~tunewise.training.sweep.RunInputs` (the pool's scores included), put
        in Ray's object store once for all tasks.
    model_name, device_type:
        The model every task loads, with the driver's load options (quantisation, revision …),
        and the type of device the driver resolved: ``"cuda"`` gives each task one GPU.
    workers:
        On the CPU, how many tasks run at a time; each gets ``cores / workers`` CPUs of the Ray
        node and ``max(1, ⌊cores / workers⌋)`` torch threads (``TUNEWISE_THREADS``, i.e.
        ``--threads``, wins when set).
    progress:
        Called with a label when the runs are handed out and after each one finishes.

    A run that fails stops the sweep: the runs still in flight are cancelled, the ones finished
    before are kept (a rerun resumes), and a :class:`TunewiseError` raised inside the task is
    raised here as it was.
    """
    from tunewise.model.load import LoadOptions

    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    try:
        resources, threads, device = _task_resources(ray, device_type, workers)
        remote_run = ray.remote(max_retries=0, **resources)(_run_task)
        shared = ray.put(inputs)
        options = LoadOptions.from_environment()
        in_flight = {remote_run.remote(shared, run_one, model_name, device, options, threads, *run): run for run in pending}
        if progress is not None:
            progress(f"Ray: {len(pending)} to run, {_describe(resources, workers)}")
        while in_flight:
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ready)
            try:
                record = ray.get(ready)
            except ray.exceptions.RayTaskError as error:
                for reference in in_flight:
                    ray.cancel(reference, force=True)
                if isinstance(error.cause, TunewiseError):  # e.g. a selection with no response token left
                    raise error.cause from None
                raise
            finished(run, record)
            if progress is not None:
                progress(f"{run[0]} b={run[1]} s={run[2]} finished")
    finally:
        if started_here:
            ray.shutdown()


def _task_resources(ray, device_type: str, workers: int) -> tuple[dict, int | None, str]:
    """(Ray resources per task, torch threads per task or None, the device a task loads on)."""
    if device_type == "cuda":
        if ray.cluster_resources().get("GPU", 0) < 1:
            raise TunewiseError("the model runs on CUDA here, but the Ray cluster has no GPU", field="device",
                                fix="use --device cpu, or start Ray with the GPUs (ray start --num-gpus N)")
        # Ray hides every GPU but the task's own, which is then plain "cuda".
        return {"num_gpus": 1, "num_cpus": 1}, None, "cuda"
    node_cpus = max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
    # Ray keeps four decimals of a fractional CPU; rounding down keeps `workers` tasks on one node.
    share = math.floor(node_cpus / workers * 10_000) / 10_000
    if share <= 0:
        raise TunewiseError(f"{workers} workers cannot share a Ray node of {node_cpus:g} CPUs", field="workers",
                            fix="pass fewer --workers")
    return {"num_cpus": share}, max(1, int(share)), "cpu"


def _describe(resources: dict, workers: int) -> str:
    if "num_gpus" in resources:
        return "one GPU each"
    return f"{workers} at a time, {resources['num_cpus']:g} CPUs each"


def _run_task(inputs, run_one: Callable[..., dict], model_name: str, device: str, options, threads: int | None,
              strategy: str, budget: int, seed: int) -> dict:
    """One run inside a Ray worker: the model (loaded once per worker process), then the local run."""
    import torch

    from tunewise.model.load import apply_thread_setting, load_model

    if threads is not None:
        torch.set_num_threads(threads)
        apply_thread_setting()  # the user's --threads (TUNEWISE_THREADS) wins, as everywhere else
    key = (model_name, device, inputs.dtype, options)
    if key not in _WORKER_MODEL:
        _WORKER_MODEL.clear()
        _WORKER_MODEL[key] = load_model(model_name, device=device, dtype=inputs.dtype, options=options)
    return run_one(_WORKER_MODEL[key], inputs, strategy, budget, seed)


__all__ = ["import_ray", "run_on_ray"]
