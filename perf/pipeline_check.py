"""Checks a server answers N pipelined requests (sent in one write) in order.

Usage: python pipeline_check.py HOST:PORT N
Prints "N responses" on success, else what went wrong; exits 1 on failure.
Standard library only; used by perf/lab.sh before the pipelined scenario.
"""

import socket
import sys
import time


def main():
    hostport, n = sys.argv[1], int(sys.argv[2])
    host, port = hostport.rsplit(":", 1)
    request = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % hostport.encode()
    try:
        sock = socket.create_connection((host, int(port)), timeout=3)
        sock.sendall(request * n)
    except OSError as e:
        print("could not send: %s" % e)
        return 1
    deadline = time.monotonic() + 3
    data = b""
    seen = 0
    # Count complete responses: each hello response is a head (ending in a
    # blank line) with Content-Length, then that many bytes.
    while seen < n and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                break
            head = data[:end].decode("latin-1")
            length = None
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                print("a response without Content-Length: %r" % head[:200])
                return 1
            if len(data) < end + 4 + length:
                break
            body = data[end + 4 : end + 4 + length]
            if not head.startswith("HTTP/1.1 200") or body != b"Hello, World!":
                print("response %d: %r %r" % (seen + 1, head[:100], body[:50]))
                return 1
            seen += 1
            data = data[end + 4 + length :]
    sock.close()
    if seen != n:
        print("%d of %d responses before the connection closed or 3 s passed" % (seen, n))
        return 1
    print("%d responses" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
