"""The executors' own thread pool (``Threads``): results and errors reach the caller, a call cancelled
before a thread took it never runs, and a call that never returns does not keep the process alive."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from chronos_adapters.executors._common import Threads

ROOT = Path(__file__).resolve().parents[2]


async def test_results_and_errors_reach_the_caller() -> None:
    threads = Threads("t", size=2)
    assert await threads.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await threads.run(lambda: 1 / 0)
    threads.close()
    assert await threads.run(str.upper, "again") == "AGAIN"  # a new pool after close
    threads.close()


async def test_a_call_cancelled_before_a_thread_took_it_never_runs() -> None:
    threads = Threads("t", size=1)
    release, ran = threading.Event(), []
    first = asyncio.create_task(threads.run(release.wait, 30))
    second = asyncio.create_task(threads.run(ran.append, "second"))
    await asyncio.sleep(0.05)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    assert await first is True
    assert await threads.run(ran.append, "third") is None
    assert ran == ["third"]
    threads.close()


async def test_close_cancels_the_calls_not_started() -> None:
    threads = Threads("t", size=1)
    release = threading.Event()
    first = asyncio.create_task(threads.run(release.wait, 30))
    waiting = asyncio.create_task(threads.run(lambda: "ran"))
    await asyncio.sleep(0.05)
    threads.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await first is True


def test_a_call_that_never_returns_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """A python job that ignores its cancellation, an endless statement: once the program is done, the
    process exits (a ThreadPoolExecutor's threads are joined at exit: it hung for ever)."""
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent("""
        import asyncio, threading
        from chronos_adapters.executors._common import Threads

        async def main():
            threads = Threads("stuck")
            call = asyncio.create_task(threads.run(threading.Event().wait))  # never set
            await asyncio.sleep(0.2)
            call.cancel()
            threads.close()
            print("done", flush=True)

        asyncio.run(main())
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout.strip()) == (0, "done"), done.stderr
