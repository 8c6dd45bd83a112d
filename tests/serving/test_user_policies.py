"""A user's scheduler and router, one Python file named in ``plugins:``, run in the engine that is
installed (compiled where it was built) and keep every invariant (the suite checks them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error
from llmservingsim.build_info import engine_build
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

ROOT = Path(__file__).resolve().parents[2]
POLICIES = str(ROOT / "examples" / "policies" / "my_policies.py")


def run(*overrides: str, specs: list[RequestSpec] | None = None) -> dict[str, object]:
    cfg = load_config(None, [f"plugins=[{POLICIES}]", "model=llama-3.2-1b", *overrides])
    return simulate(cfg, requests=specs).summary


def test_a_user_scheduler_runs_in_the_installed_engine_and_orders_by_prompt_length() -> None:
    # One instance, a batch of one: requests that queue behind the first are served
    # shortest prompt first, not in arrival order.
    specs = [RequestSpec(0, 0.0, 64, 50)]
    specs += [RequestSpec(i, 0.001 * i, 1000 - 100 * i, 4) for i in range(1, 6)]
    sched = ["scheduler.policy=shortest_prompt_first", "scheduler.max_num_seqs=1"]
    cfg = load_config(None, [f"plugins=[{POLICIES}]", "model=llama-3.2-1b", *sched])
    result = simulate(cfg, requests=specs)
    assert result.summary["engine_build"] == engine_build()
    assert result.summary["requests_completed"] == 6
    first_token = {r.id: r.first_token_s for r in result.metrics.records}
    later = sorted(range(1, 6), key=lambda i: first_token[i])
    assert later == [5, 4, 3, 2, 1]  # prompts 500, 600, ..., 900 tokens
    fifo = simulate(
        load_config(None, ["model=llama-3.2-1b", "scheduler.max_num_seqs=1"]), requests=specs
    )
    fifo_first = {r.id: r.first_token_s for r in fifo.metrics.records}
    assert sorted(range(1, 6), key=lambda i: fifo_first[i]) == [1, 2, 3, 4, 5]


def test_a_user_router_runs_and_spreads_the_waiting_requests() -> None:
    summary = run(
        "cluster.instances=4",
        "cluster.router=least_waiting",
        "workload.num_requests=400",
        "workload.arrival.rate=200",
    )
    assert summary["requests_completed"] == 400
    instances = summary["instances"]
    assert isinstance(instances, list)
    assert all(row["requests_completed"] > 0 for row in instances)


def test_the_example_config_runs() -> None:
    cfg = load_config(ROOT / "examples" / "custom_policies.yaml", ["workload.num_requests=200"])
    summary = simulate(cfg).summary
    assert summary["requests_completed"] == 200


def test_a_missing_or_broken_plugin_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        run(f"plugins=[{tmp_path / 'nope.py'}]")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="failed to load: RuntimeError: boom"):
        run(f"plugins=[{broken}]")
    with pytest.raises(ConfigError, match="failed to load"):
        run("plugins=[no_such_module_anywhere]")
    assert_one_line_error([f"plugins=[{broken}]"], "failed to load", tmp_path / "out")


@pytest.fixture(scope="module")
def whole_batch_plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A plugin policy not built on VllmScheduler (a copy of static batching)."""
    path = tmp_path_factory.mktemp("plugins") / "whole_batches.py"
    path.write_text(
        "from llmservingsim.serving.schedulers.base import SCHEDULERS\n"
        "from llmservingsim.serving.schedulers.static import StaticScheduler\n\n\n"
        "class WholeBatches(StaticScheduler):\n"
        "    pass\n\n\n"
        'SCHEDULERS.register("whole_batches")(WholeBatches)\n'
    )
    return str(path)


@pytest.mark.parametrize("value", ["true", "false"])
def test_enable_chunked_prefill_is_refused_for_a_policy_that_ignores_it(
    whole_batch_plugin: str, value: str, tmp_path: Path
) -> None:
    """Only the schedulers built on VllmScheduler read scheduler.enable_chunked_prefill; a
    plugin policy of another base would silently ignore it: one error line instead."""
    sets = [f"plugins=[{whole_batch_plugin}]", "scheduler.policy=whole_batches"]
    cfg = load_config(
        None, ["model=llama-3.2-1b", *sets, f"scheduler.enable_chunked_prefill={value}"]
    )
    with pytest.raises(ConfigError, match="not built on VllmScheduler"):
        simulate(cfg, requests=[RequestSpec(0, 0.0, 64, 4)])
    assert_one_line_error(
        [*sets, f"scheduler.enable_chunked_prefill={value}"],
        "scheduler.enable_chunked_prefill",
        tmp_path,
    )
    # Left unset, the plugin runs; a plugin built on VllmScheduler honours the setting.
    plain = load_config(None, ["model=llama-3.2-1b", *sets])
    assert simulate(plain, requests=[RequestSpec(0, 0.0, 64, 4)]).summary["requests_completed"] == 1
    assert (
        run(
            "scheduler.policy=shortest_prompt_first",
            f"scheduler.enable_chunked_prefill={value}",
            specs=[RequestSpec(0, 0.0, 64, 4)],
        )["requests_completed"]
        == 1
    )


@pytest.mark.parametrize(
    ("module", "base", "policy"),
    [
        ("static", "StaticScheduler", "static"),
        ("orca", "OrcaScheduler", "orca"),
        ("no_evict", "NoEvictScheduler", "no_evict"),
        ("priority", "PriorityScheduler", "priority"),
    ],
)
def test_a_plugin_may_subclass_every_built_in_policy(
    module: str, base: str, policy: str, tmp_path: Path
) -> None:
    """The compiled built-in policies admit interpreted subclasses: a user's file that extends
    one runs in the installed engine (a compiled class without that flag raises TypeError)."""
    path = tmp_path / f"my_{policy}.py"
    path.write_text(
        "from llmservingsim.serving.schedulers.base import SCHEDULERS\n"
        f"from llmservingsim.serving.schedulers.{module} import {base}\n\n\n"
        f"class Mine({base}):\n"
        "    pass\n\n\n"
        f'SCHEDULERS.register("my_{policy}")(Mine)\n'
    )
    cfg = load_config(
        None, [f"plugins=[{path}]", "model=llama-3.2-1b", f"scheduler.policy=my_{policy}"]
    )
    specs = [RequestSpec(i, 0.01 * i, 64, 4) for i in range(4)]
    assert simulate(cfg, requests=specs).summary["requests_completed"] == 4


def test_a_plugin_extending_a_compiled_class_that_refuses_subclasses_is_one_error_line(
    tmp_path: Path,
) -> None:
    """Where the engine is compiled, a router that does not admit Python subclasses makes a
    user's subclass fail at construction: a one-line error naming the key, not a TypeError."""
    path = tmp_path / "my_router.py"
    path.write_text(
        "from llmservingsim.cluster.routers import ROUTERS, RoundRobinRouter\n\n\n"
        "class Mine(RoundRobinRouter):\n"
        "    pass\n\n\n"
        'ROUTERS.register("my_round_robin")(Mine)\n'
    )
    sets = [f"plugins=[{path}]", "cluster.router=my_round_robin"]
    cfg = load_config(None, ["model=llama-3.2-1b", *sets])
    specs = [RequestSpec(0, 0.0, 64, 4)]
    if engine_build() == "compiled":
        with pytest.raises(
            ConfigError, match=r"cluster\.router: 'my_round_robin' extends a compiled"
        ):
            simulate(cfg, requests=specs)
        assert_one_line_error(sets, "cluster.router", tmp_path)
    else:  # interpreted: any class may be extended
        assert simulate(cfg, requests=specs).summary["requests_completed"] == 1
