#!/usr/bin/env python3
"""Property-based test of Outpost's HTTP API with schemathesis, driven by the
OpenAPI document the server generates (GET /v1/openapi.json).

Usage:
    python3 tests/e2e/api_schemathesis.py [PATH_TO_OUTPOST]

The binary is PATH_TO_OUTPOST, else $OUTPOST_BIN, else target/debug/outpost.
Needs schemathesis (`pip install schemathesis==3.39.16`; .ci/run installs it).
Everything runs on 127.0.0.1 with ephemeral ports in a temporary directory.

What it checks:
  - /healthz answers and /v1/openapi.json is an OpenAPI document with our paths;
  - schemathesis, with a bounded number of examples per operation and valid
    credentials, finds no 5xx answer (check `not_a_server_error`) on any
    operation;
  - the server logged no panic meanwhile.

Every wait has a deadline. The last line printed is `N passed, M failed`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HOST = "127.0.0.1"
USER = "alice"
PASSWORD = "schemathesis-password"
MAX_EXAMPLES = 25  # per operation
STARTUP_DEADLINE = 60.0
SCHEMATHESIS_DEADLINE = 400.0
HTTP_ADDR = re.compile(r"HTTP API listening http_addr=(\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def binary_path():
    if len(sys.argv) > 1:
        return os.path.abspath(sys.argv[1])
    if os.environ.get("OUTPOST_BIN"):
        return os.environ["OUTPOST_BIN"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "target", "debug", "outpost")


class Server:
    """`outpost serve` as a child process; a thread collects its log."""

    def __init__(self, binary, config):
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        self.proc = subprocess.Popen([binary, "--config", config, "serve"], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines = []
        self.addr = None
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(STARTUP_DEADLINE) or self.addr is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))

    def _read(self):
        for line in self.proc.stderr:
            line = ANSI.sub("", line)
            self.lines.append(line)
            m = HTTP_ADDR.search(line)
            if m:
                self.addr = m.group(1)
                self.ready.set()
        self.ready.set()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def get(url):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


def main():
    binary = binary_path()
    results = []
    workdir = tempfile.mkdtemp(prefix="outpost-schemathesis-")
    server = None
    try:
        config = os.path.join(workdir, "outpost.toml")
        with open(config, "w") as f:
            f.write(f'hostname = "relay.test"\ndata_dir = "{workdir}/data"\n'
                    f'[[listeners]]\naddr = "{HOST}:0"\nmode = "submission"\n'
                    f'[http]\naddr = "{HOST}:0"\n[delivery]\npaused = true\n'
                    f'[limits]\nmax_recipients = 10\n')
        add = subprocess.run([binary, "--config", config, "user", "add", USER, "--domain", "alice.example",
                              "--password-stdin"], input=PASSWORD, text=True, capture_output=True, timeout=60)
        if add.returncode != 0:
            raise RuntimeError(f"user add failed: {add.stderr}")
        server = Server(binary, config)
        base = f"http://{server.addr}"

        def check(name, fn):
            try:
                fn()
                results.append((name, True))
                print(f"PASS {name}")
            except Exception:  # noqa: BLE001 - report every failure and go on
                results.append((name, False))
                print(f"FAIL {name}\n{traceback.format_exc()}")
            sys.stdout.flush()

        def health_and_document():
            status, body = get(base + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok", body
            status, body = get(base + "/v1/openapi.json")
            doc = json.loads(body)
            assert status == 200 and doc["openapi"].startswith("3."), doc.get("openapi")
            for path in ("/v1/messages", "/v1/messages/raw", "/v1/events", "/v1/suppressions", "/v1/stats"):
                assert path in doc["paths"], f"{path} missing from the document"

        def no_server_errors():
            st = shutil.which("st") or shutil.which("schemathesis")
            assert st, "schemathesis is not installed (pip install schemathesis==3.39.16)"
            cmd = [st, "run", base + "/v1/openapi.json", "--base-url", base,
                   "--auth", f"{USER}:{PASSWORD}", "--checks", "not_a_server_error",
                   "--hypothesis-max-examples", str(MAX_EXAMPLES), "--hypothesis-deadline", "None",
                   "--hypothesis-derandomize", "--experimental", "openapi-3.1", "--no-color",
                   "--hypothesis-suppress-health-check", "all"]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=SCHEMATHESIS_DEADLINE,
                                 env=dict(os.environ, SCHEMATHESIS_TELEMETRY="false"))
            print(run.stdout[-6000:])
            assert run.returncode == 0, f"schemathesis exited {run.returncode}:\n{run.stderr[-3000:]}"

        def no_panic():
            log = "".join(server.lines)
            assert "panicked" not in log, log[-3000:]

        check("healthz and the OpenAPI document", health_and_document)
        check("schemathesis: no 5xx on any operation", no_server_errors)
        check("no panic in the server log", no_panic)
    except Exception:  # noqa: BLE001
        results.append(("setup", False))
        print(f"FAIL setup\n{traceback.format_exc()}")
    finally:
        if server:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
