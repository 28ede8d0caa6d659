#!/usr/bin/env python3
"""Every `sh` example in docs/*.md runs as written against a live server.

    python3 tests/e2e/docs_examples.py [PATH_TO_OUTPOST]

Starts `outpost serve` (loopback, ephemeral ports, delivery paused so nothing
leaves the machine), adds the user the docs assume (`alice`, domain
`example.com`), then runs the fenced ```sh blocks of each docs/*.md file, in
order, in one bash per file (`set -euo pipefail`, so a failing command or a
`curl --fail-with-body` on an HTTP error fails the block), with what the docs
say to set: OUTPOST_API, OUTPOST_USER, OUTPOST_PASSWORD, OUTPOST_CONFIG and
`outpost` on PATH. Blocks fenced without `sh` are syntax or sample output, not
examples, and are not run. A docs file with no example is not an error; a docs
tree with none at all is. Ends with `N passed, M failed`.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (Server, find_binary, write_config, cli)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "docs-examples-password"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)


def http_addr(server, deadline):
    end = time.time() + deadline
    while time.time() < end:
        for line in list(server.lines):
            m = re.search(r"HTTP API listening http_addr=(\S+)", line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise harness.Failure(f"no HTTP API address logged; log:\n{server.log()}")


def main():
    binary = harness.find_binary()
    passed = failed = 0
    docs = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    with tempfile.TemporaryDirectory() as workdir:
        config = os.path.join(workdir, "outpost.toml")
        # DNS to a closed loopback port: `domain dns` looks up the host name and
        # must get nowhere beyond loopback.
        harness.write_config(config, os.path.join(workdir, "data"), [(f"{harness.HOST}:0", "relay")],
                             '\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
        r = harness.cli(binary, config, "user", "add", "alice", "--domain", "example.com",
                        "--password-stdin", stdin=PASSWORD)
        if r.returncode != 0:
            print(f"FAIL user add: {r.stderr}")
            print("0 passed, 1 failed", flush=True)
            return 1
        server = harness.Server(binary, config)
        try:
            server.wait_for_listeners(["Relay"], time.monotonic() + 30)
            api = f"http://{http_addr(server, 30)}"
            env = harness.child_env()
            env.update(OUTPOST_API=api, OUTPOST_USER="alice", OUTPOST_PASSWORD=PASSWORD,
                       OUTPOST_CONFIG=config,
                       PATH=os.path.dirname(binary) + os.pathsep + env.get("PATH", ""))
            total = 0
            for doc in docs:
                with open(doc) as f:
                    blocks = BLOCK.findall(f.read())
                total += len(blocks)
                name = os.path.relpath(doc, ROOT)
                run_dir = os.path.join(workdir, os.path.basename(doc) + ".run")
                os.makedirs(run_dir)
                # One shell per file: later blocks may use what earlier ones set ($ID).
                script = "set -euo pipefail\n"
                for i, block in enumerate(blocks, 1):
                    script += f"echo '>>> {name} example {i}'\n{block}\n"
                if not blocks:
                    continue
                started = time.time()
                r = subprocess.run(["bash", "-c", script], cwd=run_dir, env=env,
                                   capture_output=True, text=True, timeout=300)
                if r.returncode == 0:
                    passed += 1
                    print(f"ok   {name}: {len(blocks)} example(s) ({time.time() - started:.1f}s)")
                else:
                    failed += 1
                    ran = [l for l in r.stdout.splitlines() if l.startswith(">>> ")]
                    print(f"FAIL {name}: {ran[-1][4:] if ran else 'before the first example'} "
                          f"exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
            if total == 0:
                failed += 1
                print("FAIL no ```sh example found in docs/*.md")
        except harness.Failure as e:
            failed += 1
            print(f"FAIL {e}")
        finally:
            server.stop()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
