"""Pick the registry backend a config asks for (``registry.backend``): the file store, or PostgreSQL."""

from __future__ import annotations

from .config import ConfigError, ServerConfig
from .pgstore import PostgresStore
from .store import REGISTRY_FILE, FileStore, RegistryStore


def open_store(cfg: ServerConfig) -> RegistryStore:
    """The configured store (the file backend unless ``registry.backend: postgres``)."""
    spec = cfg.registry
    if spec.backend == "postgres":
        dsn = spec.resolved_dsn()
        if not dsn:
            raise ConfigError(f"{cfg.path}: registry: ${spec.dsn_env} is empty or unset and no 'dsn' is given")
        return PostgresStore(dsn, channel=spec.channel, connect_timeout_s=spec.connect_timeout_s)
    return FileStore(cfg.state_dir / REGISTRY_FILE)
