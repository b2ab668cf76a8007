"""What the server charges a request against its tokens-per-minute limit, learned from its headers.

OpenAI-style servers charge a request's prompt, counted by their own tokenizer, plus
``max_tokens`` x ``n`` up front, and do not refund what the completion did not use. The
worker estimates with tiktoken, which can be ~10 % below that; an estimate that is low
for every request in flight is what overruns the server's budget when it first runs out.
``ChargeLearner`` measures the server's charge from ``x-ratelimit-remaining-tokens``
and learns ``ratio`` = charged / estimated (a ratio of sums), which scales every later
estimate.

A delta of the server's remaining tokens is only attributable when nothing else of ours
is in flight, so learning goes in rounds (a slow start): round 0 is one request, whose
response is the anchor; round r sends up to 2**r requests and waits until all of them
are answered. Without a configured token limit nothing is known before the first
answer, so the first requests go out together as usual; the first token headers close
that round to new requests, and its last answer is the anchor. The server's used
tokens at a round's end, minus its used tokens at the anchor drained until the round's
first send, plus the drain during the round, is what it charged for the round. The
drain is read on our clock (first send to last answer), off the server's by network
delays; the anchor's lag (its request's round trip) x the refill rate is added, so the
ratio errs high, never low: a high ratio only holds back requests in flight, as the
headers bring the bucket down to what the server counts. A round that ends with the
server's bucket full again (it refilled faster than we spent) shows nothing, and the
next one doubles. After
``LEARN_REQUESTS`` measured requests the ratio is known and rounds stop. Until then the
bucket is charged ``SLOW_START`` x the estimate, so rounds fit the budget even if the
server counts up to twice as much; once learned, the ratio plus ``SPREAD``. Traffic of
other clients on the same key during a round counts as ours and makes the ratio too
high (safe, but slower); rounds are short, at the start.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOW_START = 2.0  # charge while learning: the server may count up to twice our estimate
LEARN_REQUESTS = 8  # measured requests before the ratio is trusted
MAX_ROUNDS = 10  # rounds without a measurement before giving up (the limit never binds)
RATIO_BOUNDS = (0.5, 4.0)  # a ratio outside is noise (e.g. another client), not a tokenizer
# The ratio is an average; single requests in flight may cost a little more, and a round's
# drain is read on our clock. Charging a little above it costs no throughput: the headers
# lower the bucket to what the server counts, so the surplus only ever sits on requests
# still in flight.
SPREAD = 0.03


@dataclass(frozen=True)
class Snapshot:
    """The server's view of its token bucket in one response, stamped with our clock."""

    time: float
    used: float  # limit - remaining: tokens the server counts as spent
    rate: float  # tokens the server gives back per second (limit / 60)
    lag: float = 0.0  # its request's round trip: the snapshot is at most this old


@dataclass
class _Round:
    size: int | None  # requests it admits; None: all (not gating yet)
    admitted: int = 0  # requests let through in this round
    open: int = 0  # of those, not answered yet
    first_send: float | None = None
    estimated: float = 0.0  # our estimates of the requests the server charged
    requests: int = 0
    last: Snapshot | None = None  # the latest snapshot of this round's responses
    closed_early: bool = False  # the requests before the first token headers


class ChargeLearner:
    """Pure bookkeeping of the slow-start rounds and the learned ratio (no I/O, no clock)."""

    def __init__(self, *, gating: bool = True) -> None:
        """``gating``: hold requests in rounds from the first one (a token limit is known)."""
        self.ratio: float | None = None
        self.active = True  # False once learned or when the server sends no token headers
        self.rounds = 0
        self._round = _Round(size=1 if gating else None)
        self._anchor: Snapshot | None = None
        self._charged = 0.0
        self._estimated = 0.0
        self._requests = 0

    @property
    def learning(self) -> bool:
        return self.active and self.ratio is None

    def factor(self) -> float:
        """What to multiply an estimate by before charging the bucket."""
        if self.ratio is not None:
            return self.ratio * (1 + SPREAD)
        return SLOW_START if self.active else 1.0

    def may_admit(self) -> bool:
        size = self._round.size
        return not self.learning or size is None or self._round.admitted < size

    def reported(self) -> None:
        """The server reports its tokens: from now on, rounds (the open one takes no more)."""
        if self.learning and self._round.size is None:
            self._round.size = self._round.admitted
            self._round.closed_early = True

    def admit(self) -> None:
        if self.learning:
            self._round.admitted += 1
            self._round.open += 1

    def sent(self, now: float, estimate: float) -> None:
        """An admitted request went out, estimated at ``estimate`` tokens (before any factor)."""
        if self.learning:
            if self._round.first_send is None:
                self._round.first_send = now
            self._round.estimated += estimate
            self._round.requests += 1

    def finished(
        self, estimate: float, *, sent: bool, charged: bool, snapshot: Snapshot | None
    ) -> bool:
        """An admitted request is done; True if that closed a round (waiters may go on).

        ``charged`` is False when the server refused it (429) and so did not count it.
        """
        if not self.learning:
            return False
        rnd = self._round
        if sent and not charged:
            rnd.estimated -= estimate
            rnd.requests -= 1
        if snapshot is not None and (rnd.last is None or snapshot.time >= rnd.last.time):
            rnd.last = snapshot
        rnd.open -= 1
        if rnd.open > 0:
            return False
        self._close(rnd)
        return True

    def stop(self) -> None:
        """The server does not report its tokens: nothing to learn, no rounds to wait for."""
        self.active = False

    def _close(self, rnd: _Round) -> None:
        self.rounds += rnd.size is not None  # requests before any token headers: no round
        charged = self.measure(self._anchor, rnd)
        if charged is not None:
            self._charged += charged
            self._estimated += rnd.estimated
            self._requests += rnd.requests
            if self._requests >= LEARN_REQUESTS and self._estimated > 0:
                low, high = RATIO_BOUNDS
                self.ratio = min(max(self._charged / self._estimated, low), high)
        # A round's last snapshot has nothing of ours in flight: the next round's anchor.
        self._anchor = rnd.last if rnd.first_send is not None else self._anchor
        if rnd.size is None or rnd.first_send is None:
            size = rnd.size  # not gating yet, or nothing went: the same again
        else:
            size = 2 if rnd.closed_early else 2 * rnd.size
        self._round = _Round(size=size)
        if self.ratio is None and self.rounds >= MAX_ROUNDS:
            self.active = False

    @staticmethod
    def measure(anchor: Snapshot | None, rnd: _Round) -> float | None:
        """Tokens the server charged for ``rnd`` since ``anchor``; None if not measurable."""
        end = rnd.last
        if anchor is None or end is None or rnd.first_send is None or rnd.requests <= 0:
            return None
        if end.used <= 1:  # the server's bucket is (nearly) full again: no delta to read
            return None
        start = max(0.0, anchor.used - anchor.rate * (rnd.first_send - anchor.time))
        charged = end.used - start + end.rate * max(0.0, end.time - rnd.first_send)
        # The anchor may be up to its lag older than our clock says: the server drained
        # that much more before the round, which we would take for a smaller charge.
        return charged + anchor.rate * anchor.lag
