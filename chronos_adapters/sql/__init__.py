"""The durable store on SQLAlchemy Core: SQLite (file, the embedded default) and MySQL/MariaDB (PyMySQL,
or asyncmy with ``mysql+asyncmy://``), with the Alembic migrations shipped in this package."""

from .migrate import migrate
from .store import SqlStore

__all__ = ["SqlStore", "migrate"]
