"""Engine presets: what a user of vLLM, vLLM 0.6, SGLang or TensorRT-LLM gets by default.

``engine: NAME[@VERSION]`` in a config is resolved once, when the config is loaded: the preset's
settings (data/engines/NAME.yaml; docs/engines.md lists their sources) fill every key the user
did not set, then the config is validated as usual. Keys the user set always win. A preset
holds:

* ``defaults``: config keys (scheduler policy, budgets, block size, custom all-reduce, ...);
* ``kernel_tables``: the engine whose measured kernel tables ``perf.backend: kernel_db`` reads
  (``perf.kernel_db.engine``), nearest to the preset's version (``perf.kernel_db.nearest_to``);
* ``device_rules`` / ``model_rules``: budgets that depend on the device's memory or name, or
  on the model's context (the first rule whose conditions hold applies);
* per version, ``frontend_fit``: the frontend parameters fitted for that version
  (data/engines/fits/NAME.yaml, written by scripts/fit_frontend.py).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llmservingsim.errors import ConfigError
from llmservingsim.registry import unknown_name_message

_DEFAULT_HARDWARE = "h100-sxm"
_DEFAULT_MODEL = "llama-3.1-8b"
_MAX_OF_CONTEXT = re.compile(r"^max\(model_context, (\d+)\)$")


def _engines_dir() -> Path:
    return Path(str(resources.files("llmservingsim") / "data" / "engines"))


def engine_names() -> list[str]:
    return sorted(p.stem for p in _engines_dir().glob("*.yaml"))


@cache
def load_preset(name: str) -> dict[str, Any]:
    path = _engines_dir() / f"{name}.yaml"
    if name not in engine_names():
        raise ConfigError("engine: " + unknown_name_message("engine", name, engine_names()))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@cache
def load_frontend_fits(name: str) -> dict[str, Any]:
    """The fitted frontend parameters of engine ``name`` by version ({} when none)."""
    path = _engines_dir() / "fits" / f"{name}.yaml"
    if not path.is_file():
        return {}
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    versions: dict[str, Any] = data.get("versions", {})
    return versions


def parse_engine(value: object) -> tuple[str, str]:
    """``vllm@0.19`` → ('vllm', '0.19'); no version → the preset's default version. An unknown
    engine or version is a ConfigError naming what is available."""
    if isinstance(value, dict):
        raise ConfigError(
            f"engine: expected an engine name ({', '.join(engine_names())}, optionally "
            "@version), got a section; the simulator's own settings moved to simulator:"
        )
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"engine: expected one of {', '.join(engine_names())} (optionally @version), "
            f"got {value!r}"
        )
    name, _, version = value.strip().partition("@")
    preset = load_preset(name)
    versions = [str(v) for v in preset["versions"]]
    if not version:
        return name, str(preset["default_version"])
    if version not in versions:
        other = f"{name}-{version}"
        also = f"; engine {other!r} is a preset of its own" if other in engine_names() else ""
        raise ConfigError(
            f"engine: {name} " + unknown_name_message("version", version, versions) + also
        )
    return name, version


def _rule_applies(rule: dict[str, Any], memory_gib: float, device: str, context: int) -> bool:
    if "min_memory_gib" in rule and memory_gib < rule["min_memory_gib"]:
        return False
    if "max_memory_gib" in rule and memory_gib >= rule["max_memory_gib"]:
        return False
    if "name_excludes" in rule and rule["name_excludes"] in device.lower():
        return False
    return not ("min_context" in rule and context < rule["min_context"])


def _first_rule(rules: list[dict[str, Any]], memory_gib: float, device: str, context: int) -> Any:
    for rule in rules:
        if _rule_applies(rule, memory_gib, device, context):
            return {k: v for k, v in rule.items() if isinstance(v, dict)}
    return {}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base`` (nested dicts merged; ``top`` wins at every leaf)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _has_path(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def preset_defaults(
    name: str, version: str, hardware: str, model: str, max_model_len: int | None
) -> dict[str, Any]:
    """The config keys the preset sets for this device and model."""
    from llmservingsim.catalog import load_device, load_model

    preset = load_preset(name)
    device = load_device(hardware)
    context = max_model_len or load_model(model).max_context
    out = copy.deepcopy(preset.get("defaults", {}))
    memory = device.memory_gib
    out = _deep_merge(out, _first_rule(preset.get("device_rules", []), memory, device.name, 0))
    out = _deep_merge(out, _first_rule(preset.get("model_rules", []), memory, "", context))
    scheduler = out.get("scheduler", {})
    budget = scheduler.get("max_num_batched_tokens")
    if isinstance(budget, str):
        match = _MAX_OF_CONTEXT.match(budget)
        if match is None:  # a preset file error, not a user error
            raise ValueError(f"engine preset {name}: cannot read budget {budget!r}")
        scheduler["max_num_batched_tokens"] = max(context, int(match.group(1)))
    tables = preset.get("kernel_tables")
    if tables is not None:  # perf.backend kernel_db: this engine's tables, nearest this version
        kernel_db = {"engine": tables, "nearest_to": version}
        out = _deep_merge({"perf": {"kernel_db": kernel_db}}, out)
    fit_version = preset["versions"].get(version, {}).get("frontend_fit")
    if fit_version is not None:
        fit = load_frontend_fits(name).get(str(fit_version))
        if fit is not None:  # (absent only while scripts/fit_frontend.py has not written it)
            out["frontend"] = {"enabled": True, **fit["params"]}
    return dict(out)


def apply_preset(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw config with the preset's defaults under it (the user's keys win), and the
    record summary.json keeps: engine, version, the keys the preset set, those it did not
    because the user had set them."""
    try:
        name, version = parse_engine(raw.get("engine"))
        defaults = preset_defaults(
            name,
            version,
            str(raw.get("hardware", _DEFAULT_HARDWARE)),
            str(raw.get("model", _DEFAULT_MODEL)),
            raw.get("max_model_len") if isinstance(raw.get("max_model_len"), int) else None,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if _has_path(raw, "perf.kernel_db.engine"):  # another engine's tables: not this version
        defaults.get("perf", {}).get("kernel_db", {}).pop("nearest_to", None)
    merged = _deep_merge(defaults, raw)
    merged["engine"] = f"{name}@{version}"
    leaves = _leaves(defaults)
    applied = {key: value for key, value in leaves.items() if not _has_path(raw, key)}
    kept = sorted(key for key in leaves if _has_path(raw, key))
    preset = load_preset(name)
    record = {
        "engine": name,
        "version": version,
        "title": preset.get("title", name),
        "applied": applied,
        "user_overrides": kept,
        "notes": [preset["frontend_note"]] if "frontend_note" in preset else [],
        "sources": list(preset.get("sources", [])),
    }
    return merged, record
