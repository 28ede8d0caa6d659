#!/usr/bin/env python3
"""The README's set-up and quickstart, followed as written in a fresh clone.

    python3 tests/e2e/readme_walkthrough.py [PATH_TO_OUTPOST]

Clones the repository (its committed HEAD) into an empty directory and runs the
```sh blocks of the README's "Set-up" and "Quickstart" sections there, in order,
in one bash (`set -euo pipefail`: any failing command fails the walk-through),
then stops the relay with SIGTERM and expects exit status 0. The README's
configuration block is loaded with `outpost config check` too.

Two departures from the letter, both because this runs inside the test command:
- `scripts/test.sh` is not run (it is the command running this suite);
- `cargo build --release` would compile every dependency again in the clone
  (about 17 minutes on 2 cores, on top of the test build), so the binary under
  test is copied to `target/release/outpost` instead. With
  WALKTHROUGH_FULL_BUILD=1 the build runs as written (sharing the target
  directory of CARGO_TARGET_DIR when it is set).
The relay command (`... serve &`) runs in the background as written; the script
then waits (with a deadline) for its `Outpost is running` line, as a person
would, before the next command.

Ends with `N passed, M failed`.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (find_binary, child_env)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
STARTUP_DEADLINE = 60


def section(readme, title):
    """The text of the `## title...` section, up to the next `## `."""
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## )", readme, re.S | re.M)
    return m.group(1) if m else ""


def script_for(readme, binary):
    blocks = BLOCK.findall(section(readme, "Set-up")) + BLOCK.findall(section(readme, "Quickstart"))
    lines = ["set -euo pipefail"]
    for block in blocks:
        for line in block.splitlines():
            stripped = line.strip()
            if stripped == "scripts/test.sh":
                lines.append("echo '(scripts/test.sh: not run, it is running this suite)'")
            elif stripped == "cargo build --release" and os.environ.get("WALKTHROUGH_FULL_BUILD") != "1":
                lines.append(f"mkdir -p target/release && cp '{binary}' target/release/outpost"
                             "  # instead of: cargo build --release")
            elif re.search(r"outpost\b.*\bserve &$", stripped):
                command = stripped[:-1].strip()
                lines.append(f"{command} >serve.out 2>serve.log &")
                lines.append("echo $! > serve.pid")
                lines.append(f"timeout {STARTUP_DEADLINE} bash -c 'until grep -q \"Outpost is running\" serve.log; do "
                             "kill -0 $(cat serve.pid) || exit 1; sleep 0.1; done' "
                             "|| { echo 'the relay did not start:'; cat serve.log; exit 1; }")
            else:
                lines.append(line)
    return "\n".join(lines) + "\n", len(blocks)


def main():
    binary = harness.find_binary()
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}: {detail}")

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    check("the README points nowhere outside the repository", "../shared" not in readme)

    with tempfile.TemporaryDirectory() as workdir:
        # The configuration reference loads.
        config_block = re.search(r"^## Configuration.*?^```toml\n(.*?)^```$", readme, re.S | re.M)
        check("the README has a configuration block", config_block is not None)
        if config_block:
            path = os.path.join(workdir, "readme.toml")
            with open(path, "w") as f:
                f.write(config_block.group(1))
            r = subprocess.run([binary, "--config", path, "config", "check"], capture_output=True,
                               text=True, env=harness.child_env(), timeout=60)
            check("the README's configuration block loads", r.returncode == 0, r.stdout + r.stderr)

        clone = os.path.join(workdir, "outpost")
        r = subprocess.run(["git", "clone", "--quiet", ROOT, clone], capture_output=True, text=True,
                           timeout=300)
        check("git clone", r.returncode == 0, r.stderr)
        if r.returncode != 0:
            print(f"{passed} passed, {failed} failed", flush=True)
            return 1
        with open(os.path.join(clone, "README.md")) as f:
            script, blocks = script_for(f.read(), binary)
        check("the set-up and quickstart have commands", blocks >= 3, f"{blocks} block(s)")
        env = harness.child_env()
        env.pop("OUTPOST_PASSWORD", None)
        try:
            r = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                               timeout=600)
            ok = r.returncode == 0
            check("every command of the set-up and quickstart succeeds", ok,
                  f"exit {r.returncode}\n--- script\n{script}\n--- stdout\n{r.stdout[-4000:]}\n"
                  f"--- stderr\n{r.stderr[-4000:]}")
            if ok:
                check("swaks got the message queued", "250 2.0.0 Ok: queued as " in r.stdout, r.stdout[-3000:])
                check("queue list shows it", "-- 1 message(s) in the queue" in r.stdout, r.stdout[-3000:])
        finally:
            pid_file = os.path.join(clone, "serve.pid")
            if os.path.exists(pid_file):
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                try:
                    os.kill(pid, signal.SIGTERM)
                    status = wait_exit(pid, 30)
                    check("the relay stops on SIGTERM", status is not None, "still running after 30 s")
                except ProcessLookupError:
                    check("the relay was still running at the end", False, "it had exited")
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def wait_exit(pid, deadline):
    """Waits for a process that is not our child (bash started it) to be gone."""
    import time
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return None


if __name__ == "__main__":
    sys.exit(main())
