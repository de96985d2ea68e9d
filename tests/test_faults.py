"""The fault suite: each fault injected into the local fleet under a compressed step burst
(`bench/faults.py`, which prints the same results as a table).

For every fault: no request lost beyond those in flight on a killed or hung replica, the
fleet never below its pre-fault size while the burst lasts, the loop still ticking (and
/healthz ok) afterwards, and no process left behind. About 40 s per fault.
"""

from __future__ import annotations

import pytest

from bench.faults import FAULTS, run_fault

FLEET_FAULTS = [name for name in FAULTS if name not in ("sigterm-autoscaler", "sigkill-autoscaler")]


@pytest.mark.parametrize("fault", FLEET_FAULTS)
def test_a_fault_in_the_fleet_loses_nothing_more_and_never_shrinks_or_freezes_it(fault):
    r = run_fault(fault)
    assert r.sent > 150, r
    assert r.lost <= r.allowed_loss and r.stuck == 0, r
    assert r.fleet_before >= 2 and r.fleet_min_in_burst >= r.fleet_before, r
    assert r.ticks_after >= 10 and r.healthy_after, r
    assert r.leftover == [], r


def test_sigterm_of_the_autoscaler_drains_every_request_in_flight():
    r = run_fault("sigterm-autoscaler")
    assert r.sent > 150 and r.lost == 0, r  # requests sent after it stopped are refused, not lost
    assert r.exit_code == 0 and r.drain_s is not None and r.drain_s <= 20 + 3, r  # drain_grace_s 20
    assert r.leftover == [], r


def test_sigkill_of_the_autoscaler_takes_its_replicas_and_a_restart_adopts_none():
    r = run_fault("sigkill-autoscaler")
    assert r.note == "orphans 5 s after the kill: 0", r
    assert r.lost <= r.allowed_loss, r  # in flight on the killed replicas (the restart's gap is refused)
    assert r.ticks_after >= 5 and r.healthy_after, r
    assert r.leftover == [], r
