"""Built-in catalogs: models (HF config.json files) and devices (YAML), shipped as package data.

A config value is either a catalog name (``llama-3.1-8b``) or a path to a file of the same
shape, so users can bring any Hugging Face config.json (or the model folder holding it) or
their own device YAML.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.device import DeviceSpec, load_device_file
from llmservingsim.model.spec import ModelSpec, load_hf_config_file
from llmservingsim.registry import unknown_name_message


def _data_dir(kind: str) -> Path:
    return Path(str(resources.files("llmservingsim") / "data" / kind))


def _names(kind: str, suffix: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted(_data_dir(kind).glob(f"*{suffix}"))}


def model_names() -> list[str]:
    return sorted(_names("models", ".json"))


def model_path(name: str) -> Path:
    """The config.json of a catalog model."""
    catalog = _names("models", ".json")
    if name not in catalog:
        raise ConfigError("model: " + unknown_name_message("model", name, catalog))
    return catalog[name]


def device_names() -> list[str]:
    return sorted(_names("hardware", ".yaml"))


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".json", ".yaml", ".yml"))


@cache
def load_model(value: str) -> ModelSpec:
    catalog = _names("models", ".json")
    if value in catalog:
        return load_hf_config_file(catalog[value], name=value)
    path = Path(value)
    try:
        is_dir = path.is_dir()
    except OSError:  # a name no file system takes (too long): not a folder
        is_dir = False
    if is_dir:
        # A downloaded model folder (what `huggingface-cli download` writes): its config.json.
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"model: folder {value!r} has no config.json")
        return load_hf_config_file(config, name=path.resolve().name)
    if _looks_like_path(value):
        if not path.is_file():
            raise ConfigError(f"model: file {value!r} not found")
        name = path.parent.name if path.name == "config.json" else path.stem
        return load_hf_config_file(path, name=name)
    raise ConfigError("model: " + unknown_name_message("model", value, catalog))


@cache
def load_device(value: str) -> DeviceSpec:
    catalog = _names("hardware", ".yaml")
    if value in catalog:
        return load_device_file(catalog[value])
    if _looks_like_path(value):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"hardware: file {value!r} not found")
        return load_device_file(path)
    raise ConfigError("hardware: " + unknown_name_message("hardware", value, catalog))
