"""What the HTTP benchmarks (``bench/post_bench.py``, ``bench/read_bench.py``, the benchmark's
write-latency phase) share: a free loopback port, an app under uvicorn in this process, a
process of its own for the load generator, and a minimal keep-alive HTTP/1.1 client for it."""
from __future__ import annotations

import asyncio
import multiprocessing
import socket
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def load_process() -> Iterator[Callable[..., Awaitable[Any]]]:
    """A spawned process (and so a core) of its own for a load generator, for the block;
    yields ``run(fn, *args)``, which awaits ``fn(*args)`` (a picklable function) there."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        def run(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
            return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

        yield run


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed, as the services run (``api.common.serve``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` under uvicorn on a free loopback port in this event loop (its HTTP parser as
    the services use it: httptools when installed); yields its base URL."""
    import uvicorn

    from api.common import fast_server_options

    port = free_port()
    http = fast_server_options().get("http", "auto")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                       lifespan="on", server_header=False, http=http)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before starting")
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client: httpx's pool costs more CPU per request than the
    services themselves at high concurrency, which would make a benchmark measure the client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """(status, body) of one request; the connection is opened on first use and closed
        when the server says ``Connection: close``."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body is not None:
            head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None


def service_cpu_s(pid: int) -> float:
    """CPU seconds of a service started by ``service_processes``: its parent and every worker."""
    from bench.sysstats import descendants, proc_cpu

    return sum(proc_cpu(p) for p in descendants(pid))


@asynccontextmanager
async def service_processes(module: str, settings: Any, log_path: Any, workers: int,
                            pids: list[int] | None = None) -> AsyncIterator[str]:
    """``python -m <module> --workers N`` as a child process (as it runs in production), until
    ``/healthz`` is 200; yields its base URL and stops it (SIGTERM) afterwards. ``pids``, when
    given, gets the parent process's pid (its CPU with its workers': ``service_cpu_s``)."""
    from ops.faults.cluster import ServiceProcess

    service = ServiceProcess(module, settings, log_path, workers=workers).start()
    if pids is not None:
        pids.append(service.proc.pid)
    try:
        await service.wait_ready()
        yield service.url
    finally:
        await asyncio.to_thread(service.stop)
