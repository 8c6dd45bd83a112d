"""Perf-backend plugins through the ``llmservingsim.perf_backends`` entry-point group.

The example package examples/plugin_backend is made importable the way an installed wheel
is: its source folder on sys.path plus a ``*.dist-info`` folder whose entry_points.txt is
generated from the example's own pyproject.toml (so a wrong declaration there fails here).
This needs no network and no build step in a fresh clone; when the example is already
installed (pip install -e examples/plugin_backend) the installed copy is used.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends import ENTRY_POINT_GROUP, PERF_BACKENDS
from llmservingsim.simulation import simulate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin_backend"
SMALL = ["model=llama-3.2-1b", "workload.num_requests=20"]


def _fake_install(
    site: Path, monkeypatch: pytest.MonkeyPatch, name: str, eps: dict[str, str]
) -> None:
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in eps.items())
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if any(ep.name == "speed_of_light" for ep in entry_points(group=ENTRY_POINT_GROUP)):
        return  # installed for real
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    eps = project["entry-points"][ENTRY_POINT_GROUP]
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    _fake_install(tmp_path / "site", monkeypatch, project["name"], eps)


def test_example_plugin_is_listed_loaded_and_used(example_plugin: None) -> None:
    assert "speed_of_light" in PERF_BACKENDS.names()
    listed = CliRunner().invoke(app, ["catalog", "backends"])
    assert "speed_of_light" in listed.output
    ideal = simulate(load_config(None, [*SMALL, "perf.backend=speed_of_light"])).summary
    slower = simulate(
        load_config(None, [*SMALL, "perf.backend=speed_of_light", "perf.options={efficiency: 0.5}"])
    ).summary
    real = simulate(load_config(None, SMALL)).summary
    # Datasheet peaks bound every calibrated kernel time from below; half the peaks, slower.
    assert ideal["tpot_s"]["mean"] < real["tpot_s"]["mean"]
    assert slower["tpot_s"]["mean"] > ideal["tpot_s"]["mean"]


def test_broken_plugin_fails_only_when_selected_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "explodes_on_import.py").write_text("raise RuntimeError('CUDA toolkit not found')\n")
    _fake_install(
        site,
        monkeypatch,
        "broken-plugins",
        {
            "missing_module": "no_such_module_for_llmss:Backend",
            "exploding": "explodes_on_import:Backend",
        },
    )
    assert {"missing_module", "exploding"} <= set(PERF_BACKENDS.names())
    simulate(load_config(None, SMALL))  # other backends are unaffected
    with pytest.raises(ConfigError, match=r"plugin entry point 'missing_module = .*ModuleNotFound"):
        PERF_BACKENDS.get("missing_module")
    result = CliRunner().invoke(
        app, ["run", "--set", "perf.backend=exploding", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "broken-plugins" in result.output and "CUDA toolkit not found" in result.output
    assert "Traceback" not in result.output


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown perf backend 'rooflin'.*'roofline'"):
        PERF_BACKENDS.get("rooflin")
