"""The process-wide settings and the parallel helpers (junoproc.runtime)."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from junoproc import runtime
from junoproc.geometry import Target, frame_state


def test_cv2_serial_nests_and_restores_opencv_threads():
    """Parallel work runs OpenCV on one thread (its pool nested in it oversubscribes the
    cores); the setting before the outermost user comes back, also after an error."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        with runtime.cv2_serial():
            assert cv2.getNumThreads() == 1
            with runtime.cv2_serial():  # a second user at the same time
                assert cv2.getNumThreads() == 1
            assert cv2.getNumThreads() == 1  # the first one is still running
        assert cv2.getNumThreads() == 3
        with pytest.raises(RuntimeError), runtime.cv2_serial():
            raise RuntimeError("work failed")
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def _square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.005)  # long enough for the copy to start and take its share
    return x * x, os.getpid()


@pytest.fixture
def forked(monkeypatch):
    if not runtime.forking():
        pytest.skip("work is forked on Linux only")
    monkeypatch.delenv(runtime.FORK_ENV, raising=False)


def test_fork_map_keeps_order_and_uses_a_copy(forked):
    """Results come back in the items' order, numpy arrays intact, and some items were
    done by a forked copy (another pid), which reported its memory."""
    runtime._HELPER_PEAK_MB[0] = 0.0
    items = list(range(40))
    out = runtime.fork_map(_square_and_pid, items, 2)
    assert [v for v, _ in out] == [x * x for x in items]
    pids = {pid for _, pid in out}
    assert os.getpid() in pids or len(pids) == 1
    assert pids - {os.getpid()}, "no item ran in a copy"
    assert runtime.helper_peak_mb() > 0
    arrays = runtime.fork_map(lambda k: np.full((50, 50), k, np.float32), range(5), 2)
    assert all(a.dtype == np.float32 and (a == k).all() for k, a in enumerate(arrays))


def test_fork_map_one_worker_or_switched_off_stays_in_this_process(forked, monkeypatch):
    me = os.getpid()
    assert {pid for _, pid in runtime.fork_map(_square_and_pid, range(8), 1)} == {me}
    monkeypatch.setenv(runtime.FORK_ENV, "0")
    assert {pid for _, pid in runtime.fork_map(_square_and_pid, range(8), 2)} == {me}
    assert runtime.fork_map(_square_and_pid, [], 2) == []


def test_fork_map_redoes_a_failed_copys_items_and_raises_here(forked):
    """A copy that raises (or dies) loses nothing: its items are done in this process; an
    item that fails everywhere raises here, with its own exception."""
    parent = os.getpid()

    def only_here(x: int) -> int:
        if os.getpid() != parent:
            raise RuntimeError("a copy fails")
        return x + 1

    assert runtime.fork_map(only_here, range(20), 2) == list(range(1, 21))

    def dies_in_copy(x: int) -> int:
        if os.getpid() != parent:
            os._exit(3)
        return -x

    assert runtime.fork_map(dies_in_copy, range(10), 2) == [-x for x in range(10)]

    def bad(x: int) -> int:
        if x == 7:
            raise ValueError("item 7 is bad")
        return x

    with pytest.raises(ValueError, match="item 7"):
        runtime.fork_map(bad, range(12), 2)


def test_spice_is_refused_in_a_forked_copy(forked, real_kernels, data_dir):
    """SPICE's kernel files share their read offsets with the parent: a copy must not read
    them. frame_state refuses there, so the parent does that item itself."""
    import spiceypy

    from junoproc.products import load

    et = float(spiceypy.str2et(load(data_dir / "perijove44" / "13544-ImageSet").meta.start_time_utc))
    target = Target.from_name("JUPITER")
    parent = os.getpid()

    def state(k: int) -> tuple[float, int]:
        time.sleep(0.005)
        return frame_state(target, et + k).range_centre_km, os.getpid()

    states = runtime.fork_map(state, range(6), 2)
    assert {pid for _, pid in states} == {parent}
    assert states[0][0] == frame_state(target, et).range_centre_km
    in_copy = runtime.fork_map(lambda k: (time.sleep(0.005), runtime.in_forked_copy())[1], range(20), 2)
    assert any(in_copy) and not all(in_copy) and not runtime.in_forked_copy()


@pytest.mark.parametrize("numpy_first", [False, True])
def test_blas_runs_on_one_thread_unless_the_user_says(numpy_first):
    """An idle OpenBLAS thread spins for the next call (6 % of a product's CPU on 2 cores):
    junoproc sets BLAS to one thread whether numpy was imported before it or not, and a
    thread count the user set is kept."""
    import subprocess
    import sys

    first = ("import numpy, scipy.linalg; import junoproc" if numpy_first
             else "import junoproc, numpy, scipy.linalg")
    code = (f"{first}\nfrom threadpoolctl import threadpool_info\n"
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                           "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1]"
    if (os.cpu_count() or 1) >= 2:  # (OpenBLAS caps its threads at the CPU count)
        env["OPENBLAS_NUM_THREADS"] = "2"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "[2]"


def test_one_malloc_arena_unless_the_user_says():
    """Threads that allocate share one glibc arena (memory one frees, another reuses: a
    PJ44 product's write-and-enhance block page-faulted 3x less); MALLOC_ARENA_MAX wins."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc arenas: Linux only")
    code = ("import ctypes, threading, junoproc\n"
            "def work():\n"
            "    keep = [bytearray(2000) for _ in range(2000)]\n"
            "threads = [threading.Thread(target=work) for _ in range(4)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "ctypes.CDLL(None).malloc_stats()\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    if "Arena 0:" not in out.stderr:
        pytest.skip("not glibc's malloc")
    assert out.stderr.count("Arena ") == 1, out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                         capture_output=True, text=True, check=True)
    assert out.stderr.count("Arena ") > 1


def test_thread_map_keeps_order_and_nests():
    """Results in the items' order; a call from one of its own threads runs there (no
    deadlock on the one pool)."""
    assert runtime.thread_map(lambda k: k * k, range(20), 2) == [k * k for k in range(20)]
    nested = runtime.thread_map(lambda k: sum(runtime.thread_map(lambda j: j + k, range(3), 2)), range(6), 2)
    assert nested == [3 * k + 3 for k in range(6)]
