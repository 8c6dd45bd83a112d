"""Cluster admission control (``admission:``): which arriving requests the cluster serves.

Decided once per request, when it reaches the cluster's router (after the frontend's arrival
delay when a frontend is on), before routing; a refused request ends there with status
``rejected`` and a reason, so the client (closed loop: its next request) sees it at once.

* **Per-client queue cap** (``max_queue: {client: n}``): a client's arrival is refused when
  ``n`` of its requests already wait to start anywhere in the cluster (arrived, admitted,
  never scheduled yet). Checked first, so a refused request takes no bucket tokens.
* **Token bucket** (``token_bucket: {tokens_per_s, burst}``): one bucket for the whole cluster,
  counting prompt tokens as BLIS's token-bucket admission does (the cost of a request is its
  input length): it holds ``burst`` tokens at t = 0, refills continuously at ``tokens_per_s``
  up to ``burst``, and a request is admitted when the bucket holds at least its prompt
  tokens, which it then takes. Over any window of length w the admitted prompt tokens are at
  most ``burst + tokens_per_s · w``. A prompt longer than ``burst`` is never admitted.

The per-instance limits (``scheduler.max_queue``, ``scheduler.request_timeout_s``) apply after
this, at the instance the router picked.
"""

from __future__ import annotations

from llmservingsim.config import AdmissionConfig
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.sequence import Sequence, Status

TOKEN_BUCKET = "token_bucket"
MAX_QUEUE = "max_queue"


class Admission:
    """The cluster's admission decisions (engine.py asks :meth:`admit` for every arrival)."""

    def __init__(
        self, cfg: AdmissionConfig, client_names: list[str], metrics: MetricsCollector
    ) -> None:
        self.metrics = metrics
        self.client_names = client_names
        bucket = cfg.token_bucket
        self.rate = 0.0 if bucket is None else bucket.tokens_per_s
        self.burst = 0.0 if bucket is None else bucket.burst
        self.bucket = bucket is not None
        self.tokens = self.burst  # full at t = 0
        self.refilled_at = 0.0
        caps = cfg.max_queue or {}
        # Per client index: its cap (-1: none) and its requests admitted and maybe waiting.
        self.caps = [caps.get(name, -1) for name in client_names]
        self.queued: list[list[Sequence]] = [[] for _ in client_names]
        self.rejected = {TOKEN_BUCKET: 0, MAX_QUEUE: 0}
        self.rejected_by_client = [0] * len(client_names)

    def waiting(self, client: int) -> int:
        """Requests of ``client`` admitted here and not yet started (nor ended)."""
        queue = self.queued[client]
        queue[:] = [s for s in queue if s.admissions == 0 and s.status is Status.WAITING]
        return len(queue)

    def admit(self, seq: Sequence, now: float) -> bool:
        """Whether the cluster serves ``seq``, arriving at ``now``; a refused one is logged
        ``rejected`` with its reason."""
        spec = seq.spec
        client = spec.client
        cap = self.caps[client] if client >= 0 and self.caps else -1
        if cap >= 0 and len(self.queued[client]) >= cap and self.waiting(client) >= cap:
            name = self.client_names[client]
            return self._refuse(
                seq,
                now,
                MAX_QUEUE,
                f"admission.max_queue: {cap} requests of client {name} already waiting",
            )
        if self.bucket:
            tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate)
            self.refilled_at = now
            self.tokens = tokens
            if spec.input_len > tokens:
                return self._refuse(
                    seq,
                    now,
                    TOKEN_BUCKET,
                    f"admission.token_bucket: prompt of {spec.input_len} tokens, the bucket "
                    f"holds {tokens:.0f} of {self.burst:g}",
                )
            self.tokens = tokens - spec.input_len
        if cap >= 0:
            self.queued[client].append(seq)
        return True

    def _refuse(self, seq: Sequence, now: float, rule: str, reason: str) -> bool:
        self.rejected[rule] += 1
        if seq.spec.client >= 0:
            self.rejected_by_client[seq.spec.client] += 1
        seq.status = Status.FAILED
        self.metrics.on_drop(seq, -1, now, "rejected", reason, f"admission.{rule}")
        return False

    def summary(self) -> dict[str, object]:
        """summary.json ``admission``: rejections by rule and by client."""
        return {
            "rejected_token_bucket": self.rejected[TOKEN_BUCKET],
            "rejected_max_queue": self.rejected[MAX_QUEUE],
            "rejected_by_client": dict(
                zip(self.client_names, self.rejected_by_client, strict=True)
            ),
        }
