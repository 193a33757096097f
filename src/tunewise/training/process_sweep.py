"""``sweep --engine processes``: a sweep's runs in worker processes on this CPU, without Ray.

``workers`` processes each load the model once and run what they are handed, one at a time:
:func:`tunewise.training.sweep.run_one`, the local engine's own run, or the zero-shot
evaluation; the driver writes each record as it arrives. The records, the folder and the resume
rule (a finished run is never redone) are therefore the local engine's. Each worker gets
``max(1, cores // workers)`` torch threads (``TUNEWISE_THREADS``, i.e. ``--threads``, wins):
on a 2-core CPU two single-thread runs side by side, which keep both cores busier than one run
on two threads, whose 135M-parameter matrices are too small to (BENCHMARKS.md, "The demo in two
worker processes"). Unlike Ray there is no cluster to start, so the fixed cost is only a
process start, its imports and a model load per worker.

Workers are started with ``spawn``: a fork of a process whose torch has already run its thread
pool is not safe. A run that fails stops the others (the worker processes are terminated) and
its :class:`~tunewise.errors.TunewiseError` is raised in the driver as it was; the runs
recorded before it stay, so a rerun resumes.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator

from tunewise.errors import TunewiseError

# What a worker process loaded at its start: the model and the sweep's inputs.
_WORKER: dict[str, Any] = {}


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Torch threads each of ``workers`` processes gets: the cores shared out, at least one."""
    return max(1, cpu_cores() // workers)


def check_device(device) -> None:
    """The engine runs on the CPU: refuse a model on a GPU, where each worker would load its own copy."""
    if device.type != "cpu":
        raise TunewiseError(f"the processes engine runs on the CPU, and the model is on {device}",
                            field="engine",
                            fix="use --engine local (one run at a time on the GPU) or --engine ray (one GPU per run)")


class RunWorkers:
    """``workers`` worker processes, each with its own copy of ``model_name`` and the sweep's
    ``inputs`` (a :class:`~tunewise.training.sweep.RunInputs`, sent once per worker)."""

    def __init__(self, inputs, model_name: str, device, workers: int) -> None:
        from tunewise.model.load import LoadOptions

        self.workers = workers
        self.threads = threads_per_worker(workers)
        self._pending: dict = {}
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
            initargs=(inputs, model_name, str(device), inputs.dtype, LoadOptions.from_environment(), self.threads),
        )

    def submit(self, key, function: Callable[..., dict], *args) -> None:
        """Queue ``function(loaded, inputs, *args)`` (it returns a record); ``key`` names it in :meth:`finished`."""
        self._pending[self._executor.submit(_work, function, *args)] = key

    def describe(self) -> str:
        return (f"{len(self._pending)} to run in {self.workers} worker processes, "
                f"{self.threads} thread{'s' if self.threads > 1 else ''} each")

    def finished(self) -> Iterator[tuple[Any, dict]]:
        """``(key, record)`` of each queued piece of work, as it finishes. A failure terminates the
        workers and is raised here (a :class:`TunewiseError` as it was raised in the worker)."""
        while self._pending:
            ready, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            for future in ready:
                key = self._pending.pop(future)
                error = future.exception()
                if error is not None:
                    self.terminate()
                    raise error
                yield key, future.result()

    def close(self) -> None:
        """Let the idle workers exit (every queued piece of work has finished)."""
        self._executor.shutdown(wait=True)

    def terminate(self) -> None:
        """Stop the workers now, running work and all (an error, Ctrl-C, or the caller gave up)."""
        self._pending.clear()
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()


def _start_worker(inputs, model_name: str, device: str, dtype: str | None, options, threads: int) -> None:
    """A worker's start: its threads, then the model (once for every run it will be handed)."""
    import torch

    from tunewise.model.load import apply_thread_setting, load_model

    torch.set_num_threads(threads)
    apply_thread_setting()  # the user's --threads (TUNEWISE_THREADS) wins, as everywhere else
    _WORKER["inputs"] = inputs
    _WORKER["loaded"] = load_model(model_name, device=device, dtype=dtype, options=options)


def _work(function: Callable[..., dict], *args) -> dict:
    return function(_WORKER["loaded"], _WORKER["inputs"], *args)


__all__ = ["RunWorkers", "check_device", "cpu_cores", "threads_per_worker"]
