"""Run the router app with uvicorn on 127.0.0.1: in the caller's event loop (the entry point) or in a thread
of its own (tests, the benchmark)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time


class RouterServer:
    """uvicorn serving `app` on host:port (port 0: a free one, read back after start)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"router host {host!r}: the router listens on the loopback interface only")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30))
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve(self) -> None:
        """Serve until `should_exit` is set (uvicorn's own signal handling is left to the caller)."""
        await self.server.serve(sockets=[self.sock])

    def start_in_thread(self, timeout_s: float = 60.0) -> RouterServer:
        def main():
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

        self.server.install_signal_handlers = lambda: None  # only the main thread may; the caller owns Ctrl-C
        self.thread = threading.Thread(target=main, name="router", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("router did not start")
            time.sleep(0.02)
        return self

    def run(self, coro, timeout_s: float | None = None):
        """Run `coro` in the router's loop (from another thread) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.sock.close()
