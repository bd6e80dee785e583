"""A new home's Prefect database comes from the schema snapshot, and is the one Prefect's migrations make."""

import sqlite3
from importlib.metadata import version

from ptqflow import prefect_db


def test_the_snapshot_is_for_the_installed_prefect():
    assert prefect_db.snapshot_header()["prefect"] == version("prefect")


def test_a_seeded_database_equals_the_one_prefects_migrations_make(tmp_path):
    seeded = tmp_path / "seeded" / "prefect.db"
    assert prefect_db.seed(seeded)
    migrated = prefect_db.migrated_database(tmp_path / "migrated")
    assert prefect_db.schema_of(seeded) == prefect_db.schema_of(migrated)


def test_seed_never_replaces_an_existing_database(tmp_path):
    db = tmp_path / "prefect.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE mine (x)")
    assert not prefect_db.seed(db)
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]


def test_seed_leaves_a_user_database_url_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert prefect_db.database_path() is None
    assert not prefect_db.seed()
    assert not (tmp_path / "prefect.db").exists()


def test_seed_writes_the_default_database_under_prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    assert prefect_db.seed()
    assert list(tmp_path.iterdir()) == [tmp_path / "prefect.db"]  # no temporary file left beside it
