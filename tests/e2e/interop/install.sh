#!/usr/bin/env bash
# Installs what tests/e2e/interop_e2e.py needs beyond Debian's packages that
# .ci/run installs (dnsmasq-base, postfix, opendkim, rspamd, msmtp, ...). Run as root;
# idempotent.
#
# Exim: Debian's exim4 packages conflict with postfix (both are the system's
# mail-transport-agent), so exim4-daemon-light is not installed but downloaded with
# apt-get and unpacked into tests/e2e/interop/exim-root/; the suite runs that binary
# with its own configuration. Its libraries are ordinary packages .ci/run installs.
# The binary runs as the compiled-in user Debian-exim, created here as exim4-base's
# postinst would.
# nodemailer: `npm ci` in tests/e2e/interop/node/ from the committed lock file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! getent passwd Debian-exim >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
fi

candidate() { apt-cache policy exim4-daemon-light | sed -n 's/^ *Candidate: //p'; }
version=$(candidate)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    apt-get update -qq
    version=$(candidate)
fi
[ -n "$version" ] && [ "$version" != "(none)" ] || { echo "exim4-daemon-light: no candidate in apt's lists" >&2; exit 1; }
if [ "$(cat "$here/exim-root/VERSION" 2>/dev/null)" != "$version" ]; then
    echo "unpacking exim4-daemon-light $version into $here/exim-root"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # apt downloads as its sandbox user _apt, who must be able to write there
    if getent passwd _apt >/dev/null; then chown _apt "$tmp"; fi
    (cd "$tmp" && apt-get download -qq "exim4-daemon-light=$version" </dev/null)
    rm -rf "$here/exim-root"
    dpkg-deb -x "$tmp"/exim4-daemon-light_*.deb "$here/exim-root"
    echo "$version" >"$here/exim-root/VERSION"
fi
"$here/exim-root/usr/sbin/exim4" -C /dev/null -bV >/dev/null 2>&1 || {
    "$here/exim-root/usr/sbin/exim4" -C /dev/null -bV >&2 || true
    echo "the unpacked exim does not run (missing libraries?)" >&2
    exit 1
}

if [ ! -d "$here/node/node_modules/nodemailer" ] ||
    ! cmp -s "$here/node/package-lock.json" "$here/node/node_modules/.package-lock.json.installed"; then
    echo "installing: nodemailer (npm ci)"
    (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    cp "$here/node/package-lock.json" "$here/node/node_modules/.package-lock.json.installed"
fi
