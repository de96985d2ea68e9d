from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


@pytest.fixture(scope="session")
def traces() -> Path:
    """The shared public traces (../shared/traces beside the checkout, as in CI)."""
    assert TRACES.is_dir(), f"shared traces not found at {TRACES}"
    return TRACES
