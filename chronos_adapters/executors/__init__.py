"""Executors, one per job type, registered by ``type_name``: ``shell``, ``http``, ``email``, ``sql``,
``python``."""

from __future__ import annotations

from chronos_core.ports import Executor

from .config import ExecutorConfig
from .email import EmailExecutor
from .http import HttpExecutor
from .python import PythonExecutor
from .shell import ShellExecutor
from .sql import SqlExecutor

__all__ = ["EmailExecutor", "ExecutorConfig", "HttpExecutor", "PythonExecutor", "ShellExecutor",
           "SqlExecutor", "builtin_executors"]


def builtin_executors(config: ExecutorConfig | None = None) -> list[Executor]:
    """One executor per built-in job type, configured from ``config``."""
    c = config or ExecutorConfig()
    return [
        ShellExecutor(kill_grace=c.shell_kill_grace, max_line=c.shell_max_line, pass_env=c.shell_pass_env,
                      allowed=c.allow_shell),
        HttpExecutor(allow_hosts=c.http_allow_hosts, timeout=c.http_timeout, max_body=c.http_max_body,
                     max_redirects=c.http_max_redirects),
        EmailExecutor(host=c.smtp_host, port=c.smtp_port, user=c.smtp_user, password=c.smtp_password,
                      starttls=c.smtp_starttls, ssl=c.smtp_ssl, sender=c.smtp_sender, timeout=c.smtp_timeout,
                      ca_file=c.smtp_ca_file, max_recipients=c.smtp_max_recipients),
        SqlExecutor(connections=c.sql_connections, max_rows=c.sql_max_rows, max_cell=c.sql_max_cell),
        PythonExecutor(allowed_modules=c.python_modules, threads=c.python_threads,
                       kill_grace=c.python_kill_grace, pass_env=c.shell_pass_env),
    ]
