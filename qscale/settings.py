"""Process-wide settings: environment variables `QSCALE_*` over a YAML file over defaults.

    QSCALE_LOG_LEVEL=debug qscale ...
    QSCALE_CONFIG_FILE=qscale.yaml qscale ...     # or --config on commands that take one

Nested fields use `__`, e.g. `QSCALE_SIMULATION__SLO_TTFT_S=1.5`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from policies.errors import UserError

CONFIG_FILE_ENV = "QSCALE_CONFIG_FILE"
_config_file: ContextVar[str | None] = ContextVar("qscale_config_file", default=None)


class SimulationSettings(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    slo_ttft_s: float = Field(2.0, gt=0, le=86_400)
    tick_s: float = Field(2.0, ge=0.1, le=3600)  # the autoscaler's control period
    gpu_hour_price: float = Field(2.5, ge=0, le=1e6)


class QscaleSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QSCALE_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    simulation: SimulationSettings = SimulationSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def _check_file(path: Path) -> None:
    """A settings file must exist, be UTF-8 YAML, and hold a mapping (or nothing)."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> QscaleSettings:
    """Load settings; any problem becomes a one-line `UserError`."""
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = os.environ[CONFIG_FILE_ENV]
    if config_file is not None:
        _check_file(Path(config_file))
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return QscaleSettings(**overrides)
    except ValidationError as exc:
        from policies.registry import format_validation_error

        raise UserError(f"invalid settings: {format_validation_error(exc)}") from None
    finally:
        _config_file.reset(token)
