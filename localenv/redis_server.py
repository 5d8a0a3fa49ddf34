"""Redis as a local server, from the Debian package: a cache, nothing persisted."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import ClassVar

from localenv.host import require_binary
from localenv.service import Service
from ops import schema


@dataclass
class Redis(Service):
    name: ClassVar[str] = "redis"
    start_timeout: ClassVar[float] = 30.0

    @property
    def host(self) -> str:
        return schema.redis_address(self.settings)[0]

    @property
    def port(self) -> int:
        return schema.redis_address(self.settings)[1]

    @property
    def marker(self) -> str:
        return str(self.state / "redis")

    def check(self, timeout: float) -> None:
        import redis

        client = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    def prepare(self) -> None:
        require_binary("redis-server", "redis-server")
        (self.state / "redis").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", self.host, "--protected-mode", "yes",
            "--dir", str(self.state / "redis"), "--daemonize", "no", "--logfile", "",
            "--set-proc-title", "no",  # keep --dir in the command line: our_pid() checks it
            "--save", "", "--appendonly", "no",  # a cache: nothing to persist
        ]
