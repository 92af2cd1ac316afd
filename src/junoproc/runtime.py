"""Process-wide settings and the parallel helpers that make junoproc fast on small
(2-core, virtual) machines.

:func:`configure` runs when ``junoproc`` is imported. Every setting only changes speed,
never a result, and each gives way to the user's own choice (its environment variable).

- OpenCV's thread pool: after each parallel call its worker threads spin in
  ``sched_yield`` for up to 2000 rounds waiting for the next one. On 2 cores that spinning
  takes the core the other thread or build worker needs: in the full-resolution PJ44
  equirectangular map on one thread it was 17 % of all CPU samples, and the projection's
  system time fell from 1.1-1.4 s to 0.45-0.56 s without it. Workers now sleep at once
  (``OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER`` / ``..._MAIN`` = 0). OpenCV reads these when
  it loads, so they take effect only where junoproc is imported before ``cv2``.
- BLAS on one thread (``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` = 1, also applied
  through ``threadpoolctl`` to a BLAS numpy or scipy loaded before junoproc): junoproc's
  matrices are small (pointing's normal equations, enhancement's polynomial fits), and an
  idle OpenBLAS thread spins waiting for the next call. In one PJ44 product on 2 cores
  that spinning was 6 % of all CPU samples (numpy's and scipy's OpenBLAS together), 0.5-0.9
  s of CPU taken from the stage running beside it.
- numpy's transparent huge pages: numpy asks the kernel for 2 MB pages on its large
  arrays. On these virtual machines a fresh huge page, first touched, costs far more than
  512 small ones: allocating and filling 0.67 GB took 0.05-1.8 s (erratic) with them and
  0.26-0.41 s without. Set ``NUMPY_MADVISE_HUGEPAGE=1`` to keep them.
- One glibc malloc arena (``mallopt(M_ARENA_MAX, 1)``, unless ``MALLOC_ARENA_MAX`` is
  set): each thread that allocates gets an arena of its own, and memory freed in one is
  not reused by another but trimmed and faulted in again. 44C00032 made alone on 2 cores:
  its write-and-enhance block's page faults 207,000 -> 71,000, peak memory 1.10-1.14 ->
  0.90-0.92 GB, 9.8-9.9 -> 9.4-9.8 s of CPU (4 runs each, in a slow hour).

Parallel work: :func:`workers` is how many cores a stage may use (``$JUNOPROC_THREADS``,
which ``junoproc build`` sets per worker process, else the CPUs this process may run
on). Python threads share one interpreter lock: two threads of numpy-heavy code ran only
~1.3x faster than one on 2 cores. So on Linux independent pieces of work run in forked
copies of the process instead (:func:`fork_map`, and the projection's strips): a copy
shares all memory with its parent until one of them writes, starts in a few ms, and
sends its results back through a pipe. ``$JUNOPROC_FORK=0`` (or another system) keeps
everything in the one process.
"""

from __future__ import annotations

import mmap
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Environment variable with the number of cores a stage may use (a pipeline running one
#: process per core sets it to 1).
THREADS_ENV = "JUNOPROC_THREADS"
#: ``0`` keeps parallel work on threads of one process (see :func:`forking`).
FORK_ENV = "JUNOPROC_FORK"

#: OpenCV thread-pool busy-wait rounds (read by OpenCV when it loads).
OPENCV_POOL_WAIT = {"OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER": "0",
                    "OPENCV_THREAD_POOL_ACTIVE_WAIT_MAIN": "0"}
#: The BLAS thread counts junoproc sets to 1 unless the user set one of them.
BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


#: glibc's mallopt parameter number of M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """One malloc arena for all threads (glibc on Linux; the user's MALLOC_ARENA_MAX wins)."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(1))
    except (OSError, AttributeError):  # not glibc (musl has no arenas to set)
        pass


def configure() -> None:
    """Apply the settings above (idempotent)."""
    _one_malloc_arena()
    if "cv2" not in sys.modules:
        for name, value in OPENCV_POOL_WAIT.items():
            os.environ.setdefault(name, value)
    if not any(var in os.environ for var in BLAS_ENV_VARS):
        os.environ.update(dict.fromkeys(BLAS_ENV_VARS, "1"))  # read by a BLAS when it loads
        if "numpy" in sys.modules:  # loaded before junoproc, with its own thread count
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    import importlib

    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, numpy 1
        try:
            setter = getattr(importlib.import_module(module), "_set_madvise_hugepage", None)
        except ImportError:
            continue
        if setter is not None:
            setter(False)
            return


def workers(n: int | None = None) -> int:
    """``n``, else ``$JUNOPROC_THREADS``, else the CPUs this process may run on (at least 1)."""
    if n is not None:
        return max(1, int(n))
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit():
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def forking() -> bool:
    """Whether work may run in forked copies of this process: Linux only (``fork`` is not
    safe on macOS and absent on Windows), not inside a copy, and not switched off by
    ``$JUNOPROC_FORK=0``."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and not _IN_COPY[0]
            and os.environ.get(FORK_ENV, "1") != "0")


def in_forked_copy() -> bool:
    """True in a copy forked by :func:`fork_map` or a projection (SPICE must not be called
    there: its kernel files' read offsets are shared with the parent)."""
    return _IN_COPY[0]


_IN_COPY = [False]
#: The largest private peak memory (MB) of a forked copy in this process's life.
_HELPER_PEAK_MB = [0.0]


def enter_copy() -> None:
    """Mark this process as a forked copy (call first thing after ``fork`` in the child)."""
    _IN_COPY[0] = True


def note_helper_peak_mb(mb: float) -> None:
    _HELPER_PEAK_MB[0] = max(_HELPER_PEAK_MB[0], float(mb))


def helper_peak_mb() -> float:
    """Peak memory (MB) a forked copy of this process used beyond what it shares with this
    process (its private memory, sampled by the copy as it works and at its end); 0 if
    none ran."""
    return _HELPER_PEAK_MB[0]


def private_kb() -> int:
    """Memory of this process no other process maps (kB, Linux /proc; 0 elsewhere): its
    private pages less the shared-memory pages it alone has touched so far (a forked copy's
    rows of shared output arrays, which are the parent's too). Reading it takes ~10 ms."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            private = sum(int(line.split()[1]) for line in f
                          if line.startswith(("Private_Clean:", "Private_Dirty:")))
        with open("/proc/self/status") as f:
            shmem = next(int(line.split()[1]) for line in f if line.startswith("RssShmem:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return max(private - shmem, 0)


def shared_empty(shape: tuple[int, ...], dtype: Any, shared: bool = True) -> Any:
    """An uninitialised numpy array, in memory shared with processes forked later when
    ``shared`` (an anonymous shared mapping, released with the array)."""
    import numpy as np

    if not shared:
        return np.empty(shape, dtype)
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype, count=count).reshape(shape)


_POOLS: dict[tuple[int, int], Any] = {}  # (pid, threads) -> ThreadPoolExecutor
_POOLS_LOCK = threading.Lock()


def thread_map(fn: Callable[[T], R], items: Iterable[T], n_threads: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on :func:`workers` threads of one pool this process keeps
    (for numpy/OpenCV work that releases the interpreter lock; the threads are made once,
    not per call). Called from one of those threads (nested), or with one worker or one
    item, it runs here."""
    todo = list(items)
    n = min(workers(n_threads), len(todo))
    if n <= 1 or threading.current_thread().name.startswith("junoproc-map"):
        return [fn(x) for x in todo]
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), n)  # a forked copy makes its own (the parent's threads are not in it)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(n, thread_name_prefix="junoproc-map")
    return list(pool.map(fn, todo))


_CV2_LOCK = threading.Lock()
_CV2_SERIAL = [0, 0]  # [users running work in parallel, OpenCV's thread count before]


@contextmanager
def cv2_serial() -> Iterator[None]:
    """OpenCV on one thread while work runs in parallel: its own pool nested in parallel
    work oversubscribes the cores (PJ44 equirectangular map on 2 cores: 3.8-4.3 s CPU with
    OpenCV's 2 threads, 2.9-3.7 s with 1, wall no worse), and a forked copy has no pool
    threads at all. The setting is process-wide: the first user saves it, the last one out
    restores it."""
    import cv2

    with _CV2_LOCK:
        if not _CV2_SERIAL[0]:
            _CV2_SERIAL[1] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _CV2_SERIAL[0] += 1
    try:
        yield
    finally:
        with _CV2_LOCK:
            _CV2_SERIAL[0] -= 1
            if not _CV2_SERIAL[0]:
                cv2.setNumThreads(_CV2_SERIAL[1])


def fork_map(fn: Callable[[T], R], items: Iterable[T], n_workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, the items shared among this process and forked copies of
    it (:func:`workers` in all, Linux; in this process alone elsewhere, with one worker or
    one item). Every process takes the next item's index from one pipe; a copy sends its
    results back pickled when the pipe is empty, and exits. Items a copy did not finish (it
    raised or was killed) are done here afterwards, so an error is raised from this process
    with its own traceback. ``fn`` and the items are the parent's own objects (nothing is
    pickled on the way out); results must pickle. ``fn`` must not call SPICE."""
    todo = list(items)
    n = min(workers(n_workers), len(todo))
    if n <= 1 or not forking():
        return [fn(x) for x in todo]
    missing = object()
    results: list[Any] = [missing] * len(todo)
    queue_r, queue_w = os.pipe()
    os.write(queue_w, b"".join(i.to_bytes(4, "little") for i in range(len(todo))))
    os.close(queue_w)

    def work(out: dict[int, Any]) -> None:
        while True:
            got = os.read(queue_r, 4)
            if len(got) < 4:
                return
            i = int.from_bytes(got, "little")
            out[i] = fn(todo[i])

    children: list[tuple[int, int]] = []
    with cv2_serial():
        try:
            for _ in range(n - 1):
                result_r, result_w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the copy: work, report, exit without any cleanup
                    done: dict[int, Any] = {}
                    try:
                        enter_copy()
                        os.close(result_r)
                        try:
                            work(done)
                        finally:  # what it finished, even when one item raised
                            blob = pickle.dumps((done, private_kb() / 1024.0), pickle.HIGHEST_PROTOCOL)
                            with os.fdopen(result_w, "wb") as f:
                                f.write(blob)
                    finally:
                        os._exit(0)
                os.close(result_w)
                children.append((pid, result_r))
            mine: dict[int, Any] = {}
            work(mine)
            for i, v in mine.items():
                results[i] = v
            for pid, result_r in children:
                with os.fdopen(result_r, "rb") as f:
                    blob = f.read()
                os.waitpid(pid, 0)
                if blob:
                    done, private_mb = pickle.loads(blob)
                    for i, v in done.items():
                        results[i] = v
                    note_helper_peak_mb(private_mb)
            children = []
        finally:
            for pid, result_r in children:  # interrupted here: stop the copies
                try:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
                try:
                    os.close(result_r)
                except OSError:
                    pass
            os.close(queue_r)
    for i, v in enumerate(results):  # a copy failed: its items, here
        if v is missing:
            results[i] = fn(todo[i])
    return results
