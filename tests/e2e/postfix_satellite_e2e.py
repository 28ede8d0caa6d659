#!/usr/bin/env python3
"""A real satellite MTA relaying through Outpost with SASL.

Usage:
    python3 tests/e2e/postfix_satellite_e2e.py [PATH_TO_OUTPOST]

Debian's Postfix runs as a null client in a second instance of its own: its own
configuration directory, queue_directory and data_directory under a temporary
directory, no network listener (`master_service_disable = inet`), and the system's
/etc/postfix left alone. It relays everything to `[127.0.0.1]:PORT`, Outpost's
submission port, with `smtp_sasl_auth_enable = yes`, `smtp_tls_security_level =
encrypt` and `default_destination_concurrency_limit = 20` (and an initial
concurrency of 20): up to 20 connections, each with STARTTLS and AUTH, from one
address at once. 50 messages are injected with its
`sendmail -C DIR`; none may be deferred, and Outpost must deliver all 50 to
Postfix's `smtp-sink`.

Needs root (a Postfix instance runs its master as root), postfix and
libsasl2-modules (the PLAIN/LOGIN client mechanisms); .ci/run installs both. A
missing one is a failure, not a skip.

The last line printed is `N passed, M failed`.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (shared: Server, Suite, cli, find_binary)

HOST = harness.HOST
POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
POSTQUEUE = "/usr/sbin/postqueue"
SMTP_SINK = "/usr/sbin/smtp-sink"
SASL_PLAIN = "/usr/lib/*/sasl2/libplain.so*"
MESSAGES = 50
DEADLINE = 120.0
SENDER = f"{harness.USER}@example.com"

MASTER_CF = """\
pickup     unix  n  -  n  60    1  pickup
cleanup    unix  n  -  n  -     0  cleanup
qmgr       unix  n  -  n  300   1  qmgr
tlsmgr     unix  -  -  n  1000? 1  tlsmgr
rewrite    unix  -  -  n  -     -  trivial-rewrite
bounce     unix  -  -  n  -     0  bounce
defer      unix  -  -  n  -     0  bounce
trace      unix  -  -  n  -     0  bounce
verify     unix  -  -  n  -     1  verify
flush      unix  n  -  n  1000? 0  flush
proxymap   unix  -  -  n  -     -  proxymap
smtp       unix  -  -  n  -     -  smtp
relay      unix  -  -  n  -     -  smtp
showq      unix  n  -  n  -     -  showq
error      unix  -  -  n  -     -  error
retry      unix  -  -  n  -     -  error
discard    unix  -  -  n  -     -  discard
anvil      unix  -  -  n  -     1  anvil
scache     unix  -  -  n  -     1  scache
postlog    unix-dgram n - n -   1  postlogd
"""


def main_cf(work, outpost_port):
    return f"""\
compatibility_level = 3.6
queue_directory = {work}/queue
data_directory = {work}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-outpost-e2e
maillog_file = {work}/maillog
maillog_file_prefixes = {work}
myhostname = satellite.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
master_service_disable = inet
alias_maps =
alias_database =
local_transport = error:local delivery is disabled
relayhost = [{HOST}]:{outpost_port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{work}/etc/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_tls_security_level = encrypt
default_destination_concurrency_limit = 20
# From the first delivery on, not after Postfix's usual ramp-up from 5.
initial_destination_concurrency = 20
"""


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port):
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def run(args, input=""):
    r = subprocess.run(args, capture_output=True, text=True, timeout=harness.COMMAND_DEADLINE, input=input)
    harness.check(r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def missing_requirements():
    missing = [tool for tool in (POSTFIX, SENDMAIL, POSTQUEUE, SMTP_SINK) if not os.access(tool, os.X_OK)]
    if not glob.glob(SASL_PLAIN):
        missing.append("libsasl2-modules (Postfix's SASL PLAIN client)")
    if os.geteuid() != 0:
        missing.append("root (a second Postfix instance runs its master as root)")
    return missing


def main():
    binary = harness.find_binary()
    suite = harness.Suite()
    started = time.monotonic()
    missing = missing_requirements()
    if missing:
        print(f"FAIL cannot run the Postfix satellite suite, missing: {', '.join(missing)}", flush=True)
        return finish(suite, started, failed=1)
    work = tempfile.mkdtemp(prefix="outpost-postfix-e2e-")
    # Postfix's daemons drop to the postfix user and must reach data_directory.
    os.chmod(work, 0o755)
    dumps = os.path.join(work, "dumps")
    os.mkdir(dumps)
    os.chmod(dumps, 0o777)  # smtp-sink writes as nobody
    postfix_etc = os.path.join(work, "etc")
    os.mkdir(postfix_etc)
    # `postfix check` creates the queue's subdirectories, not the queue itself.
    os.mkdir(os.path.join(work, "queue"), 0o755)
    sink = server = None
    postfix_started = False
    markers = [uuid.uuid4().hex for _ in range(MESSAGES)]
    print(f"binary: {binary}\nwork dir: {work}", flush=True)
    try:
        sink_port = free_port()
        sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-d", os.path.join(dumps, "%Y%m%d%H%M%S."),
                                 f"{HOST}:{sink_port}", "100"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not listening(sink_port):
            if sink.poll() is not None:
                raise harness.Failure(f"smtp-sink exited: {sink.stderr.read()}")
            harness.check(time.monotonic() < deadline, "smtp-sink never listened")
            time.sleep(0.05)

        config = os.path.join(work, "outpost.toml")
        harness.write_config(config, os.path.join(work, "outpost-data"), [(f"{HOST}:0", "submission")])
        with open(config) as f:
            text = f.read().replace("paused = true", 'retry = ["1m"]\ntls = "none"')
        text += f'\n[[routes]]\ndomain = "*"\nto = "{HOST}:{sink_port}"\ntls = "none"\n'
        with open(config, "w") as f:
            f.write(text)
        r = harness.cli(binary, config, "user", "add", harness.USER, "--domain", "example.com",
                        "--password-stdin", stdin=harness.PASSWORD + "\n")
        harness.check(r.returncode == 0, f"user add: {r.stderr}")
        server = harness.Server(binary, config)
        port = server.wait_for_listeners(["Submission"], time.monotonic() + harness.STARTUP_DEADLINE)["Submission"]

        with open(os.path.join(postfix_etc, "main.cf"), "w") as f:
            f.write(main_cf(work, port))
        with open(os.path.join(postfix_etc, "master.cf"), "w") as f:
            f.write(MASTER_CF)
        with open(os.path.join(postfix_etc, "sasl_passwd"), "w") as f:
            f.write(f"[{HOST}]:{port} {harness.USER}:{harness.PASSWORD}\n")
        os.chmod(os.path.join(postfix_etc, "sasl_passwd"), 0o600)

        failed_before = suite.failed
        suite.run("postfix check prepares the second instance's directories",
                  lambda: run([POSTFIX, "-c", postfix_etc, "check"]))

        # Injected before Postfix starts, so the 50 are queued together and go out
        # over up to 20 connections at once, not one by one as they arrive.
        def inject():
            for i, marker in enumerate(markers):
                body = (f"From: Alice <{SENDER}>\nTo: <rcpt{i}@remote.example>\n"
                        f"Subject: satellite {i}\n\nmarker {marker}\n")
                run([SENDMAIL, "-C", postfix_etc, "-f", SENDER, f"rcpt{i}@remote.example"], input=body)

        suite.run(f"sendmail -C queues {MESSAGES} messages", inject)

        def start_postfix():
            nonlocal postfix_started
            run([POSTFIX, "-c", postfix_etc, "start"])
            postfix_started = True

        suite.run("the second Postfix instance starts", start_postfix)
        if suite.failed > failed_before:
            return finish(suite, started)

        def all_delivered():
            deadline = time.monotonic() + DEADLINE
            while True:
                dumped = os.listdir(dumps)
                queue = run([POSTQUEUE, "-c", postfix_etc, "-j"]).strip()
                if len(dumped) >= MESSAGES and not queue:
                    break
                harness.check(time.monotonic() < deadline,
                              f"after {DEADLINE:.0f}s: {len(dumped)} of {MESSAGES} at the sink; "
                              f"Postfix queue: {queue[:2000]}\nPostfix log:\n{maillog(work)[-3000:]}")
                time.sleep(0.2)
            contents = []
            for name in os.listdir(dumps):
                with open(os.path.join(dumps, name), errors="replace") as f:
                    contents.append(f.read())
            harness.check(len(contents) == MESSAGES, f"{len(contents)} messages at the sink, sent {MESSAGES}")
            for marker in markers:
                copies = sum(marker in c for c in contents)
                harness.check(copies == 1, f"marker {marker} reached the sink {copies} times")

        suite.run(f"Outpost delivers all {MESSAGES} to the sink", all_delivered)

        def none_deferred():
            log = maillog(work)
            deferred = [line for line in log.splitlines() if "status=deferred" in line or "status=bounced" in line]
            harness.check(not deferred, f"{len(deferred)} deferred or bounced, e.g.:\n" + "\n".join(deferred[:5]))
            sent = [line for line in log.splitlines()
                    if "status=sent" in line and f"relay=127.0.0.1[127.0.0.1]:{port}" in line]
            harness.check(len(sent) == MESSAGES, f"{len(sent)} status=sent via Outpost, expected {MESSAGES}")
            clients = {line.split("/smtp[", 1)[1].split("]", 1)[0] for line in sent if "/smtp[" in line}
            harness.check(len(clients) > 5, f"only {len(clients)} Postfix smtp processes delivered: "
                          "the logins were not concurrent")
            print(f"     {len(clients)} Postfix smtp processes delivered the {MESSAGES} messages", flush=True)
            logins = [line for line in server.lines if " authenticated " in f" {line} " and "user=alice" in line]
            harness.check(logins, "Outpost logged no login")
            refusals = [line for line in server.lines if "AUTH refused" in line or "AUTH failed" in line
                        or "AUTH not checked" in line]
            harness.check(not refusals, "Outpost refused logins:\n" + "\n".join(refusals[:5]))

        suite.run("Postfix deferred nothing and logged every message sent via SASL", none_deferred)
    except harness.Failure as e:
        print(f"FAIL set-up: {e}", flush=True)
        suite.failed += 1
    finally:
        if postfix_started:
            subprocess.run([POSTFIX, "-c", postfix_etc, "stop"], capture_output=True, timeout=60)
        if server is not None:
            server.stop()
        if sink is not None:
            sink.kill()
            sink.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return finish(suite, started)


def maillog(work):
    try:
        with open(os.path.join(work, "maillog"), errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return "(no maillog)"


def finish(suite, started, failed=0):
    suite.failed += failed
    print(f"postfix satellite e2e took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
