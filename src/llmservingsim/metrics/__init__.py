"""Run metrics: per-request latencies, per-step statistics, the summary."""
