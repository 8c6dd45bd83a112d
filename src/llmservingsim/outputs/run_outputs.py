"""The files of one ``run``: sinks fed while the simulation runs, the rest written at its end.

Order matters to readers that watch the directory: summary.json is written first, then the
requests (and decisions) and timeseries tables are closed, then trace.json and report.html
(the slowest).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import Any

from llmservingsim import __version__
from llmservingsim.config import OutputsConfig, SimConfig
from llmservingsim.metrics.collector import MetricsCollector, RequestSink, StepSink
from llmservingsim.metrics.decisions import DecisionLog
from llmservingsim.metrics.timeseries import TimeSeries
from llmservingsim.outputs.files import write_summary
from llmservingsim.outputs.labels import instance_label
from llmservingsim.outputs.tables import (
    TIMESERIES_SCHEMA,
    DecisionTableSink,
    RequestLabels,
    RequestTableSink,
    write_table,
)
from llmservingsim.outputs.trace import TraceRecorder
from llmservingsim.preflight import check_kv_fits, check_run_cost
from llmservingsim.scenario import resolve
from llmservingsim.simulation import SimulationResult, load_requests, simulate
from llmservingsim.workload.request_spec import RequestSpec


class RunOutputs:
    def __init__(
        self,
        out_dir: Path,
        cfg: OutputsConfig,
        num_requests: int,
        metadata: dict[str, Any] | None = None,
        labels: RequestLabels | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.cfg = cfg
        # What produced the files (version, resolved config), stored in each of them.
        self.metadata = metadata
        self.requests = RequestTableSink(out_dir, cfg.format, metadata, labels)
        self.decisions = DecisionTableSink(out_dir, metadata) if cfg.decisions else None
        self.timeseries = TimeSeries(cfg.timeseries_max_rows, cfg.timeseries_bucket_s)
        self.trace = (
            TraceRecorder(
                num_requests, cfg.trace_request_every, cfg.trace_max_requests, cfg.trace_max_steps
            )
            if cfg.trace
            else None
        )

    def collector(self) -> MetricsCollector:
        """A metrics collector that feeds this run's files."""
        request_sinks: list[RequestSink] = [self.requests]
        step_sinks: list[StepSink] = [self.timeseries]
        if self.trace is not None:
            request_sinks.append(self.trace)
            step_sinks.append(self.trace)
        decisions = None if self.decisions is None else DecisionLog([self.decisions])
        return MetricsCollector(
            request_sinks=request_sinks, step_sinks=step_sinks, decisions=decisions
        )

    def abort(self) -> None:
        """The run failed: delete what the streaming tables wrote so far."""
        self.requests.abort()
        if self.decisions is not None:
            self.decisions.abort()

    def finish(self, result: SimulationResult) -> list[Path]:
        """Write every file; returns their paths in the order written."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = [write_summary(self.out_dir, result.summary)]
        result.metrics.flush()
        paths.append(self.requests.close())
        if self.decisions is not None:
            paths.append(self.decisions.close())
        paths.append(
            write_table(
                self.out_dir,
                "timeseries",
                TIMESERIES_SCHEMA,
                self.timeseries.columns(),
                self.cfg.format,
                self.metadata,
            )
        )
        if self.trace is not None:
            names = [instance_label(row) for row in result.summary["instances"]]
            paths.append(self.trace.write(self.out_dir / "trace.json", names, self.metadata))
        if self.cfg.report:
            # plotly is imported only when a report is written (start-up of --no-report runs)
            from llmservingsim.outputs.report import write_report

            paths.append(write_report(self.out_dir))
        return paths


def simulate_to_dir(
    cfg: SimConfig,
    out_dir: Path,
    requests: SequenceOf[RequestSpec] | None = None,
    progress: Callable[[float, int], None] | None = None,
    check_invariants: bool | None = None,
) -> tuple[SimulationResult, list[Path]]:
    """Run one simulation and write all its files to ``out_dir`` (what ``run`` does)."""
    check_run_cost(cfg)
    scenario = resolve(cfg)
    if requests is None:
        requests = load_requests(scenario)
    check_kv_fits(scenario, requests)
    metadata = {"version": __version__, "config": scenario.config.model_dump(mode="json")}
    labels = RequestLabels.of(requests)
    outputs = RunOutputs(out_dir, cfg.outputs, len(requests), metadata, labels)
    try:
        result = simulate(
            scenario,
            requests=requests,
            progress=progress,
            metrics=outputs.collector(),
            check_invariants=check_invariants,
        )
    except BaseException:
        outputs.abort()
        raise
    return result, outputs.finish(result)
