"""Settings the built-in executors need, gathered in one value the composition root fills in.

``ExecutorConfig()`` is usable as is: shell allowed (the embedded library's default; the REST service
passes ``allow_shell=False`` unless its setting says otherwise), HTTP to public addresses only, SMTP on
``localhost:25`` without authentication, no SQL connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chronos_core.secrets import text_secrets

__all__ = ["ExecutorConfig"]


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    # shell -------------------------------------------------------------------------------------------
    allow_shell: bool = True
    """Whether shell jobs may run at all. Checked again at execution time (a job stored while shell was
    allowed fails, not retried, on a worker where it is not)."""
    shell_kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL to a shell job's process group on timeout/cancel."""
    shell_max_line: int = 1024 * 1024
    """Longest line (bytes) passed on whole; longer output is passed on in pieces. (The worker masks
    secrets in each, then cuts it into ``run.log`` events of at most 16 KiB.)"""
    shell_pass_env: tuple[str, ...] = ()
    """Variables of the service's environment passed on to shell jobs (and the child processes of python
    jobs with ``isolation: process``) besides ``PATH``, ``HOME``, ``LANG`` and ``TZ`` (nothing else is
    inherited). A comma-separated string is accepted too."""

    # http --------------------------------------------------------------------------------------------
    http_allow_hosts: tuple[str, ...] = ()
    """SSRF allow-list: host names (exact, case-insensitive), IP addresses or CIDR networks that HTTP
    jobs may reach even though they are loopback/private/link-local/reserved (e.g. ``127.0.0.1``,
    ``10.0.0.0/8``, ``internal.example``); ``*`` turns the guard off. Everything public is always allowed.
    A comma-separated string is accepted too."""
    http_timeout: float = 300.0
    """Seconds the whole exchange of one attempt may take (connect, redirects, headers, body), and httpx's
    timeout for each of connect/read/write/pool; the job's own timeout still applies."""
    http_max_body: int = 64 * 1024
    """Bytes of a response body kept (logged and matched against ``expect_body``), also after gzip/deflate
    are undone; the rest is neither read nor inflated."""
    http_max_redirects: int = 10

    # email -------------------------------------------------------------------------------------------
    smtp_max_recipients: int = 100
    """Most recipients (to + cc + bcc) one email job may have; more fail the run, not retried."""
    smtp_host: str = "localhost"
    smtp_port: int = 25
    """SMTP port (25, 587 with ``smtp_starttls``, 465 with ``smtp_ssl``)."""
    smtp_user: str | None = None
    """Log in with ``smtp_user``/``smtp_password`` when both are set."""
    smtp_password: str | None = None
    smtp_starttls: bool = False
    """Upgrade the connection with STARTTLS (certificate verified) before logging in."""
    smtp_ssl: bool = False
    """Implicit TLS from the first byte (SMTPS); excludes ``smtp_starttls``."""
    smtp_sender: str | None = None
    """Default From address when a job gives no ``sender``."""
    smtp_timeout: float = 30.0
    """Socket timeout (seconds) of each SMTP operation."""
    smtp_ca_file: str | None = None
    """CA bundle to verify the SMTP server with (default: the system's)."""

    # sql ---------------------------------------------------------------------------------------------
    sql_connections: Mapping[str, str] = field(default_factory=dict)
    """Named connections: name -> SQLAlchemy URL (``mysql+pymysql://u:p@host/db``, ``sqlite:///x.db``).
    Jobs name one; they never carry a URL or password."""
    sql_max_rows: int = 1000
    """Upper bound on the rows a SQL job records, whatever its ``max_rows`` says."""
    sql_max_cell: int = 1024
    """Characters of one recorded value; longer ones are cut."""

    # python ------------------------------------------------------------------------------------------
    python_modules: tuple[str, ...] | None = None
    """Modules whose functions ``python`` jobs may import and run (prefixes on dotted boundaries:
    ``myapp`` allows ``myapp.jobs``; ``*`` allows all). ``None`` allows every module: the embedded
    library's default, where the program names its own functions; the service passes
    ``CHRONOS_PYTHON_MODULES`` (empty: no python job). A comma-separated string is accepted too."""
    python_threads: int = 8
    """Threads running plain (not ``async``) functions of ``python`` jobs at once; more runs wait."""
    python_kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL to a ``python`` job's child process on timeout/cancel."""

    def secrets(self) -> list[str]:
        """The configuration's own secrets: the SMTP password, every SQL URL and its password."""
        out = [self.smtp_password] if self.smtp_password else []
        for url in self.sql_connections.values():
            out += [url, *text_secrets(url)]
        return out

    def __post_init__(self) -> None:
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError("smtp_ssl and smtp_starttls exclude each other")
        hosts = self.http_allow_hosts
        if isinstance(hosts, str):
            hosts = tuple(h for h in hosts.replace(";", ",").split(","))
        object.__setattr__(self, "http_allow_hosts", tuple(h.strip() for h in hosts if h.strip()))
        names = self.shell_pass_env
        if isinstance(names, str):
            names = tuple(names.split(","))
        object.__setattr__(self, "shell_pass_env", tuple(n.strip() for n in names if n.strip()))
        object.__setattr__(self, "sql_connections", dict(self.sql_connections))
        modules = self.python_modules
        if isinstance(modules, str):
            modules = tuple(modules.split(","))
        if modules is not None:
            object.__setattr__(self, "python_modules", tuple(m.strip() for m in modules if m.strip()))
