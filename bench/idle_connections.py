#!/usr/bin/env python3
"""Memory per idle SMTP connection.

Usage: bench/idle_connections.py [N] [BINARY]     (N=10000, BINARY=target/release/outpost)

Starts `outpost serve` on 127.0.0.1:14025 (a relay listener, delivery paused, the
per-IP limit raised above N), opens N connections from this process, reads each
greeting, says EHLO on each, and reports the server's resident memory before and
after: (after - before) / N is the memory one idle session costs. Needs an open-file
limit above N for both processes (`ulimit -n`). Loopback only; every wait is bounded.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

PORT = 14025


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_listening(deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("outpost did not listen")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/outpost"
    work = tempfile.mkdtemp(prefix="outpost-idle-")
    config = os.path.join(work, "outpost.toml")
    with open(config, "w") as f:
        f.write(
            f'hostname = "relay.idle.test"\ndata_dir = "{work}/data"\n'
            f'[[listeners]]\naddr = "127.0.0.1:{PORT}"\nmode = "relay"\n'
            '[http]\naddr = "127.0.0.1:0"\n'
            f"[limits]\nmax_connections_per_ip = {n + 100}\nmax_connections = {n + 100}\n"
            "[delivery]\npaused = true\n"
        )
    env = dict(os.environ, RUST_LOG="warn")
    server = subprocess.Popen([binary, "--config", config, "serve"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    socks = []
    try:
        wait_listening(time.monotonic() + 30)
        time.sleep(0.5)  # let start-up allocations settle before the baseline
        before = rss_kb(server.pid)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
            socks.append(s)
        for s in socks:
            if not s.recv(512).startswith(b"220"):
                raise RuntimeError("no greeting")
        for s in socks:
            s.sendall(b"EHLO idle.test\r\n")
        for s in socks:
            reply = b""
            while b"\r\n250 " not in reply and not reply.startswith(b"250 "):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("connection closed")
                reply += chunk
        after = rss_kb(server.pid)
        print(f"{n} idle connections after EHLO: RSS {before} kB -> {after} kB, "
              f"{(after - before) / n:.1f} kB per connection")
    finally:
        for s in socks:
            s.close()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
