#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine; quick and silent when
# everything is already there. scripts/test.sh runs it first, so the README's one
# test command works on a clean machine by itself (and .ci/run is just that command).
#
# The package lists below are the ONE place that names the tests' dependencies:
# add a Debian package to `debian`, a pip requirement to `pip_requirements` (with
# the python module it provides in `pip_modules`), an npm package to `npm_packages`.
set -euo pipefail

# Debian packages:
#   swaks, libnet-ssleay-perl  real SMTP client of the e2e suites and the quickstart
#   openssl                    openssl s_client in the e2e suites
#   python3, python3-pip       the e2e suites (pip for what Debian lacks)
#   postfix                    /usr/sbin/smtp-sink, the real receiving MTA of
#                              tests/delivery/interop.rs and tests/deliverability/checks.rs
#                              and tests/e2e/postfix_satellite_e2e.py runs as a satellite
#   libsasl2-modules           the satellite's SASL PLAIN/LOGIN client mechanisms
#   testssl.sh                 tests/e2e/tls_audit.py (about 90 s)
#   dnsmasq-base, opendkim,    tests/e2e/interop_e2e.py: its DNS server, verifiers, a
#   rspamd, msmtp              client; and the libraries of the Exim binary that
#   libgnutls-dane0 libidn12   tests/e2e/interop/install.sh unpacks (exim4 itself
#   libnsl2 libdb5.3           conflicts with postfix)
#   libpcre2-8-0
#   systemd                    systemd-analyze verify of contrib/outpost.service
#   curl, jq                   the examples of docs/*.md (tests/e2e/docs_examples.py)
#   git                        the README walk-through clones the repo (tests/e2e/readme_walkthrough.py)
#   chromium, chromium-driver  the headless browser tests/e2e/web_dashboard.py drives
#                              (with Selenium; nothing downloads a browser)
#   debootstrap                the Debian bookworm root tests/e2e/docker_image.py builds
#                              the Dockerfile's image on (no Docker engine needed)
#   faketime                   libfaketime: one node's clock set 30 s off in
#                              tests/operations/cluster.rs (clock skew)
#   npm                        (Debian's, only when the machine has none) nodemailer for
#                              the interop suite, axe-core for the dashboard suite
debian=(
    swaks libnet-ssleay-perl openssl python3 python3-pip postfix libsasl2-modules testssl.sh
    systemd curl jq git
    dnsmasq-base opendkim rspamd msmtp
    libgnutls-dane0 libidn12 libnsl2 libdb5.3 libpcre2-8-0
    chromium chromium-driver
    debootstrap
    faketime
)
command -v npm >/dev/null || debian+=(npm)
# pip packages, into the python3 first on PATH (which may not be Debian's: pyenv,
# venvs), so the suites import them whatever interpreter runs them.
# schemathesis 3.39 needs a hypothesis release it works with (later ones break it).
pip_requirements=("schemathesis==3.39.16" "hypothesis==6.122.3" dkimpy pynacl "selenium==4.*")
# What `import` must find, with the version pinned above when there is one.
pip_check='
import sys, schemathesis, hypothesis, dkim, nacl, selenium
sys.exit(not (schemathesis.__version__ == "3.39.16" and hypothesis.__version__ == "6.122.3"))
'
npm_packages=()

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi

missing=()
for p in "${debian[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing (apt): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Postfix asks how to configure itself: it is only wanted for smtp-sink.
    echo "postfix postfix/main_mailer_type select No configuration" |
        "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

if ! python3 -c "$pip_check" 2>/dev/null; then
    echo "installing (pip, for $(command -v python3)): ${pip_requirements[*]}"
    python3 -m pip install --quiet --break-system-packages "${pip_requirements[@]}" </dev/null
fi

if [ "${#npm_packages[@]}" -gt 0 ]; then
    for p in "${npm_packages[@]}"; do
        if ! npm ls -g --depth=0 "$p" >/dev/null 2>&1; then
            echo "installing (npm): $p"
            "${sudo[@]}" npm install -g --silent "$p" </dev/null
        fi
    done
fi

for tool in cargo swaks openssl python3 curl jq git systemd-analyze /usr/sbin/smtp-sink node npm /usr/bin/chromium /usr/bin/chromedriver /usr/sbin/debootstrap; do
    command -v "$tool" >/dev/null || { echo "missing tool after install: $tool" >&2; exit 1; }
done
if ! command -v testssl >/dev/null && ! command -v testssl.sh >/dev/null; then
    echo "missing tool after install: testssl.sh" >&2
    exit 1
fi
# Exim (unpacked from its Debian package) and nodemailer (npm ci) for the interop suite.
bash tests/e2e/interop/install.sh
# axe-core, at the version of the committed package-lock.json, for the dashboard suite.
if [ ! -f tests/e2e/axe/node_modules/axe-core/axe.min.js ]; then
    echo "installing (npm ci): axe-core"
    (cd tests/e2e/axe && npm ci --no-audit --no-fund --quiet </dev/null)
fi
