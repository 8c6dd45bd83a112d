"""Where sweep points run: a local process pool or a Ray cluster, chosen by name.

Both yield results as they finish (not in submission order) so the caller can write each row
as soon as it exists; both stop outstanding work when the caller stops reading (Ctrl-C).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

from llmservingsim.errors import ConfigError, UserError
from llmservingsim.registry import Registry

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None
    """Parallel simulations (local: processes, default one per core; Ray: tasks in flight)."""
    ray_address: str | None = None


class Executor(Protocol):
    """Maps a picklable function over items, yielding results in completion order."""

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]: ...

    def close(self) -> None: ...


EXECUTORS: Registry[Callable[[ExecutorOptions], Executor]] = Registry("executor")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@EXECUTORS.register("local")
class LocalExecutor:
    """A pool of worker processes (spawned, so no thread or lock state is inherited).

    With one worker, or one item, the work runs in this process: no start-up cost, and the
    simulations are the same code either way.
    """

    def __init__(self, options: ExecutorOptions) -> None:
        if options.ray_address is not None:
            raise ConfigError("--ray-address needs --executor ray")
        self.workers = options.workers or available_cores()

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        workers = min(self.workers, len(items))
        if workers <= 1:
            for item in items:
                yield fn(item)
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        try:
            pending: set[Future[R]] = {pool.submit(fn, item) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Nothing outlives ``imap_unordered``."""


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'llmservingsim[ray]'") from None
    return ray


@EXECUTORS.register("ray")
class RayExecutor:
    """Ray tasks, one per item, on the cluster at ``ray_address`` or on a local Ray.

    An already initialized Ray (a notebook, a test) is used as it is and left running.
    Every node needs this package installed (the same version) to import the task function.
    """

    def __init__(self, options: ExecutorOptions) -> None:
        self.ray = _import_ray()
        self.max_in_flight = options.workers
        self._owns_ray = not self.ray.is_initialized()
        if not self._owns_ray:
            return
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
        if options.ray_address is not None:
            check_reachable(options.ray_address)
            kwargs["address"] = options.ray_address
        elif options.workers is not None:
            kwargs["num_cpus"] = options.workers
        try:
            self.ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.ray_address or "a local Ray"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--executor ray: cannot start or reach {where}: {reason}") from None

    def imap_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        ray = self.ray
        task = ray.remote(fn)
        limit = self.max_in_flight or len(items)
        queue = list(reversed(items))
        pending: list[Any] = []
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.append(task.remote(queue.pop()))
                done, pending = ray.wait(pending, num_returns=1)
                result: R = ray.get(done[0])
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns_ray:
            self.ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a wrong ``host:port`` (or ``ray://host:port``): Ray itself retries an
    unreachable head for minutes before giving up."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return  # "auto", "local", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(
            f"--ray-address {address}: cannot connect ({exc.strerror or exc}); "
            "is the Ray head running (ray start --head) and is the port right?"
        ) from None


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {options.workers})")
    return EXECUTORS.get(name)(options)
