"""The `moe-swarm` binary as an operator meets it: the client subcommand, start-up errors, and the
SIGTERM drain (every accepted request answered, exit code 0)."""
import queue
import signal
import socket
import subprocess
import time

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from conftest import Daemon, swarm_bin


def test_client_subcommand_prints_latency_and_routing(daemon):
    for api in ("native", "kserve"):
        out = subprocess.run([swarm_bin(), "client", "--address", daemon.address, "--layer", "1",
                              "--tokens", "4", "--routing", "--api", api, "--repeat", "3"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "latency min" in out.stdout
        assert "token 3: expert" in out.stdout
    bad = subprocess.run([swarm_bin(), "client", "--address", daemon.address, "--layer", "8"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "NOT_FOUND: layer: 8 is not a MoE layer" in bad.stderr


def test_help_and_version():
    out = subprocess.run([swarm_bin(), "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for text in ("--port INT=50051", "--metrics-port INT=9091", "--engine KIND=auto",
                 "[toml: scheduler.max_batch_tokens]", "--config"):
        assert text in out.stdout, text
    version = subprocess.run([swarm_bin(), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("moe-swarm ")


def test_invalid_configuration_is_refused(tmp_path):
    out = subprocess.run([swarm_bin(), "serve", "--port", "70000"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "server.port: expected a port in [0, 65535], got 70000" in out.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[scheduler]\nmax_batch_token = 5\n")
    out = subprocess.run([swarm_bin(), "serve", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "unknown key scheduler.max_batch_token" in out.stderr


def test_cuda_engine_without_cuda_is_a_clear_error(cache_dir):
    d = Daemon(cache_dir, "--engine", "cuda")
    rc = d.wait_exit()
    if "stage 7/7 ready" in d.log:  # a CUDA build on a GPU host serves; nothing to check here
        return
    assert rc == 1, d.log
    assert "engine.kind = cuda" in d.log


def test_port_in_use_is_a_start_up_error(cache_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = Daemon(cache_dir, "--port", str(port))
        rc = d.wait_exit()
    assert rc == 1, d.log
    assert f"cannot listen on 127.0.0.1:{port}" in d.log


def test_config_file_and_flags(cache_dir, tmp_path):
    cfg = tmp_path / "moe.toml"
    cfg.write_text('[server]\nmodel_name = "from-file"\n[scheduler]\nmax_batch_tokens = 64\n')
    d = Daemon(cache_dir, "--config", str(cfg), "--max-batch-tokens", "128").wait_ready()
    try:
        client = tc.InferenceServerClient(d.address)
        config = client.get_model_config("from-file.layer0", as_json=True)["config"]
        assert int(config["max_batch_size"]) == 128  # the flag beats the file
        client.close()
    finally:
        d.stop()


def test_sigterm_drains_every_accepted_request_and_exits_0(cache_dir):
    # Long batching delay: requests sit in the queue until the drain flushes them.
    d = Daemon(cache_dir, "--max-queue-delay-us", "5000000", "--model-name", "drain").wait_ready()
    client = tc.InferenceServerClient(d.address)
    # A request whose timeout (100 ms) ends before its batch would: DEADLINE_EXCEEDED, not computed.
    x = np.zeros((2, 512), np.float32)
    late = tc.InferInput("input", [2, 512], "FP32")
    late.set_data_from_numpy(x)
    try:
        client.infer("drain.layer0", [late], timeout=100_000)
        raise AssertionError("expected DEADLINE_EXCEEDED")
    except InferenceServerException as e:
        assert e.status() == "StatusCode.DEADLINE_EXCEEDED", e
    answers = queue.Queue()
    n = 12
    for i in range(n):
        x = np.random.default_rng(i).standard_normal((1 + i % 5, 512)).astype(np.float32)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_infer(f"drain.layer{i % 4}", [inp], request_id=f"d{i}",
                           callback=lambda result, error, i=i: answers.put((i, result, error)))
    # Let the requests reach the daemon's queue (they wait there for the 5 s batching delay).
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    got = {}
    for _ in range(n):
        i, result, error = answers.get(timeout=60)
        assert error is None, error
        assert i not in got
        got[i] = result.as_numpy("output")
    assert set(got) == set(range(n))
    assert d.wait_exit() == 0, d.log
    assert "draining" in d.log and "stopped cleanly" in d.log
    client.close()


def test_tritonclient_example_runs(daemon):
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "tritonclient_example.py"),
                          "--url", daemon.address, "--layer", "3", "--tokens", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ".layer3: qwen2_moe, hidden 512" in out.stdout
    assert "token 1: expert" in out.stdout


def test_inspect_describes_the_embedded_model(daemon):
    import glob
    dirs = glob.glob(f"{daemon.cache_dir}/embedded-qwen2moe-*")
    assert dirs, daemon.cache_dir
    out = subprocess.run([swarm_bin(), "inspect", dirs[0]], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "qwen2_moe" in out.stdout.lower() or "Qwen2Moe" in out.stdout
    missing = subprocess.run([swarm_bin(), "inspect", "/nonexistent/model"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1
    assert "moe-swarm inspect:" in missing.stderr
