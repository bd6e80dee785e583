"""Test set-up: offline Prefect with a throw-away home, set before anything imports Prefect."""

import os
import sys
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="ptqflow-test-home-"))
os.environ["PTQFLOW_HOME"] = str(_HOME)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.pop("PREFECT_API_URL", None)
os.environ["PTQFLOW_RESIDENT_SERVER"] = "0"  # tests keep their own harness; test_resident_server.py turns it on

# tests live in folders by concept (config/, modes/full/, service/, ...) and share helpers by module name
_TESTS = Path(__file__).parent
sys.path[:0] = [str(_TESTS)] + sorted(str(p) for p in _TESTS.rglob("*") if p.is_dir() and p.name not in
                                      ("fixtures", "golden", "__pycache__"))

import pytest  # noqa: E402

# Prefect's logging handlers keep the stream they were made with. Made here, before any test, they write to
# the session's stderr; made by the first flow a test runs, they would keep that test's captured stream,
# and every later warning would end in "--- Logging error ---" on a closed file.
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it costs seconds to start), heartbeats off."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield


SERVICE_FOLDERS = ("service", "cli")  # Prefect servers, Dask clusters, subprocesses of the CLI
SERVICE_FIXTURES = ("prefect_harness",)  # a flow run needs the session's Prefect test server
# core tests that take seconds on 2 cores (measured with --durations): the quick loop leaves them out
SLOW_TESTS = (
    "test_bert_sized_group_folds_in_time", "test_any_config_file_gives_a_config_or_our_error",
    "test_schema_shaped_configs_give_a_config_or_our_error", "test_kl_prefix_sum_search_agrees_with_the_bin_by_bin_search",
    "test_kl_search_matches_literal_reference", "test_chromium_renders", "test_embedding_ram_stays_low",
    "test_two_million_gaussian_codes_near_the_entropy", "test_bert_embedding_4_bit_folds",
)


def pytest_collection_modifyitems(config, items):
    """``service``: tests that start Prefect, Dask or CLI processes; ``slow``: those and the few core tests
    that take seconds. ``pytest -m "not slow"`` is the quick loop; ``make test`` runs everything."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(_TESTS).parts
        if parts[0] in SERVICE_FOLDERS or any(f in item.fixturenames for f in SERVICE_FIXTURES):
            item.add_marker(pytest.mark.service)
            item.add_marker(pytest.mark.slow)
        elif item.name.split("[")[0].startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
