"""Service settings, read from the environment by pydantic-settings.

Every setting has a ``CHRONOS_`` name; the seed system's names (``DB_HOST``, ``DB_USER``, ``DB_PASSWORD``,
``DB_NAME``, ``KAFKA_BROKER``, ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER``, ``SMTP_PASS``) are read too so
its compose files keep working. ``CHRONOS_*`` wins when both are set.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chronos_core.hookspec import NotifyRule, notify_problems
from chronos_core.secrets import text_secrets

__all__ = ["DEFAULT_DATABASE_URL", "EngineSettings", "Settings"]

DEFAULT_DATABASE_URL = "sqlite:///./chronos.db"

CommaList = Annotated[list[str], NoDecode]

NOT_SETTINGS = frozenset({
    "CHRONOS_URL", "CHRONOS_TOKEN",  # read by the client commands (chronos jobs|runs|logs...)
    "CHRONOS_JOB_ID", "CHRONOS_RUN_ID", "CHRONOS_ATTEMPT", "CHRONOS_RESULT_FD",  # set for a job's process
})


def _env(name: str, *seed: str) -> AliasChoices:
    return AliasChoices(f"CHRONOS_{name.upper()}", *seed)


class EngineSettings(BaseModel):
    """Every knob of the engines (scheduler, planner, retention, worker, notifier) and the shell policy:
    what ``Chronos(...)`` and ``Chronos.embedded(...)`` take as keywords, and what :class:`Settings` reads
    as ``CHRONOS_<NAME>`` (it is a subclass). The defaults are the engines' own (a test checks it);
    ``chronos_app.compose`` says which engine parameter each one becomes."""

    model_config = ConfigDict(extra="forbid")

    # policy ----------------------------------------------------------------------------------------
    allow_shell: bool = Field(default=True, description=(
        "shell jobs may be created, triggered and run here (they run code on the host)"))

    # scheduler and planner -------------------------------------------------------------------------
    batch_size: int = Field(default=1000, ge=1, description="due jobs the scheduler claims at once")
    max_queued: int | Literal["auto"] | None = Field(default="auto", description=(
        "dispatches waiting in the queue before the scheduler claims no more; 'auto': bounded (max(1000, "
        "8 x concurrency)) for the in-process queue, unbounded for Kafka; 'none': unbounded"))
    scheduler_max_sleep: float = Field(default=5.0, gt=0, description=(
        "longest the scheduler sleeps between ticks when nothing is due sooner (it is woken by changes)"))
    scheduler_min_interval: float = Field(default=0.005, ge=0, description=(
        "shortest pause between two scheduler ticks"))
    publish_queued: bool = Field(default=True, description=(
        "the scheduler publishes run.queued events (off: fewer events when nobody watches them)"))
    redispatch_after: float | None = Field(default=120.0, ge=0, description=(
        "seconds a run may stay queued after its dispatch was sent to Kafka before the scheduler sends "
        "it again (the broker lost it, e.g. restarted without its data); 0: never"))
    reap_grace: float = Field(default=10.0, ge=0, description=(
        "seconds past a run's lease expiry before the scheduler reaps it (fails or retries it)"))
    max_slots_listed: int = Field(default=1000, ge=1, description=(
        "missed slots of one job recorded one by one per claim; further ones are summed up in one run"))
    max_catch_up: int = Field(default=100, ge=1, description="catch-up runs of a fire_all job per claim")

    # retention -------------------------------------------------------------------------------------
    history_max_age: float | None = Field(default=None, gt=0, description=(
        "seconds a finished run is kept (retention by age, for every job; a job's history_limit still "
        "applies); unset: kept until its job's history_limit or its deletion"))
    history_max_runs: int | None = Field(default=None, ge=1, le=1_000_000, description=(
        "finished runs kept per job that sets no history_limit (retention by count, for every job); "
        "unset: no limit"))
    prune_interval: float = Field(default=60.0, gt=0, description="seconds between retention sweeps")

    # worker ----------------------------------------------------------------------------------------
    concurrency: int = Field(default=16, ge=1, description="runs a worker executes at once")
    lease: float = Field(default=30.0, gt=0, description="seconds of a run's lease (renewed by heartbeats)")
    output_limit: int = Field(default=64 * 1024, ge=1024, description="bytes of output kept per run")
    line_limit: int = Field(default=16 * 1024, ge=256, description=(
        "bytes of one run.log event; longer output lines are cut into pieces"))
    output_interval: float = Field(default=1.0, gt=0, description=(
        "seconds between writes of a running run's output so far to the store"))
    store_retry_for: float = Field(default=300.0, ge=0, description=(
        "seconds a worker keeps trying to record a run's start or outcome while the store is down"))
    worker_name: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                                    description=(
        "the start of this process's lease owner ids (a running run's owner shows it; the notifier's "
        "too); a random suffix keeps two processes given one name apart"))
    shutdown_grace: float = Field(default=10.0, ge=0, description=(
        "seconds running attempts get on stop before they are cancelled (and recorded so)"))

    # notifier --------------------------------------------------------------------------------------
    notify_default: list[NotifyRule] = Field(default_factory=list, repr=False, description=(
        "CHRONOS_NOTIFY_DEFAULT: notifications (a JSON list, as a job's notify) for every job that sets "
        "none"))
    notifier_batch_size: int = Field(default=50, ge=1, description="notices the notifier claims at once")
    notifier_lease: float = Field(default=60.0, gt=0, description="seconds of a notice's delivery lease")
    notifier_interval: float = Field(default=1.0, gt=0, description=(
        "seconds between the notifier's claims while nothing wakes it"))
    notifier_concurrency: int = Field(default=32, ge=1, description="notices delivered at once")
    notifier_min_interval: float = Field(default=0.2, ge=0, description=(
        "shortest pause between two claims of the notifier"))

    @field_validator("notify_default")
    @classmethod
    def _notify_bounds(cls, v: list[NotifyRule]) -> list[NotifyRule]:
        # The bounds a job's own rules are held to on every write (header name/value, bytes as stored):
        # a default rule past them would fail at every delivery instead of once at start-up.
        problems = notify_problems(v)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {reason}" for loc, reason in problems))
        return v

    @field_validator("max_queued", mode="before")
    @classmethod
    def _unbounded(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("none", "off", "unbounded"):
            return None
        return v


class Settings(EngineSettings, BaseSettings):
    """Everything the service can be told: the engines' knobs (:class:`EngineSettings`) and the adapters',
    the API's and the executors' settings. See the configuration table in README.md."""

    model_config = SettingsConfigDict(env_prefix="CHRONOS_", extra="ignore", populate_by_name=True)

    # store ---------------------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, repr=False, description="SQLAlchemy URL of the store, or 'memory'. Default: the "
        "seed's DB_* variables as a MySQL URL when DB_HOST is set, else sqlite:///./chronos.db")
    db_host: str | None = Field(default=None, validation_alias=_env("db_host", "DB_HOST"))
    db_port: int = Field(default=3306, validation_alias=_env("db_port", "DB_PORT"))
    db_user: str = Field(default="root", validation_alias=_env("db_user", "DB_USER"))
    db_password: str = Field(default="", validation_alias=_env("db_password", "DB_PASSWORD"), repr=False)
    db_name: str = Field(default="chronos", validation_alias=_env("db_name", "DB_NAME"))
    db_pool_size: int = Field(default=10, ge=1)
    db_driver: Literal["pymysql", "asyncmy"] = Field(default="pymysql", description=(
        "the MySQL driver of the URL built from DB_HOST (a CHRONOS_DATABASE_URL names its own: "
        "mysql+pymysql://, mysql+asyncmy://; a plain mysql:// gets PyMySQL)"))

    # bus and dispatch queue ------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(default=None,
                                        validation_alias=_env("kafka_bootstrap", "KAFKA_BROKER"))
    bus: Literal["auto", "memory", "kafka"] = Field(
        default="auto", description="'auto': kafka when a bootstrap server is set, else in-process")
    kafka_idempotence: bool = Field(default=False, description="idempotent producers: on for real Kafka, "
                                    "off for brokers without it (Tansu)")
    kafka_runs_topic: str = "chronos.runs"
    kafka_events_topic: str = "chronos.events"
    kafka_group: str = "chronos-workers"
    kafka_runs_partitions: int = Field(default=12, ge=1, description="when the topic is created here")
    kafka_events_partitions: int = Field(default=1, ge=1, description="when the topic is created here")
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_max_tries: int = Field(default=3, ge=1, description="deliveries before a dead letter")
    kafka_fetch_max_wait_ms: int = Field(default=20, ge=1, le=10_000, description=(
        "longest a consumer's fetch waits for records (runs, events, the outbox's wake topic): the "
        "hand-off latency on brokers that answer a waiting fetch only when it is up (Tansu)"))
    kafka_outbox: bool = Field(default=True, description="with a SQL store: dispatches go through the "
                               "chronos_outbox table and a relay, so a Kafka outage loses nothing")

    # API -------------------------------------------------------------------------------------------
    api_tokens: CommaList = Field(default_factory=list, repr=False)
    plugins: CommaList = Field(default_factory=list, description=(
        "modules to import at start-up, each with a register(chronos) function: how a service adds its "
        "own job types (register_job_type) in every process: api, scheduler and worker"))
    readonly_tokens: CommaList = Field(default_factory=list, repr=False)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    sse_ping: float = Field(default=15.0, gt=0)
    idempotency_ttl: float = Field(default=24 * 3600.0, gt=0)
    idempotency_max_bytes: int = Field(default=16 * 1024 * 1024, ge=0, description=(
        "memory the Idempotency-Key cache may hold (answers over 64 KiB are kept as the job's id and "
        "re-read on a replay)"))
    allowed_hosts: CommaList = Field(default_factory=list, description=(
        "with auth off: Host names accepted besides loopback ones (localhost, 127.0.0.1, [::1])"))
    header_timeout: float = Field(default=10.0, gt=0, description=(
        "seconds a client has to send a request's headers (slow clients are disconnected)"))
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="seconds an idle connection stays")
    max_connections: int = Field(default=1000, ge=1, description=(
        "open connections (or requests in flight) before new requests get 503"))
    api_thread: bool = Field(default=True, description=(
        "chronos serve: the API on a thread and event loop of its own beside the engines', so a burst "
        "of requests cannot hold up the scheduler (needs the in-process bus; with Kafka the API shares "
        "the engines' loop)"))

    # engines: the fields of EngineSettings (above); the service's own default for shell is off ------
    allow_shell: bool = Field(default=False, description=(
        "accept and run shell jobs (they run code on the host); off in the service unless set"))
    process_tuning: bool = Field(default=True, description=(
        "chronos serve/scheduler/worker: after start-up, freeze what is alive out of the garbage "
        "collector's scans, collect its young generation less often and shorten the GIL switch "
        "interval to 0.5 ms (chronos_app.tuning.tune_process)"))

    # executors -------------------------------------------------------------------------------------
    shell_kill_grace: float = Field(default=5.0, ge=0, description=(
        "seconds between SIGTERM and SIGKILL to a shell job's process group on timeout or cancel"))
    shell_max_line: int = Field(default=1024 * 1024, ge=1024, description=(
        "longest output line (bytes) of a shell job passed on whole; longer ones in pieces"))
    shell_pass_env: CommaList = Field(default_factory=list, description=(
        "variables passed on to shell jobs (and python jobs' child processes) besides PATH, HOME, LANG, "
        "TZ (nothing else is inherited)"))
    email_max_recipients: int = Field(default=100, ge=1, description="recipients of one email job")
    http_allow_hosts: CommaList = Field(default_factory=list)
    http_timeout: float = Field(default=300.0, gt=0, description=(
        "seconds the whole exchange of one HTTP job's attempt may take (the job's timeout still applies)"))
    http_max_body: int = Field(default=64 * 1024, ge=0, description="bytes of a response body kept")
    http_max_redirects: int = Field(default=10, ge=0, description="redirects an HTTP job follows")
    smtp_host: str | None = Field(default=None, validation_alias=_env("smtp_host", "SMTP_HOST"))
    smtp_port: int | None = Field(default=None, validation_alias=_env("smtp_port", "SMTP_PORT"))
    smtp_user: str | None = Field(default=None, validation_alias=_env("smtp_user", "SMTP_USER"))
    smtp_password: str | None = Field(default=None, repr=False,
                                      validation_alias=_env("smtp_password", "SMTP_PASS", "SMTP_PASSWORD"))
    smtp_starttls: bool | None = None
    smtp_ssl: bool | None = None
    smtp_sender: str | None = None
    smtp_timeout: float = Field(default=30.0, gt=0, description="seconds of each SMTP operation")
    smtp_ca_file: str | None = Field(default=None, description=(
        "CA bundle to verify the SMTP server with (default: the system's)"))
    sql_connections: dict[str, str] = Field(default_factory=dict, repr=False)
    sql_max_rows: int = Field(default=1000, ge=0, description="rows a SQL job records at most")
    sql_max_cell: int = Field(default=1024, ge=1, description="characters of one recorded SQL value")
    python_modules: CommaList = Field(default_factory=list, description=(
        "modules (prefixes: 'myapp' allows myapp.jobs) whose functions python jobs may import and run "
        "on the workers; empty: python jobs are refused. They run with the worker's own rights"))
    python_threads: int = Field(default=8, ge=1, description="plain functions of python jobs at once")
    python_kill_grace: float = Field(default=5.0, ge=0, description=(
        "seconds between SIGTERM and SIGKILL to a python job's child process on timeout or cancel"))
    log_level: str = "info"

    @field_validator("api_tokens", "readonly_tokens", "http_allow_hosts", "plugins", "shell_pass_env",
                     "allowed_hosts", "python_modules", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _database(self) -> Settings:
        if not self.database_url:
            if self.db_host:
                auth = quote(self.db_user, safe="")
                if self.db_password:
                    auth += ":" + quote(self.db_password, safe="")
                self.database_url = (f"mysql+{self.db_driver}://{auth}@{self.db_host}:{self.db_port}/"
                                     f"{quote(self.db_name, safe='')}")
            else:
                self.database_url = DEFAULT_DATABASE_URL
        return self

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable the settings read (``CHRONOS_*`` and the seed's names)."""
        names = set()
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {str(c).upper() for c in alias.choices}
            else:
                names.add(f"CHRONOS_{name.upper()}")
        return names

    @classmethod
    def unknown_env(cls, environ: Mapping[str, str]) -> list[str]:
        """What to say of each ``CHRONOS_*`` variable of ``environ`` that is no setting (a misspelt one
        would otherwise be ignored without a word), naming the closest setting."""
        known = cls.env_names()
        out = []
        for name in sorted(environ):
            upper = name.upper()
            if not upper.startswith("CHRONOS_") or upper in known or upper in NOT_SETTINGS \
                    or upper.startswith(("CHRONOS_TEST_", "CHRONOS_BENCH_")):
                continue
            longer = sorted(k for k in known if k.startswith(upper))  # cut short: CHRONOS_SMTP_PASS
            close = longer[:1] or difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            out.append(f"{name} is not a setting{hint}: ignored")
        return out

    @classmethod
    def given(cls, **values: Any) -> Settings:
        """Settings of these values over the defaults, without reading the environment (what
        ``Chronos.embedded()`` builds from its arguments)."""
        return _Given(**values)

    # derived ---------------------------------------------------------------------------------------
    @property
    def store_backend(self) -> str:
        return "memory" if self.database_url in ("memory", "memory://") else "sql"

    @property
    def bus_backend(self) -> str:
        if self.bus == "auto":
            return "kafka" if self.kafka_bootstrap else "memory"
        return self.bus

    @property
    def dispatch_outbox(self) -> bool:
        """Dispatches go through the ``chronos_outbox`` table and a relay (decided here, once): Kafka
        with a SQL store, unless ``kafka_outbox`` is off. The store then writes the rows in its
        dispatching transactions and the queue is the outbox's."""
        return self.bus_backend == "kafka" and self.kafka_outbox and self.store_backend == "sql"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens or self.readonly_tokens)

    def secret_values(self) -> list[str]:
        """The service's own secrets, masked in the output of every job: API tokens, the SMTP and
        database passwords, the database URL and every SQL connection URL (with their passwords)."""
        out = [*self.api_tokens, *self.readonly_tokens, self.smtp_password, self.db_password]
        for rule in self.notify_default:
            if rule.webhook is not None:
                out += [rule.webhook.secret or "", *rule.webhook.headers.values()]
        for url in (self.database_url, *self.sql_connections.values()):
            if url and url not in ("memory", "memory://"):
                out += [url, *text_secrets(url)]
        return [s for s in dict.fromkeys(out) if s]


class _Given(Settings):
    """:meth:`Settings.given`: only the values passed in (no ``CHRONOS_*`` variable read)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   *sources: Any, **named: Any) -> tuple[Any, ...]:
        return (init_settings,)
