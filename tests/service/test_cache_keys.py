"""Cached results are keyed by the tool's source too, so an upgrade never reads a stale pickled result."""

from pathlib import Path

from ptqflow.tasks import caching


def test_cache_keys_change_when_the_code_changes(monkeypatch):
    before = caching.content_key("resolve_config", "abc")
    monkeypatch.setattr(caching, "code_fingerprint", lambda: "another build")
    assert caching.content_key("resolve_config", "abc") != before


def test_code_fingerprint_reads_the_core_tasks_and_flows_sources(monkeypatch):
    read: list[Path] = []
    original = Path.read_bytes

    def spy(self):
        read.append(self)
        return original(self)

    caching.code_fingerprint.cache_clear()
    monkeypatch.setattr(Path, "read_bytes", spy)
    try:
        caching.code_fingerprint()
    finally:
        caching.code_fingerprint.cache_clear()
    names = {(p.parent.name, p.name) for p in read}
    assert ("ptq_core", "quant.py") in names
    assert ("config", "model.py") in names  # the classes a cached QuantConfig is unpickled into
    assert ("tasks", "full.py") in names and ("flows", "quantize.py") in names
