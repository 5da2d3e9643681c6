#!/usr/bin/env python3
"""End to end: a real Prometheus server scrapes a real `moe-swarm serve`.

1. Starts `moe-swarm serve` on free loopback ports with a temporary model cache (the embedded
   model), and waits for /readyz.
2. Starts Debian's `prometheus` with deploy/prometheus/prometheus.yml, rewritten only to scrape
   127.0.0.1:<metrics port> every second, storing into a temporary directory, listening on a free
   loopback port.
3. Sends a known number of inference requests with `moe-swarm client`.
4. Asks Prometheus' HTTP query API until the scraped series show exactly those requests:
   moe_requests_total{code="OK"} and {code="NOT_FOUND"} (one request for a missing layer, whose
   request id must be in the error and the log), moe_request_duration_seconds_count, the build
   info, readiness,
   the scheduler's batches, and the target's health; `promtool check metrics` on the live
   exposition; the alerting rules evaluate; the daemon's log is JSON lines at MOE_LOG's level.
5. SIGTERMs the daemon and checks that it drains and exits 0 within the platforms' kill timeout.

Every process started is killed at the end, whatever happens (finally + atexit + SIGTERM
handler; and PR_SET_PDEATHSIG, so even a SIGKILLed test leaves nothing behind). Bounded in time: each wait has a deadline, and ctest's TIMEOUT bounds the whole.
Exit code 77 (ctest SKIP_RETURN_CODE) when the daemon binary or `prometheus` is missing.
"""

import atexit
import ctypes
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

SKIP = 77
ROOT = pathlib.Path(os.environ.get("MOE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
BINARY_DIR = pathlib.Path(os.environ.get("MOE_BINARY_DIR", ROOT / "build"))
DAEMON = BINARY_DIR / "bin" / "moe-swarm"
REQUESTS = 7          # client invocations
REPEAT = 3            # requests per invocation
TOKENS = 5            # tokens per request
EXPECTED = REQUESTS * REPEAT

_children = []


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kill_all():
    """Kills every process this test started (their whole process groups), then reaps them."""
    for proc in _children:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in _children:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _die_with_parent():
    """In the child before exec: SIGKILL it when this test process dies, even by SIGKILL (a ctest
    timeout), so nothing outlives the test."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def start(args, log_path, env=None):
    out = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env,
                            start_new_session=True,  # own process group: killpg reaches children
                            preexec_fn=_die_with_parent)
    _children.append(proc)
    return proc


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, ""


def wait_for(what, predicate, timeout, procs=(), interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log_path in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: process exited with {proc.returncode}; log:\n"
                                     + tail(log_path))
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tail(path, lines=40):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prom_query(prom, expr):
    """Instant query; returns {frozenset(labels): value}."""
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    if status != 200:
        return {}
    data = json.loads(body)
    if data.get("status") != "success":
        return {}
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["data"]["result"]}


def prom_scalar(prom, expr):
    result = prom_query(prom, expr)
    return next(iter(result.values())) if len(result) == 1 else None


def main():
    if not DAEMON.exists():
        log(f"SKIP: {DAEMON} is not built (cmake --build <dir> --target moe-swarm)")
        return SKIP
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        log("SKIP: the `prometheus` server is not installed (Debian package prometheus)")
        return SKIP

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="moe_prom_it_"))
    atexit.register(shutil.rmtree, tmp, True)
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # ctest timeout: run the cleanup
    grpc_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    daemon_log, prom_log = tmp / "daemon.log", tmp / "prometheus.log"

    try:
        # 1. The daemon, on the embedded model in a fresh cache.
        daemon = start([str(DAEMON), "serve",
                        "--address", "127.0.0.1", "--port", str(grpc_port),
                        "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
                        "--cache-dir", str(tmp / "models"), "--log-format", "json"],
                       daemon_log, env={**os.environ, "MOE_LOG": "debug"})
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        wait_for("/healthz", lambda: http_get(metrics_url + "/healthz")[0] == 200, 60,
                 [(daemon, daemon_log)])
        wait_for("/readyz", lambda: http_get(metrics_url + "/readyz")[0] == 200, 240,
                 [(daemon, daemon_log)])
        log(f"daemon ready: gRPC 127.0.0.1:{grpc_port}, metrics {metrics_url}")

        # Logging: --log-format json gives one JSON object per line; MOE_LOG=debug (no
        # --log-level given) lets debug lines through.
        records = [json.loads(line) for line in daemon_log.read_text().splitlines() if line]
        assert records, "the daemon logged nothing"
        for r in records:
            assert {"ts", "level", "logger", "msg"} <= r.keys(), r
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["ts"]), r
        assert any(r["level"] == "debug" for r in records), "MOE_LOG=debug had no effect"

        # 2. Prometheus, with the deployment's scrape config pointed at the daemon.
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["scrape_timeout"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "moe-swarm"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        for rules in config.get("rule_files", []):  # relative to the config file
            shutil.copy(ROOT / "deploy/prometheus" / rules, tmp / rules)
        prom = f"127.0.0.1:{prom_port}"
        prom_proc = start([prometheus, f"--config.file={tmp / 'prometheus.yml'}",
                           f"--storage.tsdb.path={tmp / 'tsdb'}",
                           f"--web.listen-address={prom}", "--log.level=warn"], prom_log)
        wait_for("prometheus /-/ready", lambda: http_get(f"http://{prom}/-/ready")[0] == 200, 60,
                 [(prom_proc, prom_log)])
        wait_for("the first scrape (up == 1)",
                 lambda: prom_scalar(prom, 'up{job="moe-swarm"}') == 1.0, 30,
                 [(prom_proc, prom_log), (daemon, daemon_log)])
        log(f"prometheus ready on {prom}, scraping the daemon")

        # Before any request: the OK series exists at 0 and the daemon reports ready.
        assert prom_scalar(prom, 'sum(moe_requests_total{code="OK"})') == 0.0
        assert prom_scalar(prom, "moe_ready") == 1.0

        # 3. Known traffic through the daemon's own client.
        for i in range(REQUESTS):
            result = subprocess.run(
                [str(DAEMON), "client", "--address", f"127.0.0.1:{grpc_port}",
                 "--tokens", str(TOKENS), "--repeat", str(REPEAT), "--seed", str(i),
                 "--api", "native" if i % 2 == 0 else "kserve"],
                capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
        log(f"sent {EXPECTED} requests of {TOKENS} tokens")
        # One request for a layer the model does not have: NOT_FOUND, with the request id in the
        # error message and in the daemon's log line about it.
        bad = subprocess.run(
            [str(DAEMON), "client", "--address", f"127.0.0.1:{grpc_port}", "--layer", "9999",
             "--tokens", "1"], capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0, bad.stdout
        match = re.search(r"NOT_FOUND.*\[request_id=([0-9a-f]{32})\]", bad.stderr)
        assert match, f"no NOT_FOUND with a request id: {bad.stderr}"
        request_id = match[1]

        # 4. The scraped series, through Prometheus.
        def counted():
            v = prom_scalar(prom, 'sum(moe_requests_total{code="OK"})')
            return v if v == EXPECTED else None
        try:
            wait_for(f"moe_requests_total{{code=\"OK\"}} == {EXPECTED}", counted, 30,
                     [(prom_proc, prom_log), (daemon, daemon_log)])
        except AssertionError:
            log("last value: " + str(prom_query(prom, "moe_requests_total")))
            raise
        not_found = wait_for(
            'moe_requests_total{code="NOT_FOUND"} == 1',
            lambda: prom_scalar(prom, 'sum(moe_requests_total{code="NOT_FOUND"})') == 1.0, 30)
        errors = prom_scalar(prom, 'sum(moe_requests_total{code!~"OK|NOT_FOUND"}) or vector(0)')
        assert not_found and errors == 0.0, f"unexpected failed requests: {errors}"
        assert request_id in daemon_log.read_text(), f"request id {request_id} not in the log"
        count = prom_scalar(prom, "sum(moe_request_duration_seconds_count)")
        assert count == EXPECTED + 1, count  # every finished request, the NOT_FOUND one too
        latency_sum = prom_scalar(prom, "sum(moe_request_duration_seconds_sum)")
        assert latency_sum is not None and latency_sum > 0, latency_sum
        # All requests carry the served model's label (registered at start-up), not "_other".
        ok_series = prom_query(prom, 'moe_requests_total{code="OK"} > 0')
        models = {dict(k)["model"] for k in ok_series}
        assert len(models) == 1 and "_other" not in models, ok_series
        assert prom_scalar(prom, 'sum(moe_requests_total{model="_other"})') == 0.0
        # Tokens: at least our requests' tokens went through batches (warm-up adds more).
        tokens = prom_scalar(prom, "moe_tokens_processed_total")
        assert tokens is not None and tokens >= EXPECTED * TOKENS, tokens
        batches = prom_scalar(prom, "moe_batch_size_tokens_count")
        assert batches is not None and batches >= 1, batches
        build = prom_query(prom, "moe_build_info")
        assert len(build) == 1 and next(iter(build.values())) == 1.0, build
        labels = dict(next(iter(build)))
        assert labels["engine"] in ("cpu", "cuda") and labels["version"], labels
        assert prom_scalar(prom, "moe_inflight_requests") == 0.0
        # The alerting rules loaded and evaluate against the live series without errors.
        status, body = http_get(f"http://{prom}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"] if status == 200 else []
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 7, rules
        broken = [r["name"] for r in rules if r.get("health") == "err"]
        assert not broken, f"rules failing to evaluate: {broken}"
        received = prom_scalar(prom, "sum(moe_worker_messages_received_total)")
        assert received is not None and received >= 1, received
        log(f"prometheus agrees: {EXPECTED} OK + 1 NOT_FOUND (request id {request_id} in the log), "
            f"{tokens:.0f} tokens in {batches:.0f} "
            f"batches, build {labels}")

        # The live exposition, with every series the traffic created, passes Prometheus' linter.
        promtool = shutil.which("promtool")
        if promtool is not None:
            status, exposition = http_get(metrics_url + "/metrics")
            assert status == 200
            lint = subprocess.run([promtool, "check", "metrics"], input=exposition,
                                  capture_output=True, text=True, timeout=30)
            assert lint.returncode == 0, f"promtool check metrics:\n{lint.stdout}{lint.stderr}"
            log("promtool check metrics: the live exposition is clean")

        # 5. Drain on SIGTERM: the process exits 0 within drain + slack (30 s).
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        assert daemon.returncode == 0, f"daemon exited {daemon.returncode}:\n{tail(daemon_log)}"
        log("daemon drained and exited 0 on SIGTERM")
        return 0
    except AssertionError as e:
        log(f"FAILED: {e}")
        log("daemon log tail:\n" + tail(daemon_log))
        log("prometheus log tail:\n" + tail(prom_log))
        return 1
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
