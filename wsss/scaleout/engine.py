"""The two engines a chunked stage runs on (params.yaml `scaleout`).

A stage calls `engine.run(chunk_fn, tasks)`: `chunk_fn(task, imap)` does one chunk and returns its
partial statistics, in task order. `imap(fn, jobs)` is how a chunk spreads per-image CPU work:
- local (the default, as shipped): the chunks run one after another in this process (the
  network uses every core through torch's threads), and `imap` is a pool of spawned processes
  (all cores; at most two images per process in flight, so memory stays flat);
- dask: each chunk is a task on a Dask cluster, a LocalCluster here (cores // worker_threads
  processes) or the scheduler at `address`; a worker runs one chunk at a time with `worker_threads`
  torch threads, and its `imap` is the plain `map`: the workers are the parallelism. A chunk that
  raised is retried `retries` times; one whose worker died (killed, out of memory) is rescheduled by the scheduler up to `retries` times (allowed-failures).

distributed.Client is used directly, not through prefect-dask: stages also run without Prefect
(`python -m tasks`, `dvc repro`) and must not import it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing as mp
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from wsss.config.errors import StageError
from wsss.stores import atomic

LOCAL = {"engine": "local", "address": "", "workers": 0, "retries": 0, "chunk_size": 32}   # callers without params
_ON_WORKER = False   # set in a Dask worker process: per-chunk progress bars stay off there


class EngineError(StageError):
    """The cluster cannot run the stage (unreachable scheduler, no GPU worker, a local-only method)."""

    kind = "scaleout error"


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    """A per-image progress bar in this process; none on a Dask worker (its log is not the user's)."""
    return iterable if _ON_WORKER else tqdm(iterable, total=total, desc=desc, unit="img", dynamic_ncols=True)


def chunked(items: list, size: int) -> list[tuple[int, list]]:
    """(index of the first item, items) per chunk of `size`: chunk k holds output shard k."""
    return [(start, items[start:start + size]) for start in range(0, len(items), size)]


class LocalEngine:
    """Chunks in this process; per-image work in a pool of spawned processes (created when first used)."""

    name = "local"

    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        self._pool = None

    def imap(self, fn: Callable, jobs: Iterable) -> Iterator:
        """fn(job) for each job, in order, in the pool; the jobs are drawn lazily, two per process ahead."""
        if self._pool is None:   # spawn, not fork: torch (OpenMP) in this process can deadlock forked children
            self._pool = mp.get_context("spawn").Pool(self.workers)
        pending = deque()
        for job in jobs:
            pending.append(self._pool.apply_async(fn, (job,)))
            if len(pending) > 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def split(self, items: list, shard_size: int | None = None) -> list[tuple[int, list]]:
        """Chunks: one per output shard; an unsharded output is one chunk here (nothing to spread)."""
        return chunked(items, shard_size or max(len(items), 1))

    def run(self, fn: Callable, tasks: list, desc: str = "", gpu: bool = False) -> Iterator:
        for task in tasks:
            yield fn(task, self.imap)

    def close(self, failed: bool = False) -> None:
        if self._pool is not None:
            self._pool.terminate() if failed else self._pool.close()
            self._pool.join()


# Dask's default MALLOC_TRIM_THRESHOLD_=65536 for workers fixes glibc's mmap threshold at 128 KiB, so
# every large numpy array is a fresh mmap: CRF labelling ran 20% slower with it (31.5 s -> 37-38 s for
# 100 images, benchmarks/results/throughput.jsonl). A LocalCluster lives for one stage, where the
# fragmentation it guards against does not build up, so its workers keep glibc's default.
WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

# The scheduler and its dashboard serve this machine only: ":0" alone binds the dashboard to every interface.
LOOPBACK = "127.0.0.1"

KILL_ONCE_ENV = "WSSS_SCALEOUT_KILL_ONCE"   # tests: a marker path (tests/test_scaleout_dask.py)


def _die_once(tmp) -> None:
    """Test hook on Dask workers: the first worker to have written a file under its temporary name
    creates the marker and exits at once, as a killed worker would, the temporary file left behind."""
    try:
        os.close(os.open(os.environ[KILL_ONCE_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(17)


def _on_worker(fn: Callable, threads: int, task: Any) -> Any:
    global _ON_WORKER
    _ON_WORKER = True
    import torch
    if torch.get_num_threads() != threads:   # a worker runs one chunk at a time: its torch gets `threads`
        torch.set_num_threads(threads)
    if os.environ.get(KILL_ONCE_ENV):
        atomic.before_rename = _die_once
    return fn(task, map)


class _LocalCluster:
    """A distributed.LocalCluster that leaves this process's environment as it found it.

    Its nannies set their workers' environment (OMP_NUM_THREADS=1, ...) in this process too, before
    every worker (re)start, as distributed documents; the process pool of a later local stage would
    inherit it (1-thread torch, glibc trimming). It is put back after the start and at close."""

    def __init__(self, workers: int, threads: int, gpu: bool, env: dict | None):
        from distributed import LocalCluster
        import dask

        self._environ = dict(os.environ)
        try:   # workers one thread each: a torch network per process, no oversubscription
            with dask.config.set(WORKER_ENV):
                self.cluster = LocalCluster(n_workers=workers or default_workers(threads), threads_per_worker=1,
                                            processes=True, host=LOOPBACK, dashboard_address=f"{LOOPBACK}:0",
                                            silence_logs=logging.ERROR,
                                            resources={"GPU": 1} if gpu else None, env=env)
        finally:
            self._restore()
        self.scheduler_address = self.cluster.scheduler_address

    def _restore(self) -> None:
        if dict(os.environ) != self._environ:
            os.environ.clear()
            os.environ.update(self._environ)

    def close(self) -> None:
        self.cluster.close()
        self._restore()   # a restarted worker set it again


def default_workers(threads: int) -> int:
    """A LocalCluster's workers when scaleout.workers is 0: the cores, `threads` (worker_threads) each."""
    return max(1, (os.cpu_count() or 1) // threads)


def local_cluster(workers: int = 0, threads: int = 1, gpu: bool = False, env: dict | None = None) -> _LocalCluster:
    """The LocalCluster engine dask starts when params give no address (benchmarks and tests start the
    same one; workers 0: default_workers(threads); env: more worker environment): its
    scheduler_address for a Client, close() stops it."""
    return _LocalCluster(workers, threads, gpu, env)


class DaskEngine:
    """Chunks as tasks on a Dask cluster: a LocalCluster of `workers` processes, or `address`."""

    name = "dask"

    def __init__(self, cfg: dict, gpu: bool = False):
        import dask
        from distributed import Client

        self.retries, self.chunk_size, self.cluster = cfg["retries"], cfg["chunk_size"], None
        self.threads = cfg.get("worker_threads", 1)
        # a killed worker's task is rescheduled this often before the stage fails (KilledWorker)
        with dask.config.set({"distributed.scheduler.allowed-failures": cfg["retries"]}):
            if cfg["address"]:
                try:
                    self.client = Client(cfg["address"], timeout="20s", set_as_default=False)
                except OSError as exc:
                    raise EngineError(f"scaleout.address: cannot reach the Dask scheduler at {cfg['address']} "
                                      f"({exc})") from None
            else:
                self.cluster = local_cluster(cfg["workers"], self.threads, gpu)
                self.client = Client(self.cluster.scheduler_address, set_as_default=False)
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        self.workers = len(workers)
        if not workers:   # tasks would wait forever
            self.close()
            raise EngineError(f"the Dask scheduler at {cfg['address']} has no workers: start some with "
                              f"`dask worker {cfg['address']} --nthreads 1`")
        if gpu and not any(w.get("resources", {}).get("GPU") for w in workers):
            self.close()
            raise EngineError(f"the stage runs on CUDA but no Dask worker at {cfg['address']} offers a GPU: "
                              "start GPU workers with `dask worker ADDRESS --nthreads 1 --resources GPU=1`")

    def split(self, items: list, shard_size: int | None = None) -> list[tuple[int, list]]:
        return chunked(items, shard_size or self.chunk_size)

    def run(self, fn: Callable, tasks: list, desc: str = "", gpu: bool = False) -> Iterator:
        """Results in task order; the first chunk that fails for good stops the stage."""
        futures = self.client.map(functools.partial(_on_worker, fn, self.threads), tasks, retries=self.retries, pure=False,
                                  resources={"GPU": 1} if gpu else None)
        from distributed import KilledWorker
        try:
            for k, future in enumerate(tqdm(futures, desc=f"{desc} (dask, {self.workers} workers)", unit="chunk",
                                            dynamic_ncols=True)):
                try:
                    yield future.result()
                except KilledWorker as exc:
                    raise EngineError(f"{desc}: chunk {k} killed its worker {self.retries + 1} times "
                                      f"(out of memory? see the workers' logs): {exc}") from None
        finally:
            self.client.cancel(futures)

    def close(self, failed: bool = False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


@contextlib.contextmanager
def open_engine(cfg: dict, workers: int = 0, gpu: bool = False):
    """The engine params.yaml's `scaleout` names; `workers`: the local pool's size (0: all cores)."""
    engine = DaskEngine(cfg, gpu) if cfg["engine"] == "dask" else LocalEngine(workers)
    failed = True
    try:
        yield engine
        failed = False
    finally:
        engine.close(failed)
