"""Container health check for the chronos processes without an HTTP port (scheduler, worker).

``python docker/healthcheck.py <role>`` exits 0 when a ``chronos <role>`` process runs in this container
and the backends it needs accept connections: the database (``DB_HOST``/``DB_PORT`` or the host of
``CHRONOS_DATABASE_URL``) and the Kafka bootstrap servers (``CHRONOS_KAFKA_BOOTSTRAP`` or
``KAFKA_BROKER``). It is a liveness check plus reachability, not a proof of progress: the api service is
checked through its own ``/ready`` endpoint instead. Standard library only.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit


def running(role: str, proc: Path = Path("/proc")) -> bool:
    """Whether a process whose command line is ``... chronos <role> ...`` runs."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [Path(a.decode(errors="replace")).name for a in argv if a]
        for i, word in enumerate(words[:-1]):
            if word == "chronos" and words[i + 1] == role:
                return True
    return False


def backends(env: dict[str, str]) -> list[tuple[str, int]]:
    """``(host, port)`` of every backend named by the environment."""
    out: list[tuple[str, int]] = []
    url = env.get("CHRONOS_DATABASE_URL")
    if url and "://" in url and not url.startswith("sqlite"):
        parts = urlsplit(url)
        if parts.hostname:
            out.append((parts.hostname, parts.port or 3306))
    elif env.get("DB_HOST"):
        out.append((env["DB_HOST"], int(env.get("DB_PORT") or 3306)))
    bootstrap = env.get("CHRONOS_KAFKA_BOOTSTRAP") or env.get("KAFKA_BROKER") or ""
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, sep, port = server.rpartition(":")
        out.append((host, int(port)) if sep else (server, 9092))
    return out


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("scheduler", "worker", "api", "serve"):
        print("usage: healthcheck.py scheduler|worker|api|serve", file=sys.stderr)
        return 2
    role = argv[1]
    if not running(role):
        print(f"no 'chronos {role}' process", file=sys.stderr)
        return 1
    down = [f"{h}:{p}" for h, p in backends(dict(os.environ)) if not reachable(h, p)]
    if down:
        print("unreachable: " + ", ".join(down), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
