"""A steady keep-alive load for lifecycle tests: clients that send one request after
another on persistent connections and record, for every request, when it was sent and
what came back, so a test can count the requests sent before an event that failed.

Each client reconnects when a response says `Connection: close` (a worker that stops
answers its last request so) and after a failure. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass


@dataclass
class Result:
    sent: float          # time.monotonic() just before the request was written
    ok: bool             # a complete response with the expected status
    detail: str          # the body on success, the error otherwise


class Load:
    def __init__(self, port: int, path: str = "/", clients: int = 4, host: str = "127.0.0.1",
                 timeout: float = 15.0, status: int = 200):
        self.port, self.path, self.host = port, path, host
        self.timeout, self.status = timeout, status
        self.results: list[Result] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"{len(alive)} load clients still running after {timeout} s"

    def _record(self, result: Result) -> None:
        with self._lock:
            self.results.append(result)
            self._lock.notify_all()

    def _client(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            sent = time.monotonic()
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                ok = resp.status == self.status
                self._record(Result(sent, ok, body if ok else f"status {resp.status}: {body[:200]}"))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._record(Result(sent, False, repr(exc)))
                conn.close()
                conn = None
                # The server may be gone for good (after SIGTERM): do not spin.
                self._stop.wait(0.01)
        if conn is not None:
            conn.close()

    def wait_for_ok(self, n: int, timeout: float = 15.0) -> None:
        """Until at least `n` requests in all succeeded."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(r.ok for r in self.results) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {sum(r.ok for r in self.results)} of {n} requests succeeded in {timeout} s: {self.summary()}"
                self._lock.wait(left)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def failed_sent_before(self, when: float) -> list[Result]:
        return [r for r in self.snapshot() if r.sent < when and not r.ok]

    def sent_before(self, when: float) -> int:
        return sum(1 for r in self.snapshot() if r.sent < when)

    def failures(self) -> list[Result]:
        return [r for r in self.snapshot() if not r.ok]

    def bodies(self) -> set[str]:
        return {r.detail for r in self.snapshot() if r.ok}

    def summary(self) -> str:
        results = self.snapshot()
        failed = [r for r in results if not r.ok]
        return f"{len(results)} requests, {len(failed)} failed; first failures: {[r.detail for r in failed[:5]]}"
