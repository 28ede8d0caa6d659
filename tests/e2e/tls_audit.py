#!/usr/bin/env python3
"""TLS audit of Outpost's listeners with testssl.sh.

Usage:
    python3 tests/e2e/tls_audit.py [PATH_TO_OUTPOST]

Starts `outpost serve` on loopback with a submissions listener (implicit TLS, the
role of port 465) and a submission listener (STARTTLS, the role of 587) on free
ports, then runs testssl.sh against each (`--starttls smtp` for the second) with
JSON output, and checks:
  - SSLv2, SSLv3, TLS 1.0 and TLS 1.1 are not offered; TLS 1.2 and 1.3 are;
  - no finding has a severity above LOW (MEDIUM, HIGH, CRITICAL), except those
    that come only from the self-signed test certificate (trust, chain, CA
    records, revocation info): a deployment configures its own certificate.

Fails (it cannot run) when testssl.sh is not installed; it never skips.
Everything stays on 127.0.0.1. The last line is `N passed, M failed`.
"""
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
STARTUP_DEADLINE = 60.0
TESTSSL_DEADLINE = 300.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAD = {"MEDIUM", "HIGH", "CRITICAL"}
# Findings caused only by the self-signed certificate a test server generates.
CERT_ONLY = re.compile(
    r"^(cert_trust|cert_chain_of_trust|cert_caIssuers|cert_crlDistributionPoints|"
    r"cert_ocspURL|cert_revocation|OCSP_stapling|cert_mustStapleExtension|cert_certificateTransparency|"
    r"cert_validityPeriod|cert_expirationStatus|cert_commonName|cert_subjectAltName|"
    r"DNS_CAArecord|cert_trust_?.*|intermediate_cert.*|chain_of_trust)"
)


def find_binary():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.environ.get("OUTPOST_BIN", os.path.join(root, "target", "debug", "outpost"))
    return os.path.abspath(path)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def testssl_binary():
    for name in ("testssl", "testssl.sh"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Server:
    def __init__(self, binary, config, expected):
        self.events = queue.Queue()
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        env.pop("OUTPOST_CONFIG", None)
        self.proc = subprocess.Popen(
            [binary, "--config", config, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + STARTUP_DEADLINE
        seen = 0
        while seen < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("outpost serve did not log its listeners in time")
            line = self.events.get(timeout=remaining)
            if line is None:
                raise RuntimeError("outpost serve exited during start-up")
            if "listening" in line:
                seen += 1

    def _read(self):
        for raw in self.proc.stderr:
            self.events.put(ANSI.sub("", raw.decode("utf-8", "replace")))
        self.events.put(None)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def audit(testssl, target, starttls, workdir, name):
    """Runs testssl.sh; returns (findings, seconds)."""
    out = os.path.join(workdir, f"{name}.json")
    cmd = [testssl, "--quiet", "--warnings", "off", "--color", "0", "--ip", "one",
           "--jsonfile", out, "--protocols", "--server-defaults", "--std", "--each-cipher",
           "--fs", "--vulnerable"]
    if starttls:
        cmd += ["--starttls", "smtp"]
    cmd.append(target)
    start = time.monotonic()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=TESTSSL_DEADLINE, check=False)
    with open(out) as f:
        findings = json.load(f)
    return findings, time.monotonic() - start


def check(findings, name):
    """Returns a list of problems."""
    problems = []
    by_id = {f.get("id"): f for f in findings}
    for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        f = by_id.get(proto)
        if f is None:
            problems.append(f"{name}: no testssl result for {proto}")
        elif not f.get("finding", "").startswith("not offered"):
            problems.append(f"{name}: {proto} {f.get('finding')}")
    for proto in ("TLS1_2", "TLS1_3"):
        f = by_id.get(proto)
        if f is None or not f.get("finding", "").startswith("offered"):
            problems.append(f"{name}: {proto} not offered: {f}")
    if not any(f.get("id") == "TLS1_2" for f in findings):
        problems.append(f"{name}: testssl produced no protocol results")
    for f in findings:
        severity = f.get("severity", "")
        if severity in BAD and not CERT_ONLY.match(f.get("id", "")):
            problems.append(f"{name}: {severity} {f.get('id')}: {f.get('finding')}")
    return problems


def summary(findings):
    counts = {}
    for f in findings:
        counts[f.get("severity", "?")] = counts.get(f.get("severity", "?"), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def main():
    binary = find_binary()
    testssl = testssl_binary()
    if testssl is None:
        print("FAIL tls_audit cannot run: testssl.sh is not installed "
              "(Debian package testssl.sh; scripts/install-test-deps.sh installs it)")
        print("0 passed, 1 failed", flush=True)
        return 1
    if not os.access(binary, os.X_OK):
        print(f"FAIL outpost binary not found: {binary}")
        print("0 passed, 1 failed", flush=True)
        return 1
    passed = failed = 0
    with tempfile.TemporaryDirectory() as workdir:
        implicit, starttls = free_port(), free_port()
        config = os.path.join(workdir, "outpost.toml")
        with open(config, "w") as f:
            f.write(
                f'hostname = "relay.test"\ndata_dir = "{workdir}/data"\n'
                "[delivery]\npaused = true\n"
                f'[http]\naddr = "{HOST}:0"\n'
                f'[[listeners]]\naddr = "{HOST}:{implicit}"\nmode = "submissions"\n'
                f'[[listeners]]\naddr = "{HOST}:{starttls}"\nmode = "submission"\n'
            )
        server = Server(binary, config, 2)
        try:
            for name, port, use_starttls in (
                ("implicit TLS (465 role)", implicit, False),
                ("STARTTLS (587 role)", starttls, True),
            ):
                try:
                    findings, seconds = audit(testssl, f"{HOST}:{port}", use_starttls,
                                              workdir, "starttls" if use_starttls else "implicit")
                    problems = check(findings, name)
                except Exception as e:  # noqa: BLE001 - any error is a failure
                    problems, findings, seconds = [f"{name}: {e!r}"], [], 0.0
                print(f"{name}: testssl.sh in {seconds:.0f}s; severities: {summary(findings)}")
                if problems:
                    failed += 1
                    for p in problems:
                        print(f"FAIL {p}")
                else:
                    passed += 1
                    print(f"PASS {name}: no SSLv2/3, TLS 1.0/1.1; nothing above LOW")
        finally:
            server.stop()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
