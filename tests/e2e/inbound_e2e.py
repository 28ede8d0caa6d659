#!/usr/bin/env python3
"""End-to-end test of Outpost's inbound side with real clients.

Usage:
    python3 tests/e2e/inbound_e2e.py [PATH_TO_OUTPOST]

The binary is PATH_TO_OUTPOST, else $OUTPOST_BIN, else target/debug/outpost of
this repository: that is the binary `cargo test` builds, so the CI command
`cargo test && python3 tests/e2e/inbound_e2e.py` needs no second build. The
script builds nothing itself.

Needs: Python 3 (stdlib only), swaks (with Net::SSLeay for TLS) and the openssl
command-line tool. Everything runs on 127.0.0.1 with ephemeral ports, in a
temporary directory that is removed at the end.

What it checks (SPEC sections 1, 2, 7, 8):
  - `user add --password-stdin` and `user list`;
  - submission (STARTTLS): no AUTH before TLS, AUTH after, smtplib login + send;
  - submissions (implicit TLS): smtplib.SMTP_SSL login + send;
  - swaks --tls (STARTTLS) and swaks --tlsc (implicit TLS);
  - openssl s_client -starttls smtp: EHLO after TLS offers AUTH, not STARTTLS;
  - openssl s_client -servername 127.0.0.1 (an IP address as SNI, as msmtp sends):
    the session works and the server logs no warning for it;
  - relay port without auth: 554 5.7.1 for a foreign recipient, 250 for a local one;
  - submission port without auth: 530 5.7.0 at MAIL;
  - a wrong password: 535 5.7.8;
  - `queue list` holds every accepted queue id, `queue show ID` names the recipient;
  - an unknown config key: `serve` exits non-zero naming the key and its line;
  - a port already taken: `serve` exits non-zero with a clear message.

Every wait has a deadline. The last line printed is `N passed, M failed`; the exit
status is non-zero when anything failed.
"""

import os
import queue
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

HOST = "127.0.0.1"
HOSTNAME = "relay.test"
USER = "alice"
PASSWORD = "correct horse battery"
STARTUP_DEADLINE = 60.0  # seconds for `serve` to log its listeners
COMMAND_DEADLINE = 60.0  # seconds for any one CLI or client command
SOCKET_TIMEOUT = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
QUEUED = re.compile(r"queued as ([0-9A-F]{20})\b")


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_binary():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    elif os.environ.get("OUTPOST_BIN"):
        path = os.environ["OUTPOST_BIN"]
    else:
        path = os.path.join(repo_root(), "target", "debug", "outpost")
    path = os.path.abspath(path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"FAIL outpost binary not found or not executable: {path} (build it with `cargo build`)")
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)
    return path


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def child_env():
    env = dict(os.environ)
    env["RUST_LOG"] = "info"
    env["NO_COLOR"] = "1"
    env.pop("OUTPOST_CONFIG", None)
    env.pop("RUST_BACKTRACE", None)
    env.pop("RUST_LIB_BACKTRACE", None)
    return env


def write_config(path, data_dir, listeners, extra=""):
    # Acceptance only: delivery is paused so queued mail stays put for `queue list`.
    # The HTTP API on an ephemeral port too, so suites can run side by side.
    lines = [f'hostname = "{HOSTNAME}"', f'data_dir = "{data_dir}"', "", "[delivery]", "paused = true", "",
             "[http]", f'addr = "{HOST}:0"', ""]
    for addr, mode in listeners:
        lines += ["[[listeners]]", f'addr = "{addr}"', f'mode = "{mode}"', ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + extra)


class Server:
    """`outpost serve` as a child process, its stderr read by a thread. `command` replaces
    the plain `outpost --config CONFIG serve` when it runs wrapped (tests/e2e/docker_image.py)."""

    def __init__(self, binary, config, command=None, env=None):
        self.lines = []
        self.events = queue.Queue()
        self.proc = subprocess.Popen(
            command or [binary, "--config", config, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env or child_env(),
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            self.lines.append(line)
            self.events.put(line)
        self.events.put(None)  # end of stream

    def wait_for_listeners(self, expected_modes, deadline):
        """Returns {mode: port} once a `listening` line for each mode was logged."""
        ports = {}
        while set(expected_modes) - set(ports):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"no listening lines for {sorted(set(expected_modes) - set(ports))} "
                              f"before the deadline; log:\n{self.log()}")
            try:
                line = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=10)
                raise Failure(f"serve exited with {self.proc.returncode} during start-up; log:\n{self.log()}")
            m = re.search(r"\blistening addr=(\S+):(\d+) mode=(\w+)", line)
            if m:
                # The log says the configuration's name (`submissions`); the suites
                # name modes as the SPEC's table does (`Submissions`).
                ports[m.group(3).capitalize()] = int(m.group(2))
        return ports

    def log(self):
        return "\n".join(self.lines[-40:])

    def stop(self):
        """SIGINT (graceful), then SIGKILL after a deadline; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.reader.join(timeout=10)
        return self.proc.returncode


class Suite:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn, *args):
        start = time.monotonic()
        try:
            fn(*args)
        except Failure as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception:  # an unexpected error is a failure too, with its trace
            self.failed += 1
            print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({time.monotonic() - start:.1f}s)", flush=True)


def cli(binary, config, *args, stdin=None):
    return subprocess.run(
        [binary, "--config", config, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE,
        env=child_env(),
    )


def tls_context():
    # The server's certificate is self-signed (generated in the data dir).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(sender, rcpt, marker):
    return (
        f"From: Alice <{sender}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: e2e {marker}\r\n"
        "\r\n"
        f"marker {marker}\r\n"
    )


def send_via(smtp, rcpt, marker):
    """MAIL/RCPT/DATA by hand so the DATA reply (with the queue id) is seen."""
    sender = f"{USER}@example.com"
    code, reply = smtp.mail(sender)
    check(code == 250, f"MAIL FROM answered {code} {reply!r}")
    code, reply = smtp.rcpt(rcpt)
    check(code == 250, f"RCPT TO answered {code} {reply!r}")
    code, reply = smtp.data(message(sender, rcpt, marker))
    text = reply.decode(errors="replace")
    check(code == 250, f"DATA answered {code} {text!r}")
    m = QUEUED.search(text)
    check(m is not None, f"DATA reply does not name a queue id: {text!r}")
    return m.group(1)


def main():
    binary = find_binary()
    suite = Suite()
    workdir = tempfile.mkdtemp(prefix="outpost-e2e-")
    data_dir = os.path.join(workdir, "data")
    config = os.path.join(workdir, "outpost.toml")
    write_config(config, data_dir, [(f"{HOST}:0", m) for m in ("relay", "submission", "submissions")])
    accepted = {}  # queue id -> recipient
    server = None
    started = time.monotonic()
    print(f"binary: {binary}\nwork dir: {workdir}", flush=True)
    try:
        def user_add():
            r = cli(binary, config, "user", "add", USER, "--domain", "example.com", "--password-stdin",
                    stdin=PASSWORD + "\n")
            check(r.returncode == 0, f"user add exited {r.returncode}: {r.stderr}")
            check(f"user {USER} added" in r.stdout, f"unexpected output: {r.stdout!r}")
            check("password:" not in r.stdout, "a password was printed despite --password-stdin")

        def user_list():
            r = cli(binary, config, "user", "list")
            check(r.returncode == 0, f"user list exited {r.returncode}: {r.stderr}")
            rows = [line.split("\t") for line in r.stdout.splitlines()]
            check([USER, "-", "example.com"] in rows, f"alice/example.com not listed: {r.stdout!r}")

        suite.run("user add --password-stdin", user_add)
        suite.run("user list", user_list)

        server = Server(binary, config)
        ports = {}

        def start():
            ports.update(server.wait_for_listeners(
                ["Relay", "Submission", "Submissions"], time.monotonic() + STARTUP_DEADLINE))
            check(server.proc.poll() is None, "serve exited right after start-up")

        suite.run("serve starts and logs its ephemeral ports", start)
        if len(ports) != 3:
            print("cannot go on without a running server", flush=True)
            return finish(suite, started)
        relay, sub, subs = ports["Relay"], ports["Submission"], ports["Submissions"]
        print(f"ports: relay={relay} submission={sub} submissions={subs}", flush=True)

        def submission_smtplib():
            with smtplib.SMTP(HOST, sub, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT) as s:
                code, banner = s.ehlo()
                check(code == 250, f"EHLO answered {code}")
                check(s.has_extn("starttls"), "STARTTLS not offered before TLS")
                check(not s.has_extn("auth"), "AUTH offered before TLS")
                code, _ = s.starttls(context=tls_context())
                check(code == 220, f"STARTTLS answered {code}")
                s.ehlo()
                check(s.has_extn("auth"), "AUTH not offered after STARTTLS")
                check(not s.has_extn("starttls"), "STARTTLS still offered after TLS")
                check("plain" in s.esmtp_features["auth"].lower(), "AUTH PLAIN missing")
                code, _ = s.login(USER, PASSWORD)
                check(code == 235, f"AUTH answered {code}")
                rcpt = "bob@example.net"
                accepted[send_via(s, rcpt, uuid.uuid4().hex)] = rcpt

        def submissions_smtplib():
            with smtplib.SMTP_SSL(HOST, subs, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT,
                                  context=tls_context()) as s:
                code, greeting = s.ehlo()
                check(code == 250, f"EHLO answered {code}")
                check(s.sock.version() in ("TLSv1.2", "TLSv1.3"), f"TLS version {s.sock.version()}")
                check(s.has_extn("auth"), "AUTH not offered on implicit TLS")
                check(not s.has_extn("starttls"), "STARTTLS offered inside implicit TLS")
                s.login(USER, PASSWORD)
                rcpt = "carol@example.org"
                accepted[send_via(s, rcpt, uuid.uuid4().hex)] = rcpt

        def swaks(port, tls_flag, rcpt):
            marker = uuid.uuid4().hex
            r = subprocess.run(
                ["swaks", "--server", HOST, "--port", str(port), tls_flag,
                 "--ehlo", "swaks.e2e.test", "--auth", "LOGIN",
                 "--auth-user", USER, "--auth-password", PASSWORD,
                 "--from", f"{USER}@example.com", "--to", rcpt,
                 "--header", f"Subject: swaks {marker}", "--body", f"marker {marker}",
                 "--timeout", "30"],
                capture_output=True, text=True, timeout=COMMAND_DEADLINE, stdin=subprocess.DEVNULL)
            out = r.stdout + r.stderr
            check(r.returncode == 0, f"swaks exited {r.returncode}:\n{out}")
            check(re.search(r"TLS started", out) is not None, f"swaks did not start TLS:\n{out}")
            check("235 2.7.0" in out, f"swaks AUTH LOGIN did not get 235:\n{out}")
            m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as ([0-9A-F]{20})", out)
            check(m is not None, f"no queue id in swaks output:\n{out}")
            accepted[m.group(1)] = rcpt

        def openssl_starttls():
            # Before TLS, by hand: STARTTLS offered, AUTH not.
            with socket.create_connection((HOST, sub), timeout=SOCKET_TIMEOUT) as sock:
                f = sock.makefile("rb")
                check(f.readline().startswith(b"220 "), "no 220 greeting")
                sock.sendall(b"EHLO plain.e2e.test\r\n")
                ehlo = []
                while True:
                    line = f.readline().decode()
                    check(line.startswith("250"), f"EHLO line {line!r}")
                    ehlo.append(line[4:].strip())
                    if line[3] == " ":
                        break
                check("STARTTLS" in ehlo, f"STARTTLS not offered in plaintext: {ehlo}")
                check(not any(x.startswith("AUTH") for x in ehlo), f"AUTH offered in plaintext: {ehlo}")
            # With openssl s_client: the EHLO after the handshake.
            r = subprocess.run(
                ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{HOST}:{sub}",
                 "-servername", HOSTNAME, "-crlf", "-ign_eof"],
                input="EHLO openssl.e2e.test\nQUIT\n", capture_output=True, text=True,
                timeout=COMMAND_DEADLINE)
            out = r.stdout
            check(r.returncode == 0, f"openssl exited {r.returncode}:\n{r.stderr}\n{out}")
            check(re.search(r"Protocol\s*:\s*TLSv1\.[23]|New, TLSv1\.[23]", out) is not None,
                  f"no TLS 1.2/1.3 session in openssl output:\n{out}")
            ehlo = re.findall(r"^250[- ](.*)$", out, re.M)
            check(any("Hello openssl.e2e.test" in line for line in ehlo),
                  f"no EHLO reply after TLS:\n{out}")
            check("AUTH PLAIN LOGIN" in [x.strip() for x in ehlo], f"AUTH not offered after TLS: {ehlo}")
            check("STARTTLS" not in [x.strip() for x in ehlo], f"STARTTLS offered after TLS: {ehlo}")
            check(re.search(r"^221 ", out, re.M) is not None, f"no 221 to QUIT:\n{out}")

        def sni_ip_address():
            # GnuTLS clients (msmtp) send the IP address they connect to as the
            # server name: rustls notes it, which is no news for an operator.
            mark = len(server.lines)
            r = subprocess.run(
                ["openssl", "s_client", "-connect", f"{HOST}:{subs}", "-servername", HOST,
                 "-crlf", "-ign_eof"],
                input="EHLO sni.e2e.test\nQUIT\n", capture_output=True, text=True,
                timeout=COMMAND_DEADLINE)
            check(r.returncode == 0, f"openssl exited {r.returncode}:\n{r.stderr}\n{r.stdout}")
            check(re.search(r"^221 ", r.stdout, re.M) is not None, f"no 221 to QUIT:\n{r.stdout}")
            # A line the server logs after that handshake: a message sent afterwards.
            with smtplib.SMTP_SSL(HOST, subs, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT,
                                  context=tls_context()) as s:
                s.login(USER, PASSWORD)
                qid = send_via(s, "sni@example.org", uuid.uuid4().hex)
            accepted[qid] = "sni@example.org"
            deadline = time.monotonic() + SOCKET_TIMEOUT
            while not any(qid in line for line in server.lines[mark:]):
                check(time.monotonic() < deadline, f"no log line for {qid}:\n{server.log()}")
                time.sleep(0.05)
            warnings = [line for line in server.lines[mark:] if re.search(r"\bWARN\b", line)]
            check(not warnings, "warnings logged for a client's IP address SNI:\n" + "\n".join(warnings))

        def relay_denied():
            with smtplib.SMTP(HOST, relay, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT) as s:
                s.ehlo()
                check(not s.has_extn("auth"), "AUTH offered before TLS on the relay port")
                code, reply = s.mail("someone@example.org")
                check(code == 250, f"MAIL FROM answered {code} {reply!r}")
                code, reply = s.rcpt("victim@example.net")
                check(code == 554, f"foreign RCPT without auth answered {code} {reply!r}, want 554")
                check(reply.startswith(b"5.7.1"), f"reply {reply!r} lacks 5.7.1")
                # SPEC §1: Outpost's own domains stay reachable without auth.
                code, reply = s.rcpt(f"postmaster@{HOSTNAME}")
                check(code == 250, f"local RCPT answered {code} {reply!r}")

        def submission_needs_auth():
            with smtplib.SMTP(HOST, sub, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT) as s:
                s.starttls(context=tls_context())
                s.ehlo()
                code, reply = s.mail(f"{USER}@example.com")
                check(code == 530, f"MAIL without AUTH answered {code} {reply!r}, want 530")
                check(reply.startswith(b"5.7.0"), f"reply {reply!r} lacks 5.7.0")

        def wrong_password():
            with smtplib.SMTP(HOST, sub, local_hostname="e2e.test", timeout=SOCKET_TIMEOUT) as s:
                s.starttls(context=tls_context())
                s.ehlo()
                try:
                    s.login(USER, "not the password")
                except smtplib.SMTPAuthenticationError as e:
                    check(e.smtp_code == 535, f"wrong password answered {e.smtp_code}, want 535")
                    check(e.smtp_error.startswith(b"5.7.8"), f"reply {e.smtp_error!r} lacks 5.7.8")
                else:
                    raise Failure("login with a wrong password succeeded")

        suite.run("submission: smtplib STARTTLS + AUTH + send", submission_smtplib)
        suite.run("submissions: smtplib SMTP_SSL + AUTH + send", submissions_smtplib)
        suite.run("swaks --tls on submission", swaks, sub, "--tls", "dave@example.net")
        suite.run("swaks --tlsc on submissions", swaks, subs, "--tlsc", "erin@example.net")
        suite.run("openssl s_client -starttls smtp: AUTH only after TLS", openssl_starttls)
        suite.run("openssl s_client -servername 127.0.0.1: no warning logged", sni_ip_address)
        suite.run("relay port without auth: 554 5.7.1", relay_denied)
        suite.run("submission without auth: 530 5.7.0", submission_needs_auth)
        suite.run("wrong password: 535 5.7.8", wrong_password)

        def queue_list():
            check(len(accepted) >= 1, "no message was accepted, nothing to look for")
            r = cli(binary, config, "queue", "list")
            check(r.returncode == 0, f"queue list exited {r.returncode}: {r.stderr}")
            # mailq's shape: a line per message (id first), indented lines per recipient.
            listed = {line.split()[0] for line in r.stdout.splitlines()
                      if line and not line.startswith((" ", "--"))}
            missing = set(accepted) - listed
            check(not missing, f"accepted ids missing from queue list: {sorted(missing)}\n{r.stdout}")
            check(f"-- {len(listed)} message(s) in the queue" in r.stdout, f"no count line: {r.stdout!r}")

        def queue_show():
            check(len(accepted) >= 1, "no message was accepted, nothing to show")
            for qid, rcpt in accepted.items():
                r = cli(binary, config, "queue", "show", qid)
                check(r.returncode == 0, f"queue show {qid} exited {r.returncode}: {r.stderr}")
                check(rcpt in r.stdout, f"queue show {qid} lacks {rcpt}: {r.stdout}")
                check(f"{USER}@example.com" in r.stdout, f"queue show {qid} lacks the sender")
            r = cli(binary, config, "queue", "show", "0" * 20)
            check(r.returncode != 0, "queue show of an unknown id succeeded")

        suite.run("queue list holds every accepted id", queue_list)
        suite.run("queue show names the recipient", queue_show)

        def server_survived():
            check(server.proc.poll() is None, f"serve died (exit {server.proc.returncode}); log:\n{server.log()}")
            joined = "\n".join(server.lines)
            for qid in accepted:
                check(f"queue_id={qid}" in joined, f"no log line for accepted message {qid}")

        suite.run("server still running, one log line per accepted message", server_survived)
        code = server.stop()
        server = None
        suite.run("serve stops on SIGINT with status 0",
                  lambda: check(code == 0, f"serve exited {code} after SIGINT"))

        def unknown_key():
            bad = os.path.join(workdir, "unknown-key.toml")
            write_config(bad, os.path.join(workdir, "data-bad"), [(f"{HOST}:0", "relay")],
                         "[limits]\nmax_mesage_size = 5\n")
            line_no = open(bad).read().splitlines().index("max_mesage_size = 5") + 1
            r = cli(binary, bad, "serve")
            check(r.returncode != 0, "serve accepted an unknown key")
            check("max_mesage_size" in r.stderr, f"error does not name the key:\n{r.stderr}")
            check(f"line {line_no}" in r.stderr, f"error does not name line {line_no}:\n{r.stderr}")
            check("listening addr=" not in r.stderr, "serve started listening anyway")

        def port_taken():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
                holder.bind((HOST, 0))
                holder.listen(1)
                taken = holder.getsockname()[1]
                busy = os.path.join(workdir, "port-taken.toml")
                write_config(busy, os.path.join(workdir, "data-busy"),
                             [(f"{HOST}:0", "submission"), (f"{HOST}:{taken}", "relay")])
                r = cli(binary, busy, "serve")
            check(r.returncode != 0, "serve started although its port is taken")
            check(f"{HOST}:{taken}" in r.stderr, f"error does not name the address:\n{r.stderr}")
            check("in use" in r.stderr.lower(), f"error does not say the port is in use:\n{r.stderr}")
            check("listening addr=" not in r.stderr, "serve started some listeners anyway")

        suite.run("unknown config key: serve fails naming key and line", unknown_key)
        suite.run("port already taken: serve fails with a clear message", port_taken)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return finish(suite, started)


def finish(suite, started):
    print(f"inbound e2e took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
