"""A new Prefect database from a schema snapshot, instead of replaying Prefect's 116 migrations.

Prefect builds a new SQLite database by running every Alembic migration since its first release:
about 8.5 s on 2 cores, paid by the first flow run of every ``PTQFLOW_HOME`` (and by every test that
starts a server in a fresh home). The schema those migrations end at is fixed for a Prefect version,
so ``prefect_schema.sql`` holds it (the ``sqlite3`` dump of a freshly migrated database: tables,
indexes and the ``alembic_version`` row) and :func:`seed` writes a new database from it in a few
milliseconds. The server still runs its migrations check at start; with the database at Alembic's
head it has nothing to do.

The snapshot is used only for the Prefect version and migration head it was taken from (the first
line of the file says which); any other version falls back to Prefect's own migrations.
``python -m ptqflow.prefect_db`` rewrites it (``make prefect-schema``) after a Prefect upgrade, and
``tests/test_prefect_db.py`` fails until someone does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Mapping

SCHEMA = Path(__file__).with_name("prefect_schema.sql")
_URL_ENV = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def snapshot_header() -> dict[str, str]:
    """``{"prefect": version, "alembic": revision}`` from the snapshot's first line."""
    return _header(SCHEMA.read_text(encoding="utf-8"))


def _header(script: str) -> dict[str, str]:
    first = script.split("\n", 1)[0]
    return dict(part.split("=", 1) for part in first.removeprefix("--").split())


def database_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The SQLite file Prefect will use (under ``env``, default this process's environment), or None when
    the user pointed Prefect at another database."""
    env = os.environ if env is None else env
    if any(env.get(name) for name in _URL_ENV):
        return None
    prefect_home = env.get("PREFECT_HOME")
    if not prefect_home:
        return None
    return Path(prefect_home) / "prefect.db"


def seed(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Create Prefect's database (``path``, default the one Prefect will use under ``env``) from the
    snapshot if it does not exist yet; True when this call made it.

    Safe against concurrent first runs: the database is written under a temporary name and linked into
    place, so a process that finds the file finds it whole, and a loser of the race keeps the winner's.
    """
    path = path or database_path(env)
    if path is None or path.exists():
        return False
    try:
        script = SCHEMA.read_text(encoding="utf-8")
        header = _header(script)
    except (OSError, ValueError):
        return False
    if header.get("prefect") != version("prefect"):
        return False  # another Prefect: its own migrations know its schema
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".prefect-db-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            conn.executescript(script)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def schema_of(path: Path) -> tuple[list[tuple[str, str, tuple[str, ...]]], list[tuple]]:
    """A database's schema (type, name and the clauses of every table and index) and its Alembic rows.

    Clauses are compared as a sorted set of lines: Prefect's batch migrations rebuild tables with their
    constraints in an order that changes from one run to the next, and that order means nothing to SQLite.
    """
    with contextlib.closing(sqlite3.connect(path)) as conn:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                               "ORDER BY type, name").fetchall()
        revision = conn.execute("SELECT * FROM alembic_version").fetchall()
    clauses = [(kind, name, tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())))
               for kind, name, sql in objects]
    return clauses, revision


def migrated_database(folder: Path) -> Path:
    """A database built the slow way, by Prefect's own migrations, in ``folder`` (a subprocess, so that
    this process's Prefect settings stay as they are)."""
    import subprocess

    env = dict(os.environ, PREFECT_HOME=str(folder))
    for name in _URL_ENV:
        env.pop(name, None)
    code = ("import asyncio\n"
            "from prefect.server.database import provide_database_interface\n"
            "asyncio.run(provide_database_interface().create_db())\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return folder / "prefect.db"


def write_snapshot(target: Path = SCHEMA) -> None:
    """Rebuild ``prefect_schema.sql`` from a database that Prefect's migrations made just now."""
    with tempfile.TemporaryDirectory() as tmp:
        db = migrated_database(Path(tmp))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (revision,), = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            lines = list(conn.iterdump())
    header = f"-- prefect={version('prefect')} alembic={revision}"
    target.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_snapshot()
    print(f"wrote {SCHEMA} ({snapshot_header()})")
