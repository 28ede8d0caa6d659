"""Real mail daemons for tests/e2e/interop_e2e.py, each in its own directory.

dnsmasq (DNS), Postfix instances (`postfix -c DIR`, never the system's /etc/postfix
one), Exim (Debian's binary unpacked by tests/e2e/interop/install.sh, run with its
own configuration), OpenDKIM (a verifying milter) and rspamd. Every start waits on
a condition (a DNS answer, a listening port, a socket file, an HTTP answer) with a
deadline; every stop is by process id.

Not a suite itself: scripts/test.sh runs only tests/e2e/*.py.
"""

import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
EXIM_ROOT = os.path.join(HERE, "exim-root")  # unpacked exim4-daemon-light
EXIM_BIN = os.path.join(EXIM_ROOT, "usr", "sbin", "exim4")
EXIM_USER = "Debian-exim"  # compiled into Debian's binary; install.sh creates it
NODE_DIR = os.path.join(HERE, "node")
START_DEADLINE = 60.0
# rspamd loads its rules and maps first: ~15 s on 2 idle cores, over a minute on busy ones
RSPAMD_START_DEADLINE = 240.0


class DaemonError(Exception):
    pass


def which(name):
    """The path of a command, also in the sbin directories a non-login PATH may lack."""
    for d in (os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin", "/usr/bin"]):
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def missing_tools():
    """What the suite needs and does not find, one sentence each."""
    problems = []
    for tool in ("dnsmasq", "postfix", "postconf", "opendkim", "rspamd", "msmtp", "node", "openssl"):
        if which(tool) is None:
            problems.append(f"{tool} is not installed")
    if not os.access(EXIM_BIN, os.X_OK):
        problems.append(f"exim is not unpacked at {EXIM_BIN} (run tests/e2e/interop/install.sh)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "nodemailer")):
        problems.append(f"nodemailer is not installed in {NODE_DIR} (npm ci there)")
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        problems.append(f"user {EXIM_USER} does not exist (run tests/e2e/interop/install.sh)")
    try:
        import dkim  # noqa: F401
        import nacl  # noqa: F401
    except ImportError:
        problems.append("dkimpy/PyNaCl are not installed (python3-dkim python3-nacl)")
    if os.geteuid() != 0:
        problems.append("the suite runs Postfix, Exim and rspamd instances and must run as root")
    return problems


def wait_until(predicate, deadline, what, diagnostics=lambda: ""):
    delay = 0.02
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise DaemonError(f"{what} before the deadline\n{diagnostics()}")
        time.sleep(delay)  # polling interval of a condition wait, not a synchronisation
        delay = min(delay * 2, 0.25)


def tcp_listening(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


def free_port(*addrs):
    """A TCP port free on every one of addrs (all of 127/8 is loopback on Linux)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addrs[0], 0))
            port = s.getsockname()[1]
        ok = True
        for a in addrs:
            with socket.socket() as s:
                try:
                    s.bind((a, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise DaemonError(f"no port free on all of {addrs}")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"({path}: {e})"


class Process:
    """A child process with its output in a log file; stopped by its pid."""

    def __init__(self, name, argv, log, **kwargs):
        self.name = name
        self.log = log
        self.logfile = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True, **kwargs)

    def check_alive(self):
        if self.proc.poll() is not None:
            raise DaemonError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.logfile.close()


# ---------------------------------------------------------------- DNS
def dns_query(port, name, qtype=1, timeout=0.5):
    """One UDP query to 127.0.0.1:port: (RCODE, [rdata of each answer]), or None."""
    qid = os.getpid() & 0xFFFF
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    packet += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet += struct.pack(">HH", qtype, 1)
    # EDNS0 OPT record offering 4096-byte replies: without it a DKIM key record of a
    # long domain does not fit in 512 bytes and comes back truncated, without answers.
    packet += b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, ("127.0.0.1", port))
            reply = s.recv(65535)
        except OSError:
            return None
    if len(reply) < 12 or struct.unpack(">H", reply[:2])[0] != qid:
        return None
    flags, qdcount, ancount = struct.unpack(">HHH", reply[2:8])
    if flags & 0x0200:
        raise DaemonError(f"truncated DNS reply for {name}")
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(reply, pos) + 4
    answers = []
    for _ in range(ancount):
        pos = skip_name(reply, pos)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos:pos + 10])
        pos += 10
        if rtype == qtype:
            answers.append(reply[pos:pos + length])
        pos += length
    return flags & 0xF, answers


def skip_name(packet, pos):
    while True:
        n = packet[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:  # compression pointer
            return pos + 2
        pos += n + 1


def dns_txt(port, name):
    """The TXT records at name, each a list of its character-strings."""
    r = dns_query(port, name, qtype=16, timeout=2)
    if r is None or r[0] != 0:
        return []
    records = []
    for rdata in r[1]:
        strings, pos = [], 0
        while pos < len(rdata):
            strings.append(rdata[pos + 1:pos + 1 + rdata[pos]])
            pos += 1 + rdata[pos]
        records.append(strings)
    return records


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port answering for .test and .example from its own file only.

    records: list of ("mx", domain, host, pref) | ("a", name, ip) | ("txt", name, [strings]).
    `local=` makes it authoritative for those: an unknown name or type gets
    NXDOMAIN / no data rather than REFUSED (resolvers treat REFUSED as an error).
    """

    def __init__(self, workdir, port, records, probe_name):
        self.dir = os.path.join(workdir, "dnsmasq")
        os.makedirs(self.dir)
        self.port = port
        lines = ["local=/test/", "local=/example/"]
        for r in records:
            if r[0] == "mx":
                lines.append(f"mx-host={r[1]},{r[2]},{r[3]}")
            elif r[0] == "a":
                lines.append(f"host-record={r[1]},{r[2]}")
            elif r[0] == "txt":
                for s in r[2]:
                    if '"' in s or "\\" in s or len(s) > 255:
                        raise DaemonError(f"TXT string dnsmasq cannot carry: {s!r}")
                lines.append(f"txt-record={r[1]}," + ",".join(f'"{s}"' for s in r[2]))
        conf = os.path.join(self.dir, "dnsmasq.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.process = Process("dnsmasq", [
            which("dnsmasq"), "-k", f"--conf-file={conf}", "--no-resolv", "--no-hosts",
            f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--user=nobody", "--group=nogroup", "--pid-file=", "--log-facility=-", "--log-queries",
        ], os.path.join(self.dir, "dnsmasq.log"))
        deadline = time.monotonic() + START_DEADLINE

        def answers():
            self.process.check_alive()
            r = dns_query(self.port, probe_name)
            return r is not None and r[0] == 0 and len(r[1]) == 1

        wait_until(answers, deadline, f"dnsmasq did not answer A {probe_name}",
                   lambda: tail(self.process.log))

    def stop(self):
        self.process.stop()


# ---------------------------------------------------------------- TLS
def self_signed(directory, cn, owner=None):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "2", "-subj", f"/CN={cn}", "-addext",
                        f"subjectAltName=DNS:{cn}"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise DaemonError(f"openssl req failed: {r.stderr}")
    if owner:
        shutil.chown(key, owner, owner)
        os.chmod(key, 0o600)
    return cert, key


# ---------------------------------------------------------------- Postfix
def postfix_master_cf(listen):
    """Debian's stock master.cf without chroot (the instance lives in a temp dir),
    its port-25 smtpd moved to `listen`."""
    out = []
    with open("/usr/share/postfix/master.cf.dist") as f:
        for line in f:
            fields = line.split()
            if line[:1] in ("#", " ", "\t", "\n") or len(fields) < 8:
                out.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = listen
            fields[4] = "n"
            out.append("  ".join(fields[:8]) + (" " + " ".join(fields[8:]) if len(fields) > 8 else "") + "\n")
    return "".join(out)


class Postfix:
    """One Postfix instance: config, queue and data directories under `dir`,
    started with `postfix -c DIR start`, listening on addr:port only."""

    def __init__(self, workdir, name, addr, port, settings):
        self.dir = os.path.join(workdir, name)
        self.conf_dir = os.path.join(self.dir, "etc")
        self.maillog = os.path.join(self.dir, "maillog")
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix", "postfix")
        base = {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(self.dir, "queue"),
            "data_directory": os.path.join(self.dir, "data"),
            # Postfix wants inet_interfaces to be interface addresses (127.0.0.2 is
            # not one); master.cf binds addr:port itself.
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_peername_lookup": "no",  # the client is 127.0.0.1: no DNS outside loopback
            "local_header_rewrite_clients": "",  # content arrives as sent
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "smtp_tls_loglevel": "1",
            "smtpd_tls_loglevel": "1",
        }
        base.update(settings)
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in base.items())
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(postfix_master_cf(f"{addr}:{port}"))
        r = subprocess.run([which("postfix"), "-c", self.conf_dir, "start"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            # its fatal errors go to syslog, which may not run: `postfix check` to stderr
            check = subprocess.run([which("postfix"), "-c", self.conf_dir, "-v", "check"], capture_output=True,
                                   text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "MAIL_LOGTAG": "postfix"})
            raise DaemonError(f"postfix -c {self.conf_dir} start failed:\n{r.stdout}{r.stderr}\n"
                              f"{check.stderr[-2000:]}\n{tail(self.maillog)}")
        wait_until(lambda: tcp_listening(addr, port), time.monotonic() + START_DEADLINE,
                   f"Postfix {name} did not listen on {addr}:{port}", lambda: tail(self.maillog))

    def stop(self):
        subprocess.run([which("postfix"), "-c", self.conf_dir, "stop"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- OpenDKIM
class OpenDkim:
    """OpenDKIM as a verifying milter (Mode v) on a UNIX socket, resolving through
    the loopback DNS server (Nameservers) with libunbound."""

    def __init__(self, workdir, dns_port, authserv_id):
        self.dir = os.path.join(workdir, "opendkim")
        os.makedirs(self.dir)
        shutil.chown(self.dir, "opendkim", "opendkim")
        self.socket = os.path.join(self.dir, "milter.sock")
        conf = os.path.join(self.dir, "opendkim.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "Syslog no",
                "Mode v",
                f"Socket local:{self.socket}",
                "UMask 000",
                "UserID opendkim",
                f"Nameservers 127.0.0.1@{dns_port}",  # libunbound's addr@port
                f"AuthservID {authserv_id}",
                "AlwaysAddARHeader yes",
                # Outpost connects from 127.0.0.1, by default an "internal host" whose
                # mail OpenDKIM would sign instead of verifying.
                "InternalHosts csl:192.0.2.1",
                "",
            ]))
        self.process = Process("opendkim", [which("opendkim"), "-f", "-x", conf],
                               os.path.join(self.dir, "opendkim.log"))

        def ready():
            self.process.check_alive()
            return os.path.exists(self.socket)

        wait_until(ready, time.monotonic() + START_DEADLINE, f"opendkim did not create {self.socket}",
                   lambda: tail(self.process.log))

    def stop(self):
        self.process.stop()


# ---------------------------------------------------------------- rspamd
class Rspamd:
    """rspamd's scanner worker on 127.0.0.1:port with Debian's rules, its DNS on the
    loopback server, its state in its own directory."""

    def __init__(self, workdir, dns_port):
        self.dir = os.path.join(workdir, "rspamd")
        local = os.path.join(self.dir, "local")
        for d in ("run", "db", "log", os.path.join("local", "local.d")):
            os.makedirs(os.path.join(self.dir, d))
        for d in ("run", "db", "log"):
            shutil.chown(os.path.join(self.dir, d), "_rspamd", "_rspamd")
        self.port = free_port("127.0.0.1")
        conf = os.path.join(self.dir, "rspamd.conf")
        with open(conf, "w") as f:
            f.write(f"""\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{self.port}";
    .include "$CONFDIR/worker-normal.inc"
}}
""")
        with open(os.path.join(local, "local.d", "options.inc"), "w") as f:
            f.write(f'dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 2s; retransmits = 2; }}\n')
        # Mail from loopback is "local" to rspamd, which would skip DKIM and SPF.
        for module in ("dkim", "spf"):
            with open(os.path.join(local, "local.d", f"{module}.conf"), "w") as f:
                f.write("check_local = true;\ncheck_authed = true;\n")
        self.log = os.path.join(self.dir, "log", "rspamd.log")
        self.process = Process("rspamd", [
            which("rspamd"), "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", conf,
            "--var", f"LOCAL_CONFDIR={local}", "--var", f"RUNDIR={self.dir}/run",
            "--var", f"DBDIR={self.dir}/db", "--var", f"LOGDIR={self.dir}/log",
        ], os.path.join(self.dir, "stdout.log"))
        self.deadline = time.monotonic() + RSPAMD_START_DEADLINE

    def wait_ready(self):
        def pong():
            self.process.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2) as r:
                    return r.read().strip() == b"pong"
            except OSError:
                return False

        wait_until(pong, self.deadline, "rspamd did not answer /ping",
                   lambda: tail(self.log) + tail(self.process.log))

    def check(self, message, ip, helo, mail_from, rcpt):
        """POST /checkv2; the JSON reply's symbols."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/checkv2", data=message, method="POST",
                                     headers={"IP": ip, "Helo": helo, "From": mail_from, "Rcpt": rcpt})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["symbols"]

    def stop(self):
        self.process.stop()


# ---------------------------------------------------------------- Exim
class Exim:
    """Debian's Exim 4 daemon with its own configuration (-C), as root: it drops to
    Debian-exim for everything after the listening socket (a -C configuration
    costs it its privilege), so it delivers as that user into one maildir."""

    def __init__(self, workdir, addr, port, domain, hostname):
        self.dir = os.path.join(workdir, "exim")
        self.maildir = os.path.join(self.dir, "mail")
        for d in ("spool", "log", "mail", "tls"):
            os.makedirs(os.path.join(self.dir, d))
            shutil.chown(os.path.join(self.dir, d), EXIM_USER, EXIM_USER)
        cert, key = self_signed(os.path.join(self.dir, "tls"), hostname, owner=EXIM_USER)
        self.mainlog = os.path.join(self.dir, "log", "mainlog")
        conf = os.path.join(self.dir, "exim.conf")
        with open(conf, "w") as f:
            f.write(f"""\
exim_user = {EXIM_USER}
exim_group = {EXIM_USER}
exim_path = {EXIM_BIN}
spool_directory = {self.dir}/spool
log_file_path = {self.dir}/log/%slog
pid_file_path = {self.dir}/exim.pid
primary_hostname = {hostname}
daemon_smtp_ports = {port}
local_interfaces = {addr}
domainlist local_domains = {domain}
tls_advertise_hosts = *
tls_certificate = {cert}
tls_privatekey = {key}
acl_smtp_rcpt = acl_check_rcpt
# No DNS from Exim: it has no nameserver option, and the system resolver is not
# on loopback (its own DKIM check would ask it); the verifiers run elsewhere.
host_lookup =
rfc1413_hosts =
keep_environment =

begin acl
acl_check_rcpt:
  accept domains = +local_domains
         control = dkim_disable_verify
  deny   message = relay not permitted

begin routers
local_maildir:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = {self.maildir}
  maildir_format
  user = {EXIM_USER}
  group = {EXIM_USER}
  envelope_to_add
  return_path_add

begin retry
* * F,1m,1m
""")
        os.chmod(conf, 0o644)
        self.process = Process("exim", [EXIM_BIN, "-C", conf, "-bdf", "-q1m"],
                               os.path.join(self.dir, "stdout.log"))

        def listening():
            self.process.check_alive()
            return tcp_listening(addr, port)

        wait_until(listening, time.monotonic() + START_DEADLINE, f"exim did not listen on {addr}:{port}",
                   lambda: tail(self.mainlog) + tail(os.path.join(self.dir, "log", "paniclog")))

    def stop(self):
        self.process.stop()
