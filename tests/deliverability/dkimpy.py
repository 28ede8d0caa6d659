#!/usr/bin/env python3
"""Verifies DKIM signatures with dkimpy, for tests/deliverability/verifiers.rs.

Reads messages from standard input, each as a JSON line
`{"records": {"<selector>._domainkey.<domain>": "v=DKIM1; ...", ...}, "size": N}`
followed by the N bytes of the message, and answers each with one JSON line
`{"results": [[true, ""], [false, "reason"], ...]}`: one entry per DKIM-Signature
field of the message, top first. DNS queries are answered from that message's
records only. Needs dkimpy (python3-dkim) and PyNaCl (python3-nacl) for Ed25519.
"""

import json
import logging
import sys

import dkim


class Reasons(logging.Handler):
    """Keeps what dkimpy logs about a failure, to report why."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def verify(message, records):
    def dns(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        return records.get(name.rstrip(".").lower())

    reasons = Reasons()
    logger = logging.getLogger("dkimpy-verify")
    logger.handlers = [reasons]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        d = dkim.DKIM(message, logger=logger, minkey=1024)
        count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    except Exception as e:  # a message dkimpy cannot even parse fails every signature
        return [[False, f"parse: {type(e).__name__}: {e}"]]
    results = []
    for idx in range(count):
        reasons.lines.clear()
        try:
            ok = bool(d.verify(idx=idx, dnsfunc=dns))
            why = "" if ok else "; ".join(reasons.lines[-3:]) or "verify returned False"
        except Exception as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        results.append([ok, why])
    return results


def main():
    source = sys.stdin.buffer
    while True:
        line = source.readline()
        if not line:
            return
        head = json.loads(line)
        message = source.read(head["size"])
        records = {k.lower(): v.encode() for k, v in head["records"].items()}
        sys.stdout.write(json.dumps({"results": verify(message, records)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
