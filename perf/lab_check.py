"""Checks perf/lab.sh makes before a scenario that curl cannot express.

Usage:
  python lab_check.py pipeline HOST:PORT N   N hello requests in one write: N
                                             responses, in order ("N responses")
  python lab_check.py close HOST:PORT        a request with Connection: close:
                                             answered, then the server closes
                                             ("closed")
Prints the result above on success, else what went wrong, and exits 1.
Standard library only.
"""

import socket
import sys
import time


def close(hostport):
    host, port = hostport.rsplit(":", 1)
    request = b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % hostport.encode()
    try:
        sock = socket.create_connection((host, int(port)), timeout=2)
        sock.sendall(request)
    except OSError as e:
        print("could not send: %s" % e)
        return 1
    data = b""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except OSError as e:  # a reset after the response still closes it
            if b"Hello, World!" in data:
                print("closed")
                return 0
            print("error before the response: %s" % e)
            return 1
        if not chunk:
            if b"Hello, World!" in data:
                print("closed")
                return 0
            print("closed without a complete response: %r" % data[:100])
            return 1
        data += chunk
    sock.close()
    if b"Hello, World!" in data:
        print("answered, but kept the connection open after a request with Connection: close")
    else:
        print("no response within 3 s: %r" % data[:100])
    return 1


def pipeline(hostport, n):
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


def main():
    mode = sys.argv[1]
    if mode == "pipeline":
        return pipeline(sys.argv[2], int(sys.argv[3]))
    if mode == "close":
        return close(sys.argv[2])
    print("unknown check %r" % mode)
    return 2


if __name__ == "__main__":
    sys.exit(main())
