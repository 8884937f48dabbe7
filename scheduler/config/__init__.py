"""Configuration: the targets.yaml schema and its loader."""

from scheduler.config.loader import ConfigError, LoadedConfig, load_config
from scheduler.config.schema import Config

__all__ = ["Config", "ConfigError", "LoadedConfig", "load_config"]
