"""A local stand-in for raw.githubusercontent.com: an HTTP server on 127.0.0.1 (ephemeral port) over a folder laid
out as {repo}/{commit}/{path}, with HTTP Range support and switches to cut a response short or ignore Range."""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import datasets as ds
from common import synthetic


@dataclass
class Served:
    """What the server did, for the tests to assert on."""

    requests: list = field(default_factory=list)  # (method, path, Range header or None, body bytes sent)
    cut: dict = field(default_factory=dict)  # url path -> body bytes to send before hanging up (once)
    ignore_range: bool = False  # answer every Range request with the whole file (200)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mirror/1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        served: Served = self.server.served
        root: Path = self.server.root
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        f = root / path.lstrip("/")
        if not f.is_file():
            served.requests.append((self.command, path, rng, 0))
            self.send_error(404)
            return
        data = f.read_bytes()
        start = 0
        if rng and not served.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(data):
                served.requests.append((self.command, path, rng, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        chunk = data[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        keep = served.cut.pop(path, None) if body else None
        sent = chunk[:keep] if keep is not None else chunk  # a cut promises the whole body, sends part, hangs up
        # Recorded before answering: once the answer is out the client may return and the test read the log.
        served.requests.append((self.command, path, rng, len(sent) if body else 0))
        self.end_headers()
        if not body:
            return
        self.wfile.write(sent)
        self.wfile.flush()
        if keep is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a cut connection fails its final flush: expected, keep quiet
        pass


class Mirror:
    """`with Mirror(root) as m:` serves `root` at `m.url` until the block ends."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.served = Served()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.root = self.root
        self._server.served = self.served
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def url_path(self, entry: ds.DataFile) -> str:
        return f"/{entry.repo}/{entry.commit}/{entry.upstream_path}"

    def gets(self, entry: ds.DataFile) -> list[tuple]:
        """The GET requests this server answered for `entry`."""
        return [r for r in self.served.requests if r[0] == "GET" and r[1] == self.url_path(entry)]


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was bound once, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def build_mirror(root: Path, files: dict[str, bytes], repo: str = "o/r", commit: str = "c" * 40) -> list[ds.DataFile]:
    """Lay `files` (data-directory name -> content) out under root as {repo}/{commit}/up/{name} and return manifest
    entries for them, each carrying the sha256 of its content."""
    entries = []
    for name, content in files.items():
        e = ds.DataFile(name, hashlib.sha256(content).hexdigest(), "MIT", repo=repo, commit=commit, upstream_path=f"up/{name}")
        p = root / e.repo / e.commit / e.upstream_path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        entries.append(e)
    return entries


def add_smartmoe(root: Path, trace, spec: ds.ConvertedTrace) -> None:
    """The raw logs of `trace` where `spec` fetches them from."""
    synthetic.write_smartmoe_raw_logs(trace, root / spec.repo / spec.commit / spec.raw_dir)
