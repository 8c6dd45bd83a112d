"""Capacity planning: for each candidate deployment, the most traffic it serves within the SLOs
(``--max-rate``) or the fewest resources that serve a target rate (``--target-rate``).

Both searches assume more load never helps latency and more resources never hurt it, and
bisect on that. The rate search replays one request stream: a synthetic workload draws its
arrival gaps from their own seeded generator at unit rate and divides them by the rate
(workload/arrival.py), so every probe serves the same requests, only closer together or
further apart, and the SLO boundary is not blurred by resampling noise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llmservingsim.catalog import load_device
from llmservingsim.config import SimConfig
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.sweep.executors import Executor
from llmservingsim.sweep.grid import Assignment, Axis
from llmservingsim.sweep.pareto import pareto_front
from llmservingsim.sweep.rows import Row, Scalar, simulate_row
from llmservingsim.sweep.scenario import Scenario, check_runnable, resolved_value
from llmservingsim.sweep.slo import Slo, slo_violations

RATE_KEY = "workload.arrival.rate"
Evaluator = Callable[[SimConfig], dict[str, Scalar]]
Status = Literal["ok", "does_not_fit", "slo_unreachable"]


@dataclass(frozen=True)
class PlanSettings:
    slos: tuple[Slo, ...]
    target_rate: float | None = None
    """None: find each candidate's max rate. Otherwise evaluate (or minimize) at this rate."""
    minimize: str | None = None
    minimize_values: tuple[int, ...] = ()
    rate_tolerance: float = 0.05
    """Stop bisecting when the passing and failing rates are within this fraction."""
    max_rate_steps: int = 12
    """Doublings (or halvings) of the config's rate tried to bracket the max rate."""

    @property
    def mode(self) -> str:
        return "max_rate" if self.target_rate is None else "target_rate"


@dataclass(frozen=True)
class CandidateTask:
    """Everything a worker process needs to search one candidate."""

    scenario: Scenario
    assignments: tuple[Assignment, ...]
    settings: PlanSettings
    evaluate: Evaluator = simulate_row


@dataclass
class Probe:
    config: SimConfig
    metrics: dict[str, Scalar] | None
    missed: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.metrics is not None

    @property
    def ok(self) -> bool:
        return self.fits and not self.missed


class _Prober:
    def __init__(self, task: CandidateTask) -> None:
        self.task = task
        self.simulations = 0

    def __call__(self, *extra: Assignment) -> Probe:
        cfg = self.task.scenario.config([*self.task.assignments, *extra])
        self.simulations += 1
        try:
            metrics = self.task.evaluate(cfg)
        except DoesNotFitError as exc:
            return Probe(cfg, None, [str(exc)])
        return Probe(cfg, metrics, slo_violations(metrics, self.task.settings.slos))


@dataclass
class Found:
    status: Status
    probe: Probe
    note: str = ""


def _failure(probe: Probe) -> Found:
    status: Status = "slo_unreachable" if probe.fits else "does_not_fit"
    return Found(status, probe, "; ".join(probe.missed))


def find_max_rate(probe: _Prober, base_rate: float, settings: PlanSettings) -> Found:
    """Bracket the SLO boundary by doubling or halving the config's rate, then bisect
    (geometrically: rates span orders of magnitude) to within ``rate_tolerance``."""
    first = probe((RATE_KEY, base_rate))
    if not first.fits:
        return _failure(first)
    passing: Probe | None = first if first.ok else None
    failing: Probe | None = None if first.ok else first
    for _ in range(settings.max_rate_steps):
        if passing is not None and failing is not None:
            break
        if passing is not None:
            trial = probe((RATE_KEY, _rate(passing) * 2))
        else:
            assert failing is not None
            trial = probe((RATE_KEY, _rate(failing) / 2))
            if not trial.ok and _at_floor(failing, trial, settings.slos):
                failing = trial
                break
        if trial.ok:
            passing = trial
        else:
            failing = trial
    if passing is None:
        assert failing is not None
        found = _failure(failing)
        found.note = f"SLOs missed even at {_rate(failing):.3g} req/s: {found.note}"
        return found
    if failing is None:
        return Found(
            "ok",
            passing,
            f"SLOs still met at {_rate(passing):.3g} req/s, the search cap: more requests "
            "(workload.num_requests) may be needed to load the system",
        )
    while _rate(failing) > _rate(passing) * (1 + settings.rate_tolerance):
        trial = probe((RATE_KEY, math.sqrt(_rate(passing) * _rate(failing))))
        if trial.ok:
            passing = trial
        else:
            failing = trial
    return Found("ok", passing)


def find_min_value(probe: _Prober, key: str, values: Sequence[int], rate: float) -> Found:
    """Smallest value of ``key`` meeting the SLOs at ``rate``, by bisection over the sorted
    values; the largest is tried first so a hopeless candidate costs one simulation."""
    best = probe((key, values[-1]), (RATE_KEY, rate))
    if not best.ok:
        return _failure(best)
    low, high = -1, len(values) - 1  # values[low] fails (virtually for -1), values[high] passes
    while high - low > 1:
        mid = (low + high) // 2
        trial = probe((key, values[mid]), (RATE_KEY, rate))
        if trial.ok:
            high, best = mid, trial
        else:
            low = mid
    return Found("ok", best)


def _rate(p: Probe) -> float:
    return rate_of(p.config)


def _at_floor(before: Probe, after: Probe, slos: Sequence[Slo]) -> bool:
    """Halving the rate improved no missed latency by 1 % or more: the misses are the
    latency of requests served alone (a TPOT floor, say), which no lower rate removes."""
    for slo in slos:
        old = (before.metrics or {}).get(slo.column)
        new = (after.metrics or {}).get(slo.column)
        if not isinstance(old, int | float) or not isinstance(new, int | float):
            return False
        if new > slo.limit_s and new < 0.99 * old:
            return False
    return True


def devices_and_cost(cfg: SimConfig) -> tuple[int, float]:
    """Devices one candidate occupies (Σ over pools of instances × tensor × pipeline shards ×
    attention DP ranks)
    and their price per hour from each pool's device YAML."""
    devices = 0
    per_hour = 0.0
    for pool in cfg.cluster.resolved_pools(cfg.hardware):
        count = pool.count * pool.tensor_parallel * pool.pipeline_parallel * pool.data_parallel
        devices += count
        per_hour += count * load_device(pool.hardware or cfg.hardware).cost_per_hour_usd
    return devices, per_hour


def search_candidate(task: CandidateTask) -> Row:
    """One plan.parquet row: the candidate, what the search found, the metrics there, cost."""
    settings = task.settings
    probe = _Prober(task)
    if settings.target_rate is None:
        base = task.scenario.config(task.assignments).workload.arrival.rate
        found = find_max_rate(probe, base, settings)
    elif settings.minimize is not None:
        found = find_min_value(
            probe, settings.minimize, settings.minimize_values, settings.target_rate
        )
    else:
        single = probe((RATE_KEY, settings.target_rate))
        found = Found("ok", single) if single.ok else _failure(single)
    cfg = found.probe.config
    keys = [key for key, _ in task.assignments]
    if settings.minimize is not None:
        keys.append(settings.minimize)
    row: Row = {key: resolved_value(cfg, key) for key in keys}
    row.update(status=found.status, mode=settings.mode, simulations=probe.simulations)
    row["rate_req_s"] = rate_of(cfg) if found.status == "ok" else None
    devices, per_hour = devices_and_cost(cfg)
    row.update(num_devices=devices, cost_per_hour_usd=per_hour)
    metrics = found.probe.metrics if found.status == "ok" else None
    row["usd_per_million_output_tokens"] = _usd_per_million(per_hour, rate_of(cfg), metrics)
    row.update(metrics or {})
    row["note"] = found.note or (transient_note(metrics, cfg) if metrics else "")
    return row


def transient_note(metrics: dict[str, Scalar], cfg: SimConfig) -> str:
    """Warn when the run is mostly ramp-up and drain rather than steady state.

    By Little's law about rate × mean E2E requests are in flight; roughly that many at the
    start and at the end see a partly empty system, so with fewer than 4× as many requests
    in the run, less than half of it is steady state and the SLO check is too lenient.
    """
    e2e = metrics.get("e2e_s_mean")
    total = metrics.get("requests_total")
    if not isinstance(e2e, float) or not isinstance(total, int):
        return ""
    in_flight = rate_of(cfg) * e2e
    if total >= 4 * in_flight:
        return ""
    return (
        f"mostly transient: {total} requests for ~{in_flight:.0f} in flight; "
        f"raise workload.num_requests to >= {math.ceil(4 * in_flight)}"
    )


def rate_of(cfg: SimConfig) -> float:
    return cfg.workload.arrival.rate


def _usd_per_million(
    per_hour: float, rate: float, metrics: dict[str, Scalar] | None
) -> float | None:
    """$ per million output tokens in steady state at ``rate``.

    A deployment that meets its SLOs keeps up with the traffic, so it emits rate × mean output
    length tokens per second. The measured ``output_tokens_per_s`` of a finite run is lower
    (its window includes ramp-up and the drain of the last requests) and would overstate cost.
    """
    if metrics is None:
        return None
    tokens, done = metrics.get("output_tokens"), metrics.get("requests_completed")
    if not isinstance(tokens, int | float) or not isinstance(done, int) or done <= 0:
        return None
    tokens_per_s = rate * tokens / done
    return per_hour / (tokens_per_s * 3600.0) * 1e6 if tokens_per_s > 0 else None


# ----------------------------------------------------------------------------- the whole plan


@dataclass
class PlanResult:
    rows: list[Row]
    keys: list[str]
    """The search keys (leading columns of every row)."""
    cost_column: str
    latency_column: str

    def metadata(self) -> dict[str, Any]:
        """Stored with plan.parquet, so a report can redraw the plan from the file alone."""
        return {
            "keys": self.keys,
            "cost_column": self.cost_column,
            "latency_column": self.latency_column,
        }


def plan_settings(
    slos: tuple[Slo, ...],
    axes: Sequence[Axis],
    target_rate: float | None,
    minimize: str | None,
    rate_tolerance: float = 0.05,
) -> tuple[PlanSettings, list[Axis]]:
    """Split the search axes into enumerated candidates and the minimized key (if any)."""
    if not 0 < rate_tolerance < 1:
        raise ConfigError(f"--rate-tolerance must be in (0, 1) (got {rate_tolerance:g})")
    if target_rate is None:
        if minimize is not None:
            raise ConfigError("--minimize needs --target-rate (with --max-rate every value runs)")
        return PlanSettings(slos, rate_tolerance=rate_tolerance), list(axes)
    if not 0 < target_rate < math.inf:
        raise ConfigError(f"--target-rate must be a finite rate > 0 req/s (got {target_rate:g})")
    if minimize is None:
        ranges = [a.key for a in axes if a.is_range]
        if len(ranges) > 1:
            raise ConfigError(
                f"--target-rate: several range keys ({', '.join(ranges)}); "
                "name the one to minimize with --minimize"
            )
        minimize = ranges[0] if ranges else None
    if minimize is None:
        return PlanSettings(slos, target_rate, rate_tolerance=rate_tolerance), list(axes)
    chosen = [a for a in axes if a.key == minimize]
    if not chosen:
        raise ConfigError(f"--minimize {minimize}: not one of the --search keys")
    values = chosen[0].values
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"--minimize {minimize}: its --search values must be integers")
    ordered = tuple(sorted(set(values)))
    rest = [a for a in axes if a.key != minimize]
    return PlanSettings(slos, target_rate, minimize, ordered, rate_tolerance), rest


def plan_tasks(
    scenario: Scenario,
    axes: Sequence[Axis],
    settings: PlanSettings,
    evaluate: Evaluator = simulate_row,
) -> list[CandidateTask]:
    """One task per candidate, each config checked before any search starts."""
    keys = [a.key for a in axes]
    tasks: list[CandidateTask] = []
    for values in itertools.product(*(a.values for a in axes)):
        assignments = tuple(zip(keys, values, strict=True))
        probe_at: list[Assignment] = list(assignments)
        if settings.minimize is not None:
            probe_at.append((settings.minimize, settings.minimize_values[-1]))
        if settings.target_rate is not None:
            probe_at.append((RATE_KEY, settings.target_rate))
        cfg = scenario.config(probe_at)
        _check_rate_knob(cfg, settings)
        check_runnable(cfg)
        tasks.append(CandidateTask(scenario, assignments, settings, evaluate))
    return tasks


def _check_rate_knob(cfg: SimConfig, settings: PlanSettings) -> None:
    if cfg.workload.kind != "synthetic":
        raise ConfigError(
            "plan: workload.kind 'trace' is not yet supported (the search varies "
            "workload.arrival.rate of a synthetic workload)"
        )
    clients = cfg.workload.clients or []
    if cfg.workload.stages is not None or any(c.rate is not None for c in clients):
        raise ConfigError(
            "plan: workload.stages and client rates are not yet supported (the search varies "
            "workload.arrival.rate, which they replace; give clients shares)"
        )
    if settings.target_rate is None and math.isinf(cfg.workload.arrival.rate):
        raise ConfigError("plan --max-rate: workload.arrival.rate must be finite to start from")


def run_plan(
    tasks: Sequence[CandidateTask],
    executor: Executor,
    on_row: Callable[[Row], None] | None = None,
) -> PlanResult:
    """Search every candidate and mark the Pareto front of cost vs the first SLO's latency.

    Cost is $ per million output tokens at the max rate (candidates serve different rates),
    or $ per hour at a target rate (they all serve the same traffic).
    """
    rows: list[Row] = []
    for row in executor.imap_unordered(search_candidate, tasks):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    settings = tasks[0].settings if tasks else PlanSettings(())
    keys = [key for key, _ in tasks[0].assignments] if tasks else []
    if settings.minimize is not None:
        keys.append(settings.minimize)
    cost = "usd_per_million_output_tokens" if settings.target_rate is None else "cost_per_hour_usd"
    latency = settings.slos[0].column if settings.slos else "e2e_s_p99"
    mark_pareto(rows, cost, latency)
    rows.sort(key=lambda r: (not r["pareto"], r["status"] != "ok", _sort_cost(r, cost)))
    return PlanResult(rows, keys, cost, latency)


def _sort_cost(row: Row, column: str) -> float:
    value = row.get(column)
    return float(value) if isinstance(value, int | float) else math.inf


def mark_pareto(rows: list[Row], cost: str, latency: str) -> None:
    feasible = [
        i
        for i, r in enumerate(rows)
        if r["status"] == "ok" and _is_number(r.get(cost)) and _is_number(r.get(latency))
    ]
    front = pareto_front([(float(rows[i][cost]), float(rows[i][latency])) for i in feasible])
    on_front = {feasible[j] for j in front}
    for i, row in enumerate(rows):
        row["pareto"] = i in on_front


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
