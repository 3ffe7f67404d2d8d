"""The sidecar's configuration: one TOML file decoded with msgspec.

Every field has a default, so ``segmint serve`` runs with no file at all: it
listens on 127.0.0.1:50051 and defines the bundled example audiences.
See docs/operations.md for the reference.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import msgspec

from segmint.examples import EXAMPLE_AUDIENCES

DEFAULT_LISTEN = "127.0.0.1:50051"


class ConfigError(Exception):
    """The configuration is invalid (the message says where and why)."""


class AudienceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One audience defined at start-up."""

    key: str
    rule: str


class ComputedTraitConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One computed trait defined at start-up (before the audiences, which may
    read it as ``computed.KEY``)."""

    key: str
    expression: str


class EngineSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[engine]``: arguments of :class:`segmint.Engine`."""

    clock: Literal["wall", "manual"] = "wall"
    now: str | None = None
    granularity: str = "1s"
    future_skew: str = "5m"
    shards: int = 0
    threads: int = 0
    tick: str = "1s"
    dedup_window: str = "24h"
    change_log_capacity: int = 10_000_000


class StorageSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[storage]``: persistence. Without ``data_dir`` the engine is in memory
    only and a restart forgets everything."""

    data_dir: str | None = None
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval: str = "100ms"
    snapshot_interval: str = "5m"
    snapshot_log_mb: int = 256


class ServerSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[server]``: where and how the sidecar listens."""

    listen: str = DEFAULT_LISTEN
    token: str | None = None
    token_file: str | None = None
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    max_message_bytes: int = 64 * 1024 * 1024
    workers: int = 32
    grace_seconds: float = 10.0
    subscriber_page: int = 1000
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole file. ``examples`` loads the bundled example audiences when
    no ``[[audiences]]`` are given."""

    server: ServerSection = msgspec.field(default_factory=ServerSection)
    engine: EngineSection = msgspec.field(default_factory=EngineSection)
    storage: StorageSection = msgspec.field(default_factory=StorageSection)
    audiences: list[AudienceConfig] = msgspec.field(default_factory=list)
    computed_traits: list[ComputedTraitConfig] = msgspec.field(default_factory=list)
    examples: bool = True

    def startup_audiences(self) -> list[tuple[str, str]]:
        """The audiences to define at start-up, in order."""
        if self.audiences:
            return [(a.key, a.rule) for a in self.audiences]
        return list(EXAMPLE_AUDIENCES) if self.examples else []

    def resolved_token(self) -> str | None:
        """The bearer token: ``SEGMINT_TOKEN``, else ``token``, else the
        contents of ``token_file`` (stripped); ``None`` when none is set."""
        env = os.environ.get("SEGMINT_TOKEN")
        if env:
            return env
        if self.server.token:
            return self.server.token
        if self.server.token_file:
            try:
                text = Path(self.server.token_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"server.token_file: cannot read: {e}") from None
            return text or None
        return None


def load_config(path: str | Path | None) -> Config:
    """Reads and validates a config file; ``None`` gives the embedded defaults."""
    if path is None:
        config = Config()
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        try:
            config = msgspec.toml.decode(data, type=Config)
        except msgspec.DecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks values msgspec's types cannot express."""
    s = config.server
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"server.metrics_port {s.metrics_port} is not a port number")
    if s.max_message_bytes < 1024:
        raise ConfigError("server.max_message_bytes must be at least 1024")
    if s.workers < 2:
        raise ConfigError("server.workers must be at least 2")
    if s.subscriber_page < 1:
        raise ConfigError("server.subscriber_page must be at least 1")
    if s.grace_seconds < 0:
        raise ConfigError("server.grace_seconds must not be negative")
    if not is_loopback_host(s.metrics_host):
        raise ConfigError(f"server.metrics_host {s.metrics_host!r}: metrics are loopback-only")
    parse_listen(s.listen)
    if config.storage.snapshot_log_mb < 0:
        raise ConfigError("storage.snapshot_log_mb must not be negative")
    if config.engine.change_log_capacity < 1:
        raise ConfigError("engine.change_log_capacity must be at least 1")


def parse_listen(listen: str) -> tuple[str, bool]:
    """The gRPC address for ``listen`` and whether it is local (loopback or a
    unix socket). ``unix:///path`` and ``unix:path`` are unix sockets."""
    if listen.startswith("unix:"):
        return listen, True
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"listen {listen!r}: expected HOST:PORT (e.g. 127.0.0.1:50051) or unix:///path"
        )
    return listen, is_loopback_host(host.strip("[]"))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = [
    "DEFAULT_LISTEN",
    "AudienceConfig",
    "Config",
    "ConfigError",
    "EngineSection",
    "ServerSection",
    "StorageSection",
    "load_config",
    "parse_listen",
]
