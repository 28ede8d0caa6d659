#!/usr/bin/env python3
"""The deployment files in the repo are what docs/production.md says they are.

    python3 tests/e2e/deploy_files.py [PATH_TO_OUTPOST]

- docs/outpost.example.toml loads (`outpost config check`);
- contrib/outpost.service passes `systemd-analyze verify` (which works without a
  running systemd), with ExecStart pointed at the binary under test since
  /usr/local/bin/outpost is not installed here; any warning about the unit
  (an unknown key or section, a directive ignored) fails too;
- the Dockerfile and contrib/docker.toml are tested by running the image they
  make: tests/e2e/docker_image.py.

Ends with `N passed, M failed`.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (find_binary)

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


def run(cmd, env=None, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def config_loads(binary, path):
    env = dict(os.environ)
    env.pop("OUTPOST_CONFIG", None)
    r = run([binary, "--config", path, "config", "check"], env=env)
    check(f"{os.path.relpath(path, ROOT)} loads", r.returncode == 0 and "configuration OK" in r.stdout,
          r.stdout + r.stderr)
    return r


def systemd_unit(binary, workdir):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        check("systemd-analyze is installed (Debian package systemd)", False, "not found")
        return
    with open(os.path.join(ROOT, "contrib/outpost.service")) as f:
        unit = f.read()
    check("the unit runs /usr/local/bin/outpost", "ExecStart=/usr/local/bin/outpost serve" in unit)
    for needed in ("User=outpost", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM"):
        check(f"the unit has {needed}", needed in unit)
    path = os.path.join(workdir, "outpost.service")
    with open(path, "w") as f:
        f.write(unit.replace("/usr/local/bin/outpost", os.path.abspath(binary)))
    r = run([analyze, "verify", path])
    noise = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    check("systemd-analyze verify accepts the unit", r.returncode == 0 and not noise,
          f"exit {r.returncode}: " + "\n".join(noise))
    # The ExecStartPre the unit runs, as it runs it.
    env = dict(os.environ, OUTPOST_CONFIG=os.path.join(ROOT, "docs/outpost.example.toml"))
    pre = re.search(r"^ExecStartPre=/usr/local/bin/outpost (.*)$", unit, re.M)
    r = run([binary] + pre.group(1).split(), env=env)
    check("the unit's ExecStartPre succeeds", r.returncode == 0, r.stdout + r.stderr)


def main():
    binary = harness.find_binary()
    if not os.access(binary, os.X_OK):
        print(f"FAIL outpost binary not found: {binary}")
        print("0 passed, 1 failed", flush=True)
        return 1
    with tempfile.TemporaryDirectory() as workdir:
        try:
            r = config_loads(binary, os.path.join(ROOT, "docs/outpost.example.toml"))
            check("the example configuration has no warning but the certificate files",
                  all("cannot read /etc/outpost/tls/" in l for l in r.stdout.splitlines()
                      if l.startswith("warning:")), r.stdout)
            systemd_unit(binary, workdir)
        except Exception as e:  # a crash of the suite is a failure, not a skip
            check("the suite ran to the end", False, repr(e))
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
