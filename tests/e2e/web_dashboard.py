#!/usr/bin/env python3
"""Browser tests of the web dashboard in real headless Chromium.

Usage:
    python3 tests/e2e/web_dashboard.py [PATH_TO_OUTPOST]

Runs `outpost serve` relaying every domain to a small SMTP sink on 127.0.0.1 that
accepts most recipients, refuses `nobody@...` (550) and defers `later@...` once
(451). Debian's chromium and chromium-driver are driven by Selenium (nothing
downloads a browser). Signed in as alice it sends mail through SMTP and the API,
then checks the overview's counts, finds a message by recipient and reads the
remote reply of its attempt, adds a suppression through the form (and sees it in
`GET /v1/suppressions`), adds a domain (and sees its DKIM record), and retries the
deferred message from the queue page until it is delivered. Signed in as bob it
sees none of alice's messages or domains, and her message's URL is not found. A
form POST without the CSRF token, and one from another site, are refused. Wrong
passwords keep the form on /login with a message, then the address is locked.
axe-core (tests/e2e/axe, from npm) checks the main pages: no critical violation.

With OUTPOST_SCREENSHOTS=DIR set, a screenshot of each page is saved in DIR
(docs/screenshots/ holds the committed ones).

Needs: chromium, chromium-driver (Debian), selenium (pip) and
tests/e2e/axe/node_modules (npm ci there); .ci/run installs them. The last line
is `N passed, M failed`.
"""

import base64
import http.server
import json
import os
import re
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_e2e as harness  # noqa: E402  (shared: Server, Suite, cli, find_binary)

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    print("FAIL selenium is not installed (pip install selenium)")
    print("0 passed, 1 failed", flush=True)
    sys.exit(1)

HOST = harness.HOST
DEADLINE = 30.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "axe", "node_modules", "axe-core", "axe.min.js")
ALICE = ("alice", "alice dashboard password 1")
BOB = ("bob", "bob dashboard password 22")
ROOT = ("root", "root dashboard password 333")
MAX_FAILURES = 3
SHOTS = os.environ.get("OUTPOST_SCREENSHOTS")
Failure = harness.Failure
check = harness.check


class Sink:
    """An SMTP server: 550 for `nobody@`, 451 once for `later@`, 250 otherwise."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.deferred = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _rcpt(self, line):
        address = line[8:].strip().strip(b"<>").lower()
        if address.startswith(b"nobody@"):
            return b"550 5.1.1 <" + address + b">: Recipient address rejected: User unknown\r\n"
        if address.startswith(b"later@"):
            with self.lock:
                if address not in self.deferred:
                    self.deferred.add(address)
                    return b"451 4.2.0 Mailbox busy, please retry\r\n"
        return b"250 2.1.5 ok\r\n"

    def _session(self, conn):
        conn.settimeout(DEADLINE)
        f = conn.makefile("rb")
        conn.sendall(b"220 mx.sink.test ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-mx.sink.test\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n")
                elif verb == b"RCPT":
                    conn.sendall(self._rcpt(line))
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    conn.sendall(b"250 2.0.0 Ok: queued as SINK1\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")
        finally:
            conn.close()

    def close(self):
        self.sock.close()


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, who, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=DEADLINE) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def wait_states(self, who, queue_id, states):
        end = time.monotonic() + DEADLINE
        while True:
            status, view = self.call("GET", f"/v1/messages/{queue_id}", who)
            check(status == 200, f"status of {queue_id}: {status} {view}")
            got = [r["status"] for r in view["recipients"]]
            if all(s in states for s in got):
                return view
            if time.monotonic() > end:
                raise Failure(f"{queue_id} stayed {got}, wanted {states}")
            time.sleep(0.05)


def http_port(server, deadline):
    """The HTTP listener's port, from the `HTTP API listening http_addr=` line."""
    while time.monotonic() < deadline:
        for line in list(server.lines):
            m = re.search(r"HTTP API listening http_addr=\S+:(\d+)", line)
            if m:
                return int(m.group(1))
        time.sleep(0.05)
    raise Failure(f"no HTTP listening line; log:\n{server.log()}")


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Dashboard:
    """One browser session against the dashboard."""

    def __init__(self, driver, base):
        self.d = driver
        self.base = base

    def open(self, path):
        self.d.get(self.base + path)

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def wait_text(self, text):
        try:
            # The page may be replaced while it is read (a form that posts and
            # redirects): a stale body is read again, not a failure.
            WebDriverWait(self.d, DEADLINE, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: text in d.find_element(By.TAG_NAME, "body").text)
        except TimeoutException:
            raise Failure(f"{text!r} never appeared on {self.d.current_url}:\n{self.text()[:2000]}")

    def sign_in(self, who, fresh=True):
        if fresh:
            self.open("/login")
        self.d.find_element(By.NAME, "username").send_keys(who[0])
        self.d.find_element(By.NAME, "password").send_keys(who[1])
        self.d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

    def sign_out(self):
        self.d.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        WebDriverWait(self.d, DEADLINE).until(lambda d: "/login" in d.current_url)

    def stat(self, key):
        return int(self.d.find_element(By.CSS_SELECTOR, f"[data-stat='{key}'] .value").text)

    def status_of(self, path):
        """The HTTP status of a same-origin GET, with this session's cookies."""
        return self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {redirect: 'manual'}).then(r => done(r.status), e => done(String(e)));",
            path)

    def shot(self, name):
        """The whole page, beyond the window (Chromium's DevTools screenshot)."""
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            png = self.d.execute_cdp_cmd("Page.captureScreenshot",
                                         {"format": "png", "captureBeyondViewport": True})
            with open(os.path.join(SHOTS, f"{name}.png"), "wb") as f:
                f.write(base64.b64decode(png["data"]))

    def axe(self, path):
        self.open(path)
        with open(AXE) as f:
            self.d.execute_script(f.read())
        result = self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map("
            "v => ({id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help}))), e => done(String(e)));")
        check(isinstance(result, list), f"axe did not run on {path}: {result}")
        critical = [v for v in result if v["impact"] == "critical"]
        check(not critical, f"critical accessibility violations on {path}: {critical}")
        return result


def smtp_send(port, who, sender, recipients, subject):
    """Submission with STARTTLS and AUTH; the queue id from the DATA reply."""
    with smtplib.SMTP(HOST, port, timeout=DEADLINE) as smtp:
        smtp.starttls(context=harness.tls_context())
        smtp.login(*who)
        smtp.mail(sender)
        for r in recipients:
            code, reply = smtp.rcpt(r)
            check(code == 250, f"RCPT {r}: {code} {reply!r}")
        body = f"From: <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n\r\nhello\r\n"
        code, reply = smtp.data(body)
        check(code == 250, f"DATA: {code} {reply!r}")
        return harness.QUEUED.search(reply.decode()).group(1)


class CrossSite:
    """A page on another site (localhost vs 127.0.0.1) with a form that posts to
    the dashboard, as a malicious page would."""

    def __init__(self, target):
        page = (f'<!doctype html><form id="f" method="post" action="{target}/suppressions">'
                '<input name="domain" value="alice.example"><input name="address" value="csrf@dest.example">'
                '</form><script>document.getElementById("f").submit()</script>').encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer((HOST, 0), Handler)
        self.url = f"http://localhost:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def main():
    binary = harness.find_binary()
    suite = harness.Suite()
    started = time.monotonic()
    for path in (CHROMIUM, CHROMEDRIVER, AXE):
        if not os.path.exists(path):
            print(f"FAIL {path} is missing (.ci/run installs it)")
            print("0 passed, 1 failed", flush=True)
            return 1
    workdir = tempfile.mkdtemp(prefix="outpost-web-e2e-")
    data_dir = os.path.join(workdir, "data")
    config = os.path.join(workdir, "outpost.toml")
    sink = Sink()
    with open(config, "w") as f:
        f.write("\n".join([
            f'hostname = "{harness.HOSTNAME}"', f'data_dir = "{data_dir}"',
            "[[listeners]]", f'addr = "{HOST}:0"', 'mode = "submission"',
            "[auth]", f"max_failures = {MAX_FAILURES}",
            "[http]", f'addr = "{HOST}:0"',
            # A deferred message stays deferred until the queue page retries it.
            "[delivery]", 'retry = ["1h"]',
            "[[routes]]", 'domain = "*"', f'to = "{HOST}:{sink.port}"', 'tls = "none"', ""]))
    for (name, password), domains in ((ALICE, ["alice.example", "news.alice.example"]), (BOB, ["bob.example"]),
                                      (ROOT, ["root.example"])):
        args = ["user", "add", name, "--password-stdin"] + (["--admin"] if name == "root" else [])
        for d in domains:
            args += ["--domain", d]
        done = harness.cli(binary, config, *args, stdin=password + "\n")
        if done.returncode != 0:
            print(f"FAIL user add {name}: {done.stderr}")
            print("0 passed, 1 failed", flush=True)
            return 1
    server = harness.Server(binary, config)
    drivers = []
    cross = None
    try:
        deadline = time.monotonic() + harness.STARTUP_DEADLINE
        smtp_port = server.wait_for_listeners(["Submission"], deadline)["Submission"]
        base = f"http://{HOST}:{http_port(server, deadline)}"
        api = Api(base)
        ids = {}

        def send_mail():
            ids["smtp"] = smtp_send(smtp_port, ALICE, "news@alice.example",
                                    ["carol@dest.example", "nobody@dest.example"], "Spring newsletter")
            status, body = api.call("POST", "/v1/messages", ALICE, {
                "from": "news@alice.example", "to": ["dave@dest.example", "later@dest.example"],
                "subject": "Welcome aboard", "text": "hello"})
            check(status == 202, f"API send: {status} {body}")
            ids["api_ok"], ids["api_later"] = [m["id"] for m in body["messages"]]
            api.wait_states(ALICE, ids["smtp"], ["delivered", "bounced"])
            api.wait_states(ALICE, ids["api_ok"], ["delivered"])
            api.wait_states(ALICE, ids["api_later"], ["deferred"])

        profile = os.path.join(workdir, "chromium-alice")
        alice = Dashboard(browser(profile), base)
        drivers.append(alice.d)

        def sign_in_alice():
            alice.open("/messages")
            check("/login" in alice.d.current_url, f"not sent to /login: {alice.d.current_url}")
            alice.shot("login")
            alice.sign_in(ALICE, fresh=False)
            WebDriverWait(alice.d, DEADLINE).until(lambda d: d.current_url.endswith("/messages"))
            alice.wait_text("Messages")

        def overview_counts():
            alice.open("/?period=1h")
            got = {k: alice.stat(k) for k in ("accepted", "delivered", "deferred", "bounced")}
            # SMTP: carol delivered, nobody bounced; API: dave delivered, later deferred.
            check(got == {"accepted": 4, "delivered": 2, "deferred": 1, "bounced": 1}, f"overview: {got}")
            check(alice.d.find_elements(By.CSS_SELECTOR, ".chart svg rect"), "no bars in the chart")
            alice.wait_text("User unknown")
            alice.open("/?period=24h")
            alice.shot("overview")
            alice.d.set_window_size(390, 844)
            alice.shot("overview-phone")
            alice.d.set_window_size(1280, 900)

        def find_and_open_message():
            alice.open("/messages")
            box = alice.d.find_element(By.NAME, "q")
            box.send_keys("nobody@dest.example")
            box.submit()
            alice.wait_text("Spring newsletter")
            links = alice.d.find_elements(By.CSS_SELECTOR, "table a[href^='/messages/']")
            check([l.get_attribute("href").rsplit("/", 1)[1] for l in links] == [ids["smtp"]],
                  f"search found {[l.text for l in links]}")
            alice.shot("messages")
            links[0].click()
            alice.wait_text("Recipient address rejected: User unknown")
            attempt = alice.d.find_element(By.CSS_SELECTOR, "[data-recipient='nobody@dest.example'] [data-attempt]")
            check("550 5.1.1" in attempt.text and "127.0.0.1" in attempt.text, f"attempt: {attempt.text}")
            alice.wait_text("through ESMTPSA by alice")
            alice.shot("message")

        def suppress_through_the_form():
            alice.open("/suppressions")
            alice.d.find_element(By.ID, "address").send_keys("gone@dest.example")
            Select(alice.d.find_element(By.ID, "domain")).select_by_visible_text("alice.example")
            alice.d.find_element(By.CSS_SELECTOR, "form[action='/suppressions'] button").click()
            alice.wait_text("gone@dest.example will no longer be mailed from alice.example")
            alice.shot("suppressions")
            status, body = api.call("GET", "/v1/suppressions", ALICE)
            # nobody@ is there too: its hard bounce suppressed it.
            got = {(s["address"], s["reason"]) for s in body["suppressions"]} if status == 200 else body
            check(("gone@dest.example", "manual") in got, f"API suppressions: {status} {got}")

        def add_a_domain():
            alice.open("/domains")
            alice.wait_text("No sending domain yet")
            Select(alice.d.find_element(By.ID, "domain")).select_by_visible_text("news.alice.example")
            alice.d.find_element(By.CSS_SELECTOR, "form[action='/domains'] button[type=submit]").click()
            alice.wait_text("news.alice.example added with a new DKIM key")
            record = alice.d.find_element(By.CSS_SELECTOR, "[data-domain='news.alice.example']").text
            check("._domainkey.news.alice.example" in record and "v=DKIM1; k=rsa; p=" in record,
                  f"no DKIM record: {record[:500]}")
            alice.shot("domains")

        def retry_from_the_queue():
            alice.open("/queue")
            alice.wait_text("451 4.2.0 Mailbox busy")
            alice.shot("queue")
            alice.d.find_element(By.CSS_SELECTOR, f"button[value='retry-one:{ids['api_later']}']").click()
            alice.wait_text("will be tried again now")
            api.wait_states(ALICE, ids["api_later"], ["delivered"])
            alice.open("/queue")
            alice.wait_text("Nothing is waiting")

        def csrf_refused():
            alice.open("/suppressions")
            status = alice.d.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/suppressions', {method: 'POST', redirect: 'manual', body: new URLSearchParams("
                "{domain: 'alice.example', address: 'nocsrf@dest.example'})}).then(r => done(r.status));")
            check(status == 403, f"POST without the CSRF token answered {status}")
            nonlocal cross
            cross = CrossSite(base)
            alice.d.get(cross.url)
            WebDriverWait(alice.d, DEADLINE).until(lambda d: d.current_url.startswith(base))
            _, body = api.call("GET", "/v1/suppressions", ALICE)
            listed = [s["address"] for s in body["suppressions"]]
            check("nocsrf@dest.example" not in listed and "csrf@dest.example" not in listed,
                  f"a refused POST added something: {listed}")

        def accessibility():
            found = {}
            for path in ("/", "/messages", f"/messages/{ids['smtp']}", "/queue", "/domains", "/suppressions"):
                found[path] = [v["id"] for v in alice.axe(path)]
            print(f"     axe (non-critical findings): {found}", flush=True)

        def bob_sees_nothing_of_alice():
            alice.sign_out()
            bob = alice  # the same browser, signed in as bob now
            bob.sign_in(BOB)
            bob.wait_text("Overview")
            check(bob.stat("accepted") == 0, "bob's overview counts alice's mail")
            bob.open("/messages")
            page = bob.text()
            check("No messages yet" in page, f"bob's messages: {page[:500]}")
            for key in ("smtp", "api_ok", "api_later"):
                check(ids[key] not in bob.d.page_source, f"{ids[key]} listed for bob")
                status = bob.status_of(f"/messages/{ids[key]}")
                check(status == 404, f"bob opening alice's message: {status}")
            bob.open(f"/messages/{ids['smtp']}")
            bob.wait_text("Not found")
            bob.open("/domains")
            check("alice.example" not in bob.text(), "bob sees alice's domains")
            bob.open("/suppressions")
            check("gone@dest.example" not in bob.text(), "bob sees alice's suppressions")
            bob.sign_out()

        def admin_pages():
            alice.sign_in(ROOT)
            alice.wait_text("Overview")
            check(alice.stat("accepted") >= 4, "the admin does not see every message")
            alice.open("/users")
            for name in ("alice", "bob", "root"):
                check(alice.d.find_elements(By.CSS_SELECTOR, f"[data-user='{name}']"), f"{name} not listed")
            alice.shot("users")
            alice.open("/webhooks")
            alice.wait_text("No webhook endpoint")
            alice.shot("webhooks")
            alice.sign_out()

        def admin_edits_a_user():
            alice.sign_in(ROOT)
            alice.wait_text("Overview")
            alice.open("/users")
            alice.d.find_element(By.CSS_SELECTOR, "[data-user='bob'] a[href='/users/edit?name=bob']").click()
            alice.wait_text("Granted sending domains")
            alice.d.find_element(By.ID, "grant").send_keys("shop.example")
            alice.d.find_element(By.CSS_SELECTOR, "form[action='/users/domains/grant'] button").click()
            alice.wait_text("bob may now send as shop.example")
            alice.d.find_element(By.ID, "key-name").send_keys("e2e app")
            alice.d.find_element(By.CSS_SELECTOR, "form[action='/users/keys'] button").click()
            alice.wait_text("The key, shown only this once")
            key = alice.d.find_element(By.CSS_SELECTOR, "code.secret").text
            check(key.startswith("opk_"), f"no key shown: {key!r}")
            alice.shot("user")
            status, _ = api.call("GET", "/v1/stats", ("bob", key))
            check(status == 200, f"the new key was refused: {status}")
            alice.d.find_element(By.CSS_SELECTOR, "[data-key] form[action='/users/keys/revoke'] button").click()
            alice.wait_text("revoked")
            # The key's refusal is tested over HTTP in tests/web (a refused key
            # here would count against the lockout step's address).
            check(not alice.d.find_elements(By.CSS_SELECTOR, "[data-key]"), "the revoked key is listed")
            alice.sign_out()

        def wrong_passwords_then_lockout():
            for i in range(MAX_FAILURES):
                alice.sign_in((ALICE[0], f"wrong {i}"))
                alice.wait_text("Wrong user name or password")
                check("/login" in alice.d.current_url, f"left /login: {alice.d.current_url}")
            alice.sign_in(ALICE)
            alice.wait_text("Too many failed sign-ins")
            check("/login" in alice.d.current_url, "signed in while locked")
            status, _ = api.call("GET", "/v1/suppressions", ALICE)
            check(status == 429, f"the API let a locked address in: {status}")

        suite.run("mail sent through SMTP and the API reaches its final states", send_mail)
        suite.run("signing in leads back to the page asked for", sign_in_alice)
        suite.run("overview: the right counts, chart, bounce reply", overview_counts)
        suite.run("messages: found by recipient, remote reply of the attempt shown", find_and_open_message)
        suite.run("suppressions: added through the form, seen through the API", suppress_through_the_form)
        suite.run("domains: added, its DKIM record shown", add_a_domain)
        suite.run("queue: a deferred message retried and delivered", retry_from_the_queue)
        suite.run("CSRF: a POST without the token and a cross-site form are refused", csrf_refused)
        suite.run("accessibility: axe-core finds no critical violation", accessibility)
        suite.run("another user sees none of alice's messages or domains", bob_sees_nothing_of_alice)
        suite.run("an admin sees every message, the users and the webhooks", admin_pages)
        suite.run("an admin grants a domain, makes an API key that works and revokes it", admin_edits_a_user)
        suite.run("wrong passwords stay on /login, then the address is locked", wrong_passwords_then_lockout)
    except Failure as e:
        suite.failed += 1
        print(f"FAIL set-up: {e}", flush=True)
    finally:
        for d in drivers:
            d.quit()
        if cross is not None:
            cross.close()
        server.stop()
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"web dashboard e2e took {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
