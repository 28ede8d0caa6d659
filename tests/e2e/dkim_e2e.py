#!/usr/bin/env python3
"""End-to-end DKIM check with an independent verifier (dkimpy).

Usage:
    python3 tests/e2e/dkim_e2e.py [PATH_TO_OUTPOST]

Registers a sending domain with `outpost domain add --ed25519`, reads the records
to publish from `outpost domain dns --json`, runs `outpost serve` relaying every
domain to a minimal SMTP sink on 127.0.0.1, sends an 8-bit message with list
headers, one with long lines and a leading dot, and a multipart one (smtplib), and
verifies both signatures (rsa-sha256, ed25519-sha256) of each message the sink
received with dkimpy, answering its DNS queries from the published records. A
message from an unregistered domain must arrive unsigned, and a tampered copy
must fail verification.

Needs: dkimpy and PyNaCl (`pip install dkimpy pynacl`, or Debian's python3-dkim
and python3-nacl); .ci/run installs them. The last line is `N passed, M failed`.
"""

import json
import os
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (shared: Server, Suite, cli, find_binary)

try:
    import dkim
except ImportError:
    print("FAIL dkimpy is not installed (pip install dkimpy pynacl)")
    print("0 passed, 1 failed", flush=True)
    sys.exit(1)

HOST = harness.HOST
DOMAIN = "signed.example"
DEADLINE = 30.0


class Sink:
    """An SMTP server that accepts everything and keeps each message's bytes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.messages = []
        self.cond = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        conn.settimeout(DEADLINE)
        f = conn.makefile("rb")
        conn.sendall(b"220 sink.test ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-sink.test\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = bytearray()
                    while True:
                        l = f.readline()
                        if l in (b".\r\n", b""):
                            break
                        data += l[1:] if l.startswith(b"..") else l  # RFC 5321 4.5.2
                    with self.cond:
                        self.messages.append(bytes(data))
                        self.cond.notify_all()
                    conn.sendall(b"250 2.0.0 stored\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")
        finally:
            conn.close()

    def wait_for(self, n):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= n, timeout=DEADLINE):
                raise harness.Failure(f"the sink got {len(self.messages)} of {n} messages")
            return list(self.messages)

    def close(self):
        self.sock.close()


def messages():
    long_line = "y" * 990
    return {
        "8-bit": (
            "From: News <news@signed.example>\r\nTo: a@remote.example\r\nCc: b@remote.example\r\n"
            "Subject: Gr\u00fc\u00dfe\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\n"
            "Message-ID: <e2e-1@signed.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "List-Unsubscribe: <https://signed.example/u/1>, <mailto:u@signed.example>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
            "Gr\u00fc\u00dfe aus K\u00f6ln \u2014 caf\u00e9\r\n  spaces at the end   \r\n\r\n\r\n"
        ).encode("utf-8"),
        "long lines": (
            "From: news@signed.example\r\nTo: a@remote.example\r\nSubject: long\r\n"
            "Message-ID: <e2e-2@signed.example>\r\n\r\n"
            f"{long_line}\r\n.a line with a leading dot\r\n{long_line}\r\n"
        ).encode("ascii"),
        "multipart": (
            "From: news@signed.example\r\nTo: a@remote.example\r\nSubject: multipart\r\n"
            "Message-ID: <e2e-3@signed.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain \u263a\r\n"
            "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html \u263a</p>\r\n--b1--\r\n"
        ).encode("utf-8"),
    }


def main():
    binary = harness.find_binary()
    suite = harness.Suite()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="outpost-dkim-e2e-")
    sink = Sink()
    server = None
    try:
        config = os.path.join(workdir, "outpost.toml")
        harness.write_config(config, os.path.join(workdir, "data"), [(f"{HOST}:0", "relay")])
        # Deliver (not paused) to the sink, trusting loopback clients to relay.
        with open(config) as f:
            text = f.read().replace("paused = true", 'retry = ["1m"]')
        text += (f'\n[relay]\ntrusted_networks = ["127.0.0.0/8"]\n'
                 f'[[routes]]\ndomain = "*"\nto = "{HOST}:{sink.port}"\ntls = "none"\n')
        with open(config, "w") as f:
            f.write(text)
        published = {}

        def register():
            r = harness.cli(binary, config, "domain", "add", DOMAIN, "--ed25519")
            harness.check(r.returncode == 0, f"domain add failed: {r.stderr}")
            r = harness.cli(binary, config, "domain", "dns", DOMAIN, "--json")
            harness.check(r.returncode == 0, f"domain dns failed: {r.stderr}")
            for record in json.loads(r.stdout)["records"]:
                if record["type"] == "TXT":
                    harness.check(all(len(s) <= 255 for s in record["strings"]), "a TXT string over 255 bytes")
                    published[record["name"]] = record["value"]
            harness.check(sum(1 for n in published if "._domainkey." in n) == 2, f"records: {published}")

        suite.run("domain add --ed25519 and domain dns --json", register)
        server = harness.Server(binary, config)
        try:
            port = server.wait_for_listeners(["Relay"], time.monotonic() + harness.STARTUP_DEADLINE)["Relay"]
        except harness.Failure as e:
            print(f"FAIL outpost serve did not start: {e}", flush=True)
            suite.failed += 1
            return finish(suite, started)
        cases = messages()

        def send_all():
            with smtplib.SMTP(HOST, port, timeout=DEADLINE) as smtp:
                smtp.ehlo("client.test")
                for content in cases.values():
                    smtp.sendmail("sender@client.example", ["a@remote.example"], content)
                smtp.sendmail("sender@client.example", ["a@remote.example"],
                              b"From: x@unregistered.example\r\nTo: a@remote.example\r\nSubject: no\r\n\r\nhi\r\n")
            sink.wait_for(len(cases) + 1)

        suite.run("relay four messages to the sink", send_all)

        def dnsfunc(name, timeout=5):
            value = published.get(name.decode().rstrip("."))
            return value.encode() if value else None

        def received(marker):
            found = [m for m in sink.messages if marker in m]
            harness.check(len(found) == 1, f"{len(found)} messages contain {marker!r}")
            return found[0]

        for name, content in cases.items():
            marker = [l for l in content.split(b"\r\n") if l.startswith(b"Message-ID")][0]

            def verify(marker=marker):
                message = received(marker)
                harness.check(message.count(b"DKIM-Signature:") == 2, "not signed twice")
                d = dkim.DKIM(message)
                algorithms = set()
                for i in range(2):
                    harness.check(d.verify(idx=i, dnsfunc=dnsfunc), f"signature {i} does not verify")
                    algorithms.add(d.signature_fields.get(b"a"))
                    harness.check(d.signature_fields.get(b"c") == b"relaxed/relaxed", "not relaxed/relaxed")
                harness.check(algorithms == {b"rsa-sha256", b"ed25519-sha256"}, f"algorithms {algorithms}")
                tampered = message.replace(b"\r\n\r\n", b"\r\n\r\nX", 1)
                try:
                    tampered_ok = dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)
                except dkim.ValidationError:  # dkimpy raises for a body hash mismatch
                    tampered_ok = False
                harness.check(not tampered_ok, "a tampered body verifies")

            suite.run(f"dkimpy verifies {name}", verify)

        def unsigned():
            harness.check(b"DKIM-Signature" not in received(b"unregistered.example"), "unregistered domain signed")

        suite.run("an unregistered From: domain is not signed", unsigned)
    finally:
        if server is not None:
            server.stop()
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return finish(suite, started)


def finish(suite, started):
    print(f"dkim e2e took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
