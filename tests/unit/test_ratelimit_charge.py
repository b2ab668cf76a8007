"""The slow-start rounds that learn a server's token charge, against a simulated server (no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runner.ratelimit.charge import (
    LEARN_REQUESTS,
    MAX_ROUNDS,
    SLOW_START,
    SPREAD,
    ChargeLearner,
    Snapshot,
)


class Server:
    """An OpenAI-style token bucket on a fake clock: charges ``ratio`` x our estimate up front."""

    def __init__(self, limit: int, ratio: float) -> None:
        self.limit, self.ratio = limit, ratio
        self.rate = limit / 60
        self.used = 0.0
        self.now = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.used = max(0.0, self.used - self.rate * seconds)

    def charge(self, estimate: float) -> None:
        self.used += self.ratio * estimate

    def snapshot(self, lag: float = 0.0) -> Snapshot:
        remaining = int(self.limit - self.used)  # the header rounds remaining down
        return Snapshot(self.now, self.limit - remaining, self.rate, lag)


def play_round(
    learner: ChargeLearner, server: Server, estimates: list[float], late: float = 0.0
) -> list[int]:
    """Send as many of ``estimates`` as the round admits; answer them; return what went.

    ``late``: the last answer reaches us that long after the server wrote its headers."""
    went, sent_at = [], server.now
    for index, estimate in enumerate(estimates):
        if not learner.may_admit():
            break
        learner.admit()
        learner.sent(server.now, estimate)
        server.advance(0.001)  # on the wire
        server.charge(estimate)
        went.append(index)
    server.advance(0.05)  # the model answers
    for number, index in enumerate(went, 1):
        server.advance(0.001)
        snapshot = server.snapshot()
        if number == len(went) and late:
            server.advance(late)
            snapshot = replace(snapshot, time=server.now, lag=server.now - sent_at)
        learner.finished(estimates[index], sent=True, charged=True, snapshot=snapshot)
    return went


def test_rounds_double_until_the_servers_charge_per_estimated_token_is_learned() -> None:
    server, learner = Server(limit=60_000, ratio=1.1), ChargeLearner()
    sizes = []
    while learner.learning:
        assert learner.factor() == SLOW_START  # conservative until learned
        sizes.append(len(play_round(learner, server, [130.0, 90.0, 170.0] * 20)))
    # Round 0 anchors; 2 + 4 + 8 measured requests are enough.
    assert sizes == [1, 2, 4, 8] and 2 + 4 < LEARN_REQUESTS <= 2 + 4 + 8
    assert learner.ratio == pytest.approx(1.1, rel=0.01)
    assert learner.factor() == pytest.approx(learner.ratio * (1 + SPREAD))
    assert learner.may_admit() and not learner.learning  # no more rounds


def test_answers_read_late_make_the_ratio_err_high_never_low() -> None:
    # Each round's last answer (the next round's anchor) is read 0.2 s after the server
    # wrote it: on our clock the server seems to have drained less before the next round.
    server, learner = Server(limit=60_000, ratio=1.1), ChargeLearner()
    while learner.learning:
        play_round(learner, server, [130.0] * 20, late=0.2)
    assert learner.ratio is not None and 1.1 <= learner.ratio < 1.1 * 1.5


def test_a_round_waits_for_all_its_answers_before_the_next_starts() -> None:
    server, learner = Server(limit=60_000, ratio=1.0), ChargeLearner()
    play_round(learner, server, [100.0])
    learner.admit()
    learner.sent(server.now, 100.0)
    learner.admit()
    learner.sent(server.now, 100.0)
    assert not learner.may_admit()  # round 1 holds two
    assert not learner.finished(100.0, sent=True, charged=True, snapshot=server.snapshot())
    assert not learner.may_admit()  # one still in flight: its delta would be unreadable
    assert learner.finished(100.0, sent=True, charged=True, snapshot=server.snapshot())
    assert learner.may_admit()


def test_a_round_that_finds_the_servers_bucket_full_again_measures_nothing() -> None:
    # The server refills 10 tokens a round trip faster than one 5-token request uses them.
    server, learner = Server(limit=60 * 200, ratio=1.0), ChargeLearner()
    for _ in range(3):
        play_round(learner, server, [5.0])
        server.advance(1.0)  # our requests come rarely
    assert learner.learning and learner.ratio is None
    assert learner.rounds == 3


def test_refused_requests_are_not_counted_as_charged() -> None:
    server, learner = Server(limit=60_000, ratio=1.2), ChargeLearner()
    play_round(learner, server, [100.0])
    while learner.learning:
        learner.admit()
        learner.sent(server.now, 500.0)  # the server refuses this one: charges nothing
        went = play_round(learner, server, [100.0] * 16)
        learner.finished(500.0, sent=True, charged=False, snapshot=server.snapshot())
        assert went
    assert learner.ratio == pytest.approx(1.2, rel=0.01)


def test_no_token_headers_or_no_measurement_ends_the_slow_start() -> None:
    learner = ChargeLearner()
    learner.stop()  # answered without x-ratelimit-remaining-tokens
    assert not learner.learning and learner.may_admit() and learner.factor() == 1.0
    # A server whose bucket our traffic never dents: give up after MAX_ROUNDS.
    server, patient = Server(limit=60 * 10_000, ratio=1.0), ChargeLearner()
    while patient.learning:
        play_round(patient, server, [1.0])
        server.advance(1.0)
    assert patient.rounds == MAX_ROUNDS and patient.factor() == 1.0


def test_without_a_known_token_limit_the_first_requests_go_together() -> None:
    server, learner = Server(limit=60_000, ratio=1.1), ChargeLearner(gating=False)
    assert len(play_round(learner, server, [100.0] * 6)) == 6  # nothing known: no gate
    learner.admit()
    learner.sent(server.now, 100.0)
    server.charge(100.0)
    learner.reported()  # the first answer has token headers: that round takes no more
    assert not learner.may_admit()
    learner.finished(100.0, sent=True, charged=True, snapshot=server.snapshot())
    sizes = []
    while learner.learning:
        sizes.append(len(play_round(learner, server, [100.0] * 20)))
    assert sizes == [2, 4, 8]  # that last answer anchors the rounds
    assert learner.ratio == pytest.approx(1.1, rel=0.01)
