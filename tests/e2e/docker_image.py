#!/usr/bin/env python3
"""The Dockerfile's image, built and run without Docker.

    python3 tests/e2e/docker_image.py [PATH_TO_OUTPOST]

No Docker engine runs where the tests run, and no registry serves base images
there; Debian's package mirror does. So this suite reads the Dockerfile and does
what Docker would, instruction by instruction, on a Debian bookworm root made by
`debootstrap --variant=minbase` (the same required-priority package set as
`debian:bookworm-slim`):

- the root is made once, from the mirror apt uses on this machine, into
  /var/cache/outpost-tests/bookworm-root (OUTPOST_TEST_CACHE overrides the
  directory); it is built beside its final place and renamed there only when
  debootstrap succeeded, so an existing one is complete. A run that cannot make
  it fails;
- each run stacks an overlay on it (the cached root stays pristine, as a base
  layer does) and interprets the final stage: RUN in a chroot as the current
  USER and WORKDIR with the ENV so far, with /proc and /dev, on the host's
  network as a build has (the stage's apt-get reaches the Debian mirror), COPY
  from the repository (root-owned, as Docker copies), ENV, USER, WORKDIR,
  VOLUME, EXPOSE, STOPSIGNAL, ENTRYPOINT, CMD.
  An instruction this suite does not interpret fails it, so a new one gets
  handled here before it ships;
- the build stage is not re-run: it is a second release build of the whole
  crate (about 17 minutes here) of the sources `cargo test` just built. Its
  `COPY --from` of target/release/outpost takes the binary under test instead;
  the suite checks that the stage builds that binary with `--locked`;
- ENTRYPOINT + CMD run as the image's USER (uid and groups from the image's
  /etc/passwd and /etc/group), in WORKDIR, with only the image's environment,
  as PID 1 of new PID, mount, UTS and network namespaces, with /proc, a minimal
  /dev and net.ipv4.ip_unprivileged_port_start=0 as Docker sets them: so it
  binds 25, 465 and 587 as non-root exactly as in a container;
- from inside that network namespace: the listeners the baked-in configuration
  declares are the ports EXPOSE'd, each answers as its mode says (a 220 banner,
  STARTTLS, implicit TLS, GET /healthz), a user added the way
  docs/production.md says (`docker exec outpost outpost user add`, here nsenter
  into the container's namespaces and root) submits a message that is accepted
  and listed by `outpost queue list`; the store is in the VOLUME, owned by the
  image's user; STOPSIGNAL makes PID 1 exit 0 within shutdown_grace.

Needs root (namespaces, mounts, chroot), debootstrap, util-linux and iproute2.
Ends with `N passed, M failed`.
"""
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402
from inbound_e2e import Failure, check  # noqa: E402

ROOT = harness.repo_root()
CACHE = os.environ.get("OUTPOST_TEST_CACHE", "/var/cache/outpost-tests/bookworm-root")
DEBOOTSTRAP = "/usr/sbin/debootstrap"
DEBOOTSTRAP_DEADLINE = 480  # seconds, within scripts/test.sh's 600 per suite; about 80 here
STEP_DEADLINE = 120  # seconds for one RUN step or one `docker exec`
STARTUP_DEADLINE = 60.0
SHUTDOWN_GRACE = "30s"  # [server] shutdown_grace when the image's configuration does not set it
SOCKET_TIMEOUT = 30.0
# Docker's environment for every process of a container, before ENV.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_CMD = ["bash"]  # debian:bookworm-slim's
CONTAINER_HOSTNAME = "0a1b2c3d4e5f"  # Docker names a container's host after its id
# Set when the suite re-ran itself in a private mount namespace (see main).
PRIVATE_MOUNTS = "OUTPOST_DOCKER_SUITE_PRIVATE_MOUNTS"
CLONE_NEWNET = 0x40000000


def dockerfile_stages(path):
    """[{name, base, steps: [(INSTRUCTION, arguments)]}], one per FROM."""
    lines = []
    pending = ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):  # comments, also inside a continued instruction
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            lines.append(pending + line)
            pending = ""
    stages = []
    for line in lines:
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            base, _, name = re.sub(r"\s+AS\s+", " AS ", rest, flags=re.I).partition(" AS ")
            stages.append({"name": name.strip() or str(len(stages)), "base": base.strip(), "steps": []})
        else:
            check(stages, f"{word} before the first FROM")
            stages[-1]["steps"].append((word, rest))
    return stages


def exec_form(rest):
    """ENTRYPOINT, CMD and RUN: the JSON form as is, the shell form through /bin/sh -c."""
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def apt_mirror():
    """The Debian archive apt uses here (deb822 .sources or one-line .list files)."""
    paths = ["/etc/apt/sources.list"]
    d = "/etc/apt/sources.list.d"
    if os.path.isdir(d):
        paths += sorted(os.path.join(d, n) for n in os.listdir(d))
    for path in paths:
        if not os.path.isfile(path):
            continue
        text = open(path).read()
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == "bookworm":
                    return words[1]
    raise Failure("apt has no bookworm source in /etc/apt/sources.list*")


def base_root():
    """The cached minbase root, made now if missing. Returns (path, seconds spent making it)."""
    if os.path.isfile(os.path.join(CACHE, "usr/bin/env")):
        return CACHE, 0.0
    check(os.access(DEBOOTSTRAP, os.X_OK), f"{DEBOOTSTRAP} is missing (scripts/install-test-deps.sh installs it)")
    mirror = apt_mirror()
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    building = tempfile.mkdtemp(prefix=os.path.basename(CACHE) + ".building-", dir=os.path.dirname(CACHE))
    print(f"making {CACHE}: debootstrap --variant=minbase bookworm {mirror} (once)", flush=True)
    started = time.monotonic()
    try:
        r = subprocess.run([DEBOOTSTRAP, "--variant=minbase", "bookworm", building, mirror],
                           capture_output=True, text=True, timeout=DEBOOTSTRAP_DEADLINE)
        check(r.returncode == 0, f"debootstrap exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}")
        try:
            os.rename(building, CACHE)
        except OSError:
            # Another run finished first: its root is as good as this one.
            check(os.path.isfile(os.path.join(CACHE, "usr/bin/env")), f"cannot put the root at {CACHE}")
    finally:
        if os.path.exists(building):
            shutil.rmtree(building, ignore_errors=True)
    return CACHE, time.monotonic() - started


def image_identity(root, user):
    """Docker's USER: name or uid, optionally :group, resolved in the image's files."""
    name, _, group = user.partition(":")
    passwd = [line.split(":") for line in open(os.path.join(root, "etc/passwd")).read().splitlines() if line]
    groups = [line.split(":") for line in open(os.path.join(root, "etc/group")).read().splitlines() if line]
    entry = next((p for p in passwd if name in (p[0], p[2])), None)
    check(entry is not None, f"USER {user}: no such user in the image's /etc/passwd")
    gid = int(entry[3])
    if group:
        g = next((g for g in groups if group in (g[0], g[2])), None)
        check(g is not None, f"USER {user}: no such group in the image's /etc/group")
        gid = int(g[2])
    supplementary = [int(g[2]) for g in groups if entry[0] in g[3].split(",")]
    return {"uid": int(entry[2]), "gid": gid, "groups": [gid] + supplementary, "home": entry[5] or "/"}


class Image:
    """The final stage's filesystem (an overlay on the cached root) and its configuration."""

    def __init__(self, base, workdir):
        self.root = os.path.join(workdir, "rootfs")
        for d in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(workdir, d))
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={base},upperdir={workdir}/upper,workdir={workdir}/work", self.root],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"cannot mount the overlay: {r.stderr}")
        self.env = {}
        self.user = "root"
        self.workdir = "/"
        self.exposed = set()
        self.volumes = []
        self.stopsignal = "SIGTERM"
        self.entrypoint = []
        self.cmd = BASE_CMD
        self.cmd_set = False

    def environment(self):
        """What every process of the container sees: Docker's defaults, then ENV."""
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": CONTAINER_HOSTNAME,
               "HOME": image_identity(self.root, self.user)["home"]}
        env.update(self.env)
        return env

    def run_as_image(self, argv):
        """argv as a process of the image: chroot as USER, only the image's environment, in WORKDIR."""
        who = image_identity(self.root, self.user)
        return ["chroot", f"--userspec={who['uid']}:{who['gid']}",
                "--groups=" + ",".join(map(str, who["groups"])), self.root,
                "/usr/bin/env", "-i", "-C", self.workdir,
                *(f"{k}={v}" for k, v in self.environment().items()), *argv]

    def copy(self, sources, dest):
        if not dest.startswith("/"):
            dest = os.path.join(self.workdir, dest)
        into_dir = dest.endswith("/") or len(sources) > 1
        for src in sources:
            check(os.path.exists(src), f"COPY source {src} does not exist")
            # A directory's contents are copied, not the directory itself.
            into = into_dir and not os.path.isdir(src)
            target = self.root + (os.path.join(dest, os.path.basename(src)) if into else dest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(src):
                shutil.copytree(src, target, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(src, target)
            # COPY without --chown makes root the owner, whatever owned the source.
            subprocess.run(["chown", "-R", "0:0", target], check=True)
            print(f"  COPY {src} -> {target[len(self.root):]}", flush=True)

    def apply(self, stages, binary):
        """The final stage's instructions, in order."""
        final = stages[-1]
        check(re.fullmatch(r"debian:bookworm(-slim)?", final["base"]),
              f"the runtime stage is FROM {final['base']}; this suite makes only debian:bookworm(-slim)")
        for word, rest in final["steps"]:
            check("$" not in rest or word == "RUN", f"{word} {rest}: variable expansion is not interpreted here")
            if word == "RUN":
                print(f"  RUN {' '.join(rest.split())}", flush=True)
                r = subprocess.run(in_container(self, self.run_as_image(exec_form(rest)), network=False),
                                   capture_output=True, text=True, timeout=STEP_DEADLINE,
                                   env=dict(os.environ, HOSTNAME=CONTAINER_HOSTNAME))
                check(r.returncode == 0, f"RUN {rest} exited {r.returncode}: {r.stdout}{r.stderr}")
            elif word == "COPY":
                args = shlex.split(rest)
                source_stage = next((a.split("=", 1)[1] for a in args if a.startswith("--from=")), None)
                options = [a for a in args if a.startswith("--") and not a.startswith("--from=")]
                check(not options, f"COPY {rest}: options {options} are not interpreted here")
                *sources, dest = [a for a in args if not a.startswith("--")]
                if source_stage is None:
                    self.copy([os.path.join(ROOT, s) for s in sources], dest)
                else:
                    check(sources == [built_binary(stages, source_stage)],
                          f"COPY {rest}: only the build stage's outpost binary is stood in for")
                    self.copy([binary], dest)
            elif word == "ENV":
                if "=" in rest.split()[0]:
                    self.env.update(a.split("=", 1) for a in shlex.split(rest))
                else:
                    key, value = rest.split(None, 1)
                    self.env[key] = value
            elif word == "USER":
                image_identity(self.root, rest)  # Docker fails a USER it cannot resolve at run time
                self.user = rest
            elif word == "WORKDIR":
                self.workdir = os.path.join(self.workdir, rest)
                os.makedirs(self.root + self.workdir, exist_ok=True)
            elif word == "VOLUME":
                # A new named volume starts as a copy of the image's directory, owner included,
                # so the image's own directory stands for it.
                self.volumes += exec_form(rest) if rest.startswith("[") else rest.split()
            elif word == "EXPOSE":
                self.exposed |= {int(p.split("/")[0]) for p in rest.split()}
            elif word == "STOPSIGNAL":
                self.stopsignal = rest if rest.startswith("SIG") else f"SIG{rest}"
            elif word == "ENTRYPOINT":
                self.entrypoint = exec_form(rest)
                if not self.cmd_set:  # the base image's CMD does not apply to a new ENTRYPOINT
                    self.cmd = []
            elif word == "CMD":
                self.cmd = exec_form(rest)
                self.cmd_set = True
            elif word == "LABEL":
                continue
            else:
                raise Failure(f"{word} is not interpreted by this suite: teach it before using it")

    def unmount(self):
        subprocess.run(["umount", self.root], capture_output=True)


def built_binary(stages, name):
    """The path the build stage leaves the binary at, once it checked that it builds it locked."""
    stage = next((s for s in stages if s["name"] == name), None)
    check(stage is not None, f"no stage named {name}")
    workdir = "/"
    builds = []
    for word, rest in stage["steps"]:
        if word == "WORKDIR":
            workdir = os.path.join(workdir, rest)
        elif word == "RUN" and "cargo build" in rest:
            builds.append(rest)
    check(any(re.search(r"cargo build\b.*--release", b) and "--locked" in b and "--bin outpost" in b
              for b in builds), f"stage {name} does not run `cargo build --release --locked --bin outpost`: {builds}")
    return os.path.join(workdir, "target/release/outpost")


# What Docker sets up around a container's first process, run by /bin/sh as PID 1 of
# the new namespaces before it execs the image's command ("$@"). A RUN step keeps the
# host's network (a build has one); a container gets its own (NETWORK_SETUP first).
NETWORK_SETUP = r"""
ip link set lo up
echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start
"""
CONTAINER_SETUP = r"""
root=$1; shift
hostname "$HOSTNAME"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,mode=755 tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,noexec tmpfs "$root/dev/shm"
exec "$@"
"""


def in_container(image, argv, network):
    """argv (run_as_image's) as the first process of a container: PID 1 of new PID, mount
    and UTS namespaces, of a network namespace too when `network`."""
    setup = "set -e" + (NETWORK_SETUP if network else "\n") + CONTAINER_SETUP
    return ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--uts",
            *(["--net"] if network else []), "/bin/sh", "-c", setup, "container-setup", image.root, *argv]


def container_runtime_files(image):
    """/etc/hostname, /etc/hosts and /etc/resolv.conf: Docker puts its own in every container."""
    etc = os.path.join(image.root, "etc")
    with open(os.path.join(etc, "hostname"), "w") as f:
        f.write(CONTAINER_HOSTNAME + "\n")
    with open(os.path.join(etc, "hosts"), "w") as f:
        f.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"127.0.1.1\t{CONTAINER_HOSTNAME}\n")
    # Like Docker's default bridge: the host's resolvers. Nothing answers from the isolated
    # network namespace, which is all this suite needs (it delivers nothing).
    shutil.copy("/etc/resolv.conf", os.path.join(etc, "resolv.conf"))


def seconds(duration):
    """A configuration duration ("30s", "5m", "2h", "5d") in seconds."""
    m = re.fullmatch(r"(\d+)([smhd])", duration)
    check(m, f"unreadable duration {duration!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def kill_container(proc):
    """SIGKILL to PID 1 of the container (which ends its namespace) and to its unshare."""
    try:
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
    except FileNotFoundError:
        children = []
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait(timeout=30)


def in_namespace_of(pid):
    """Moves this thread into the network namespace of pid (what `nsenter --net` does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into the network namespace of {pid}")
    finally:
        os.close(fd)


def child_pid(pid, deadline):
    """The one child of pid (unshare --fork's: PID 1 of the container)."""
    while time.monotonic() < deadline:
        try:
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except FileNotFoundError:
            raise Failure("the container's unshare exited")
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise Failure("the container's PID 1 did not appear")


def main():
    binary = harness.find_binary()
    if os.geteuid() != 0:
        print("FAIL needs root (namespaces, mounts, chroot): CI runs as root; here run it with sudo")
        print("0 passed, 1 failed", flush=True)
        return 1
    if os.environ.get(PRIVATE_MOUNTS) != "1":
        # Every mount of this suite (the overlay, /proc and /dev of the container) lives in a
        # mount namespace that ends with it, even if it is killed.
        os.environ[PRIVATE_MOUNTS] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                              sys.executable, os.path.abspath(__file__), binary])
    suite = harness.Suite()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="outpost-docker-")
    image = server = None
    state = {}
    try:
        def make_root():
            path, spent = base_root()
            state["base"] = path
            print(f"  bookworm root: {path} ({'made in %.0fs' % spent if spent else 'cached'})", flush=True)

        suite.run("a Debian bookworm minbase root (debootstrap, made once, then cached)", make_root)
        if "base" not in state:
            return finish(suite, started)

        def build():
            stages = dockerfile_stages(os.path.join(ROOT, "Dockerfile"))
            check(len(stages) >= 2, f"expected a build stage and a runtime stage, found {len(stages)}")
            nonlocal image
            image = Image(state["base"], workdir)
            image.apply(stages, binary)
            check(image.entrypoint + image.cmd, "the image has neither ENTRYPOINT nor CMD")
            container_runtime_files(image)
            state["built"] = True

        suite.run("the runtime stage builds (its RUN, COPY, ENV, USER, WORKDIR)", build)
        if "built" not in state:
            return finish(suite, started)

        def read_config():
            path = image.environment().get("OUTPOST_CONFIG")
            check(path, "the image's environment has no OUTPOST_CONFIG: which configuration does it run?")
            check(os.path.isfile(image.root + path), f"OUTPOST_CONFIG={path} is not a file of the image")
            with open(image.root + path, "rb") as f:
                state["config"] = tomllib.load(f)
            state["config_path"] = path

        suite.run("OUTPOST_CONFIG names a configuration in the image", read_config)
        if "config" not in state:
            return finish(suite, started)
        config, config_path = state["config"], state["config_path"]
        who = image_identity(image.root, image.user)
        listeners = {int(l["addr"].rsplit(":", 1)[1]): l["mode"] for l in config.get("listeners", [])}
        http_port = int(config.get("http", {}).get("addr", ":0").rsplit(":", 1)[1])
        grace = seconds(config.get("server", {}).get("shutdown_grace", SHUTDOWN_GRACE))

        def ports_exposed():
            declared = set(listeners) | ({http_port} if http_port else set())
            check(image.exposed == declared, f"EXPOSE {sorted(image.exposed)}, configured {sorted(declared)}")
            check(min(declared) < 1024 and who["uid"] != 0,
                  f"expected a privileged port bound by a non-root USER (uid {who['uid']}, ports {declared})")

        suite.run(f"EXPOSE is what {config_path} listens on", ports_exposed)

        env = dict(os.environ, HOSTNAME=CONTAINER_HOSTNAME)
        command = in_container(image, image.run_as_image(image.entrypoint + image.cmd), network=True)
        print(f"  run: {' '.join(image.entrypoint + image.cmd)} as {image.user} (uid {who['uid']}) "
              f"in {image.workdir}", flush=True)
        server = harness.Server(binary, config_path, command=command, env=env)
        modes = {"relay": "Relay", "submission": "Submission", "submissions": "Submissions"}

        def start():
            bound = server.wait_for_listeners({modes[m] for m in listeners.values()},
                                              time.monotonic() + STARTUP_DEADLINE)
            # Its own defaults would listen too: these ports say it read the image's configuration.
            check(sorted(bound.values()) == sorted(listeners), f"listening on {bound}, configured {listeners}")
            state["pid"] = child_pid(server.proc.pid, time.monotonic() + STARTUP_DEADLINE)
            status = open(f"/proc/{state['pid']}/status").read()
            nspid = re.search(r"^NSpid:\s*(.*)$", status, re.M).group(1).split()
            check(nspid[-1] == "1", f"outpost is pid {nspid[-1]} in its namespace, not 1")
            uids = re.search(r"^Uid:\s*(.*)$", status, re.M).group(1).split()
            check(set(uids) == {str(who["uid"])}, f"outpost runs with uids {uids}, not {who['uid']}")
            exe = os.readlink(f"/proc/{state['pid']}/exe")
            check(exe == image.root + image.entrypoint[0], f"PID 1 is {exe}")

        suite.run(f"`{' '.join(image.entrypoint + image.cmd)}` starts as PID 1, user {image.user}", start)
        if "pid" not in state:
            print(f"log:\n{server.log()}", flush=True)
            return finish(suite, started)
        in_namespace_of(state["pid"])

        def smtp_port(port, mode):
            if mode == "submissions":
                with smtplib.SMTP_SSL("127.0.0.1", port, timeout=SOCKET_TIMEOUT,
                                      context=harness.tls_context()) as s:
                    check(s.sock.version() in ("TLSv1.2", "TLSv1.3"), f"TLS version {s.sock.version()}")
                    code, _ = s.ehlo()
                    check(code == 250 and s.has_extn("auth"), f"EHLO {code}, AUTH offered: {s.has_extn('auth')}")
            else:
                with smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT) as s:
                    code, _ = s.ehlo()
                    check(code == 250 and s.has_extn("starttls"), f"EHLO {code}, STARTTLS: {s.has_extn('starttls')}")
                    code, _ = s.starttls(context=harness.tls_context())
                    check(code == 220, f"STARTTLS answered {code}")

        for port, mode in sorted(listeners.items()):
            what = "implicit TLS" if mode == "submissions" else "a banner and STARTTLS"
            suite.run(f"port {port} ({mode}) answers with {what}", smtp_port, port, mode)

        def healthz():
            no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with no_proxy.open(f"http://127.0.0.1:{http_port}/healthz", timeout=SOCKET_TIMEOUT) as r:
                body = json.load(r)
            check(body == {"status": "ok"}, f"/healthz said {body}")

        if http_port:
            suite.run(f"port {http_port} (HTTP API) answers GET /healthz", healthz)

        def docker_exec(*args, stdin=None):
            """`docker exec CONTAINER ARGS`: the container's namespaces, root, WORKDIR, USER and ENV."""
            return subprocess.run(
                ["nsenter", f"--target={state['pid']}", "--all", "--root", "--wd",
                 f"--setuid={who['uid']}", f"--setgid={who['gid']}",
                 "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in image.environment().items()), *args],
                input=stdin, capture_output=True, text=True, timeout=STEP_DEADLINE)

        def submit():
            r = docker_exec("outpost", "user", "add", harness.USER, "--domain", "example.com",
                            "--password-stdin", stdin=harness.PASSWORD + "\n")
            check(r.returncode == 0, f"docker exec ... user add exited {r.returncode}: {r.stdout}{r.stderr}")
            port = next(p for p, m in sorted(listeners.items()) if m == "submission")
            with smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT) as s:
                s.starttls(context=harness.tls_context())
                s.login(harness.USER, harness.PASSWORD)
                state["queued"] = harness.send_via(s, "bob@example.net", "docker")
            r = docker_exec("outpost", "queue", "list")
            check(state["queued"] in r.stdout, f"queue list lacks {state['queued']}: {r.stdout}{r.stderr}")

        suite.run("a user added by `docker exec` submits a message, accepted and queued", submit)

        def data_in_volume():
            data_dir = config.get("data_dir", "")
            check(data_dir in image.volumes, f"data_dir {data_dir} is not a VOLUME ({image.volumes})")
            host_dir = image.root + data_dir
            names = []
            for top, dirs, files in os.walk(host_dir):
                for n in [""] + dirs + files:
                    st = os.lstat(os.path.join(top, n))
                    check((st.st_uid, st.st_gid) == (who["uid"], who["gid"]),
                          f"{os.path.join(top, n)[len(image.root):]} is owned by "
                          f"{st.st_uid}:{st.st_gid}, not {image.user}")
                names += [os.path.relpath(os.path.join(top, n), host_dir) for n in files]
            check("outpost.db" in names, f"no store in {data_dir}: {names}")
            print(f"  {data_dir}: {', '.join(sorted(names))}", flush=True)

        suite.run("the store is in the VOLUME, every file owned by the image's user", data_in_volume)

        def stops():
            stop = getattr(signal, image.stopsignal)
            sent = time.monotonic()
            os.kill(state["pid"], stop)
            try:
                code = server.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                raise Failure(f"still running {grace}s (shutdown_grace) after {image.stopsignal}")
            took = time.monotonic() - sent
            check(code == 0, f"exited {code} after {image.stopsignal}; log:\n{server.log()}")
            print(f"  exited 0 {took:.1f}s after {image.stopsignal}", flush=True)

        suite.run(f"STOPSIGNAL ({image.stopsignal}) stops PID 1 with status 0 within shutdown_grace", stops)
    finally:
        if server is not None and server.proc.poll() is None:
            kill_container(server.proc)
        if image is not None:
            image.unmount()
        shutil.rmtree(workdir, ignore_errors=True)
    return finish(suite, started)


def finish(suite, started):
    print(f"docker image suite took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
