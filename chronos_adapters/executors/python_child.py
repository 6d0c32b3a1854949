"""The child process of a ``python`` job with ``isolation: process``: reads the request (JSON) on stdin,
imports and calls the function, and writes its messages as JSON lines to the file descriptor named by
``CHRONOS_RESULT_FD``: ``{"log": line}`` for each ``RunContext.log``, then ``{"result": json|null}`` or
``{"error": {"text", "retryable"}}``. ``print`` and ``logging`` go to this process's stdout/stderr,
which the parent reads as the run's output. The parent kills the process group on timeout or cancel."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import threading
from datetime import datetime
from typing import Any


def main() -> int:
    out = os.fdopen(int(os.environ.pop("CHRONOS_RESULT_FD")), "w", buffering=1, encoding="utf-8")
    lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(msg) + "\n")

    request = json.loads(sys.stdin.read())
    sys.path[:] = [p for p in request["sys_path"] if isinstance(p, str)]
    from chronos_core.errors import ExecutionFailed
    from chronos_core.python import RunContext, context_parameter

    from .python import describe_exception, encode_result, load_function

    def emit(text: str, stream: str) -> None:
        for line in text.split("\n"):
            send({"log": line, "stream": stream})

    c = request["context"]
    ctx = RunContext(run_id=c["run_id"], job_id=c["job_id"], job_name=c["job_name"], attempt=c["attempt"],
                     scheduled_for=datetime.fromisoformat(c["scheduled_for"]), trigger=c["trigger"],
                     _emit=emit)
    try:
        func = load_function(request["function"], request.get("allowed"))
        kwargs = dict(request["kwargs"])
        name = context_parameter(func)
        if name is not None:
            kwargs[name] = ctx
        value = func(*request["args"], **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except ExecutionFailed as exc:
        send({"error": {"text": describe_exception(exc), "retryable": exc.retryable}})
        return 1
    except Exception as exc:
        send({"error": {"text": describe_exception(exc), "retryable": True}})
        return 1
    text, note = encode_result(value, request["max_result"])
    sys.stdout.flush()
    sys.stderr.flush()
    send({"result": text, "note": note})
    return 0


async def _await(value: Any) -> Any:
    return await value


if __name__ == "__main__":
    sys.exit(main())
