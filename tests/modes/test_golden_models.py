"""Moving code never changes what it writes: a fixed corpus of conversions (every mode, method, target,
encoding and bit width) gives the bytes recorded for this machine's numerics (tests/golden)."""

import pytest
from golden.corpus import CASES, convert_case, machine_key, recorded, sha256

RECORDED = recorded().get(machine_key())


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_conversion_gives_the_recorded_bytes(name, tmp_path, monkeypatch):
    if RECORDED is None:
        pytest.skip(f"no hashes recorded for {machine_key()} (python tests/golden/corpus.py --record)")
    monkeypatch.setenv("PTQFLOW_HOME", str(tmp_path / "home"))
    assert sha256(convert_case(name, tmp_path)) == RECORDED[name]
