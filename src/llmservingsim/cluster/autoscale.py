"""Autoscaling of a cluster's instances (``cluster.autoscale``).

All ``max_instances`` instances are built (and their memory planned) before the run; the first
``initial`` take requests from t = 0, the others are off. Every ``interval_s`` the engine asks
:meth:`Autoscaler.evaluate`, which reads the metric over the instances taking requests and,
outside the cooldown after its last decision, wants

    desired = ceil(provisioned × metric / target), clamped to [min_instances, max_instances]

instances (Kubernetes' Horizontal Pod Autoscaler rule; ``provisioned`` counts the instances
taking requests and those starting). ``ceil`` gives the hysteresis: one more instance as soon
as the metric is above target, one fewer only once the others would stay at or below it.

Scaling up first resumes instances being drained (still loaded: they take requests at once),
then starts instances that are off, lowest index first: billed from the decision, taking
requests ``scale_up_s`` later. Scaling down first cancels instances still starting, then
drains those with the fewest outstanding requests (ties: the highest index): a draining
instance gets no new request, finishes the ones it has and is released (no longer billed) when
the last has left. Routers only ever see the instances taking requests.

An instance released and started again keeps the prefix cache it had when released (its
weights are loaded again: ``scale_up_s``; a cold cache is not modelled).

Every decision and state change is a :class:`ScaleEvent` in :attr:`Autoscaler.events`
(summary.json ``scale_events``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from llmservingsim.cluster.cluster import Cluster
from llmservingsim.config import AutoscaleConfig
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.serving.instance import Instance

Action = Literal["start", "ready", "drain", "resume", "cancel", "release"]
State = Literal["off", "starting", "active", "draining"]

_ROUNDING = 1e-9
"""ceil(n × value / target) forgives this much float error (3 × 0.1 / 0.1 is not 3)."""


@dataclass(frozen=True)
class ScaleEvent:
    """One autoscaling event. ``start``/``drain``/``resume``/``cancel`` are decisions and carry
    the metric value that led to them; ``ready`` (the instance takes requests) and ``release``
    (a drained instance is no longer billed) follow from earlier decisions."""

    time_s: float
    action: Action
    instance: int
    metric: str
    value: float | None
    target: float
    routable: int  # instances taking requests after the event
    provisioned: int  # instances billed after the event

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_s": self.time_s,
            "action": self.action,
            "instance": self.instance,
            "metric": self.metric,
            "value": self.value,
            "target": self.target,
            "routable": self.routable,
            "provisioned": self.provisioned,
        }


def load_time_s(weight_bytes_per_device: float, host_bandwidth_bytes_s: float) -> float:
    """Default ``scale_up_s``: every device of the instance loads its shard of the weights
    from host memory over its own host link, in parallel."""
    return weight_bytes_per_device / host_bandwidth_bytes_s


class Autoscaler:
    """Drives the instances' states for the engine (engine.Scaler)."""

    def __init__(
        self,
        cfg: AutoscaleConfig,
        cluster: Cluster,
        initial: int,
        scale_up_s: float,
        metrics: MetricsCollector | None = None,
    ) -> None:
        """``metrics``: its decision log (``outputs.decisions``) gets a ``scale`` row per
        decision."""
        self.cfg = cfg
        self.metrics = metrics
        self.interval_s = cfg.interval_s
        self.reads_kv_usage = cfg.metric == "kv"
        self.scale_up_s = scale_up_s
        self.cluster = cluster
        self.instances = cluster.instances
        count = len(self.instances)
        on: list[State] = ["active"] * initial
        off: list[State] = ["off"] * (count - initial)
        self.states = on + off
        self._since = [0.0] * count  # when each provisioned instance was started
        self._ready_at = [0.0] * count  # when each starting instance takes requests
        self._provisioned_s = [0.0] * count  # closed provisioned intervals
        self.events: list[ScaleEvent] = []
        self._last_decision = -math.inf
        if initial < count:
            for instance in self.instances[initial:]:
                instance.routable = False
            self._reroute()

    # ------------------------------------------------------------------ engine calls

    def evaluate(self, now: float) -> list[tuple[int, float]]:
        value = self._measure(now)
        for instance in self.instances:  # emptied without a step end (e.g. timed out)
            if instance.draining:
                self.release_if_drained(instance, now)
        if now - self._last_decision < self.cfg.cooldown_s:
            return []
        current = self._count("active", "starting")
        wanted = math.ceil(current * value / self.cfg.target - _ROUNDING)
        desired = min(self.cfg.max_instances, max(self.cfg.min_instances, wanted))
        if desired == current:
            return []
        self._last_decision = now
        if desired > current:
            return self._scale_up(desired - current, now, value)
        self._scale_down(current - desired, now, value)
        return []

    def ready(self, index: int, now: float) -> None:
        if self.states[index] != "starting" or self._ready_at[index] != now:
            return  # cancelled (maybe started again since: a later READY is queued)
        self.states[index] = "active"
        self.instances[index].routable = True
        self._reroute()
        self._event(now, "ready", index, None)

    def release_if_drained(self, instance: Instance, now: float) -> None:
        if instance.num_outstanding or instance.busy:
            return
        instance.draining = False
        self._stop(instance.index, now, "release", None)

    def finish(self, end_time: float) -> list[float]:
        """Seconds each instance was provisioned (billed) in a run that ended at ``end_time``."""
        return [
            billed + (end_time - since if state != "off" else 0.0)
            for billed, since, state in zip(
                self._provisioned_s, self._since, self.states, strict=True
            )
        ]

    # ------------------------------------------------------------------ decisions

    def _scale_up(self, count: int, now: float, value: float) -> list[tuple[int, float]]:
        started: list[tuple[int, float]] = []
        for index, state in enumerate(self.states):
            if count and state == "draining":
                instance = self.instances[index]
                instance.draining = False
                instance.routable = True
                self.states[index] = "active"
                count -= 1
                self._reroute()
                self._event(now, "resume", index, value)
        for index, state in enumerate(self.states):
            if count and state == "off":
                self.states[index] = "starting"
                self._since[index] = now
                self._ready_at[index] = ready = now + self.scale_up_s
                count -= 1
                started.append((index, ready))
                self._event(now, "start", index, value)
        return started

    def _scale_down(self, count: int, now: float, value: float) -> None:
        for index in reversed(range(len(self.states))):
            if count and self.states[index] == "starting":
                count -= 1
                self._stop(index, now, "cancel", value)
        active = [inst for inst in self.instances if self.states[inst.index] == "active"]
        active.sort(key=lambda inst: (inst.num_outstanding, -inst.index))
        for instance in active[:count]:
            self.states[instance.index] = "draining"
            instance.routable = False
            instance.draining = True
            self._reroute()
            self._event(now, "drain", instance.index, value)
            self.release_if_drained(instance, now)

    def _stop(self, index: int, now: float, action: Action, value: float | None) -> None:
        self._provisioned_s[index] += now - self._since[index]
        self.states[index] = "off"
        self._event(now, action, index, value)

    # ------------------------------------------------------------------ metric

    def _measure(self, now: float) -> float:
        """The metric over the instances taking requests (ttft: over every instance)."""
        metric = self.cfg.metric
        routable = [inst for inst in self.instances if inst.routable]
        if metric == "queue":
            return sum(inst.num_waiting for inst in routable) / len(routable)
        if metric == "kv":
            used = [1.0 - inst.num_free_blocks / inst.num_blocks for inst in routable]
            return sum(used) / len(used)
        # ttft: first tokens of the interval, and the requests still waiting for theirs
        tokens = sum(inst.first_tokens for inst in self.instances)
        total = sum(inst.ttft_sum for inst in self.instances)
        for instance in self.instances:
            instance.first_tokens = 0
            instance.ttft_sum = 0.0
        oldest = now
        for instance in self.instances:
            for ve in instance.virtual_engines:
                for seq in ve.scheduler.waiting:
                    if seq.first_token_time < 0 and seq.spec.arrival_s < oldest:
                        oldest = seq.spec.arrival_s
        return max(total / tokens if tokens else 0.0, now - oldest)

    # ------------------------------------------------------------------ bookkeeping

    def _count(self, *states: State) -> int:
        return sum(state in states for state in self.states)

    def _reroute(self) -> None:
        self.cluster.route_to([inst for inst in self.instances if inst.routable])

    def _event(self, now: float, action: Action, index: int, value: float | None) -> None:
        if value is not None and self.metrics is not None:  # a decision (not ready/release)
            metric, target = self.cfg.metric, self.cfg.target
            self.metrics.decide(
                "scale",
                now,
                instance=index,
                policy=f"autoscale.{metric}",
                candidates=(index,),
                scores=(value,),
                chosen=index,
                outcome=action,
                reason=f"{metric} {value:.4g} against target {target:g}",
            )
        self.events.append(
            ScaleEvent(
                now,
                action,
                index,
                self.cfg.metric,
                value,
                self.cfg.target,
                self._count("active"),
                self._count("active", "starting", "draining"),
            )
        )
