"""tritonclient[grpc], unchanged, against the real `moe-swarm serve` binary (KServe v2 API).

Every inference result is checked against the daemon's native moe.v1 API (built from reflection)
on the same input: the CPU engine is batch invariant, so both must agree bit for bit.
"""
import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from native_api import ReflectedApi

HIDDEN = 512  # the embedded model (moe/model/embedded.h)
TOP_K = 4
N_EXPERTS = 32


@pytest.fixture(scope="module")
def client(daemon):
    c = tc.InferenceServerClient(daemon.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def native(daemon):
    channel = grpc.insecure_channel(daemon.address, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    yield ReflectedApi(channel)
    channel.close()


def random_hidden(n, datatype, seed):
    """[n, HIDDEN] values exactly representable in `datatype` (tritonclient truncates to BF16)."""
    x = np.random.default_rng(seed).standard_normal((n, HIDDEN)).astype(np.float32)
    if datatype == "BF16":
        x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    elif datatype == "FP16":
        x = x.astype(np.float16)
    return x


def raw_bytes(x, datatype):
    if datatype == "BF16":
        return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return x.tobytes()


def from_raw(data, datatype, n):
    if datatype == "BF16":
        u = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(n, HIDDEN)
    return np.frombuffer(data, dtype=np.float16 if datatype == "FP16" else np.float32).reshape(
        n, HIDDEN)


def native_forward(native, model, layer, x, datatype):
    req = native.message("moe.v1.ForwardRequest")()
    req.request_id = "native"
    req.model = model
    req.layer = layer
    req.return_routing = True
    dtype_name = {"BF16": "DTYPE_BF16", "FP16": "DTYPE_F16", "FP32": "DTYPE_F32"}[datatype]
    req.hidden_states.dtype = native.enum_value("moe.v1.DType", dtype_name)
    req.hidden_states.shape.extend(x.shape)
    req.hidden_states.data = raw_bytes(x, datatype)
    resp = native.unary("moe.v1.MoeService", "Forward")(req, timeout=30)
    n = x.shape[0]
    return (from_raw(resp.hidden_states.data, datatype, n),
            np.array(resp.routing.expert_ids, dtype=np.int32).reshape(n, TOP_K),
            np.array(resp.routing.expert_weights, dtype=np.float32).reshape(n, TOP_K))


def make_input(x, datatype):
    inp = tc.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def all_outputs():
    return [tc.InferRequestedOutput(n) for n in ("output", "expert_ids", "expert_weights")]


def check_against_native(native, model_name, layer, x, datatype, result):
    out, ids, weights = native_forward(native, model_name, layer, x, datatype)
    got = result.as_numpy("output")
    assert got.shape == (x.shape[0], HIDDEN)
    np.testing.assert_array_equal(got.astype(np.float32), out.astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("expert_ids"), ids)
    np.testing.assert_array_equal(result.as_numpy("expert_weights"), weights)
    assert ids.min() >= 0 and ids.max() < N_EXPERTS
    assert np.all(np.isfinite(got.astype(np.float32)))


def test_health_and_server_metadata(client, model_name):
    assert client.is_server_live()
    assert client.is_server_ready()
    for layer in range(4):
        assert client.is_model_ready(f"{model_name}.layer{layer}")
    md = client.get_server_metadata()
    assert md.name == "moe-swarm"
    assert md.version
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "moe-swarm"


def test_model_metadata_config_and_repository_index(client, model_name):
    name = f"{model_name}.layer1"
    md = client.get_model_metadata(name)
    assert md.name == name
    assert [i.name for i in md.inputs] == ["input"]
    assert list(md.inputs[0].shape) == [-1, HIDDEN]
    assert [o.name for o in md.outputs] == ["output", "expert_ids", "expert_weights"]
    assert md.outputs[1].datatype == "INT32" and list(md.outputs[1].shape) == [-1, TOP_K]
    cfg = client.get_model_config(name, as_json=True)["config"]
    assert cfg["name"] == name
    assert int(cfg["max_batch_size"]) > 0
    assert cfg["input"][0]["data_type"] == "TYPE_BF16"
    assert cfg["parameters"]["family"]["string_value"] == "qwen2_moe"
    assert cfg["parameters"]["top_k"]["string_value"] == str(TOP_K)
    index = client.get_model_repository_index()
    assert [m.name for m in index.models] == [f"{model_name}.layer{i}" for i in range(4)]
    assert all(m.state == "READY" for m in index.models)


@pytest.mark.parametrize("datatype", ["BF16", "FP16", "FP32"])
def test_infer_matches_native_api(client, native, model_name, datatype):
    x = random_hidden(6, datatype, seed=hash(datatype) % 1000)
    result = client.infer(f"{model_name}.layer2", [make_input(x, datatype)], outputs=all_outputs(),
                          request_id="r1")
    assert result.get_response().id == "r1"
    check_against_native(native, model_name, 2, x, datatype, result)


def test_infer_without_outputs_returns_all_of_them(client, native, model_name):
    x = random_hidden(3, "FP32", seed=5)
    result = client.infer(f"{model_name}.layer0", [make_input(x, "FP32")])
    names = [o.name for o in result.get_response().outputs]
    assert names == ["output", "expert_ids", "expert_weights"]
    check_against_native(native, model_name, 0, x, "FP32", result)


def test_priority_and_timeout_parameters_are_accepted(client, native, model_name):
    x = random_hidden(2, "FP32", seed=9)
    result = client.infer(f"{model_name}.layer3", [make_input(x, "FP32")], outputs=all_outputs(),
                          priority=1, timeout=5_000_000)
    check_against_native(native, model_name, 3, x, "FP32", result)


def test_async_infer(client, native, model_name):
    results = queue.Queue()
    xs = [random_hidden(1 + i, "BF16", seed=100 + i) for i in range(8)]
    for i, x in enumerate(xs):
        client.async_infer(f"{model_name}.layer{i % 4}", [make_input(x, "BF16")],
                           callback=lambda result, error, i=i: results.put((i, result, error)),
                           outputs=all_outputs(), request_id=f"a{i}")
    seen = set()
    for _ in xs:
        i, result, error = results.get(timeout=60)
        assert error is None, error
        assert result.get_response().id == f"a{i}"
        check_against_native(native, model_name, i % 4, xs[i], "BF16", result)
        seen.add(i)
    assert seen == set(range(len(xs)))


def test_stream_infer_answers_each_request_once_and_reports_errors_in_band(client, native,
                                                                           model_name):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        xs = {}
        for i in range(10):
            x = random_hidden(1 + i % 3, "FP32", seed=200 + i)
            xs[f"s{i}"] = (i % 4, x)
            client.async_stream_infer(f"{model_name}.layer{i % 4}", [make_input(x, "FP32")],
                                      outputs=all_outputs(), request_id=f"s{i}")
        bad = tc.InferInput("input", [2, HIDDEN - 1], "FP32")
        bad.set_data_from_numpy(np.zeros((2, HIDDEN - 1), np.float32))
        client.async_stream_infer(f"{model_name}.layer0", [bad], request_id="bad")
        client.async_stream_infer(f"{model_name}.layer9", [make_input(xs["s0"][1], "FP32")],
                                  request_id="missing")
        got = {}
        errors = []
        for _ in range(12):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(str(error))
                continue
            rid = result.get_response().id
            assert rid not in got, f"{rid} answered twice"
            got[rid] = result
        assert set(got) == set(xs)
        for rid, (layer, x) in xs.items():
            check_against_native(native, model_name, layer, x, "FP32", got[rid])
        assert len(errors) == 2
        assert any("INVALID_ARGUMENT: inputs[0].shape[1]: expected hidden size 512" in e
                   for e in errors), errors
        assert any("NOT_FOUND" in e and "layer9" in e for e in errors), errors
    finally:
        client.stop_stream()


def test_statistics(client, model_name):
    name = f"{model_name}.layer1"
    before = client.get_inference_statistics(name).model_stats[0]
    x = random_hidden(5, "FP32", seed=1)
    client.infer(name, [make_input(x, "FP32")])
    with pytest.raises(InferenceServerException):
        client.infer(name, [make_input(random_hidden(2, "FP32", 1)[:, :100].copy(), "FP32")])
    after = client.get_inference_statistics(name).model_stats[0]
    assert after.name == name and after.version == "1"
    assert after.inference_count == before.inference_count + 5
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    every = client.get_inference_statistics()
    assert len(every.model_stats) == 4


@pytest.mark.parametrize("case", ["unknown model", "unknown layer", "bad version", "hidden",
                                  "datatype", "empty batch", "oversize"])
def test_errors(client, model_name, case):
    x = random_hidden(2, "FP32", seed=3)
    name = f"{model_name}.layer0"
    kwargs = {}
    inp = make_input(x, "FP32")
    if case == "unknown model":
        name, code, text = "no-such-model", "StatusCode.NOT_FOUND", "is not served"
    elif case == "unknown layer":
        name, code, text = f"{model_name}.layer4", "StatusCode.NOT_FOUND", "with L in [0,1,2,3]"
    elif case == "bad version":
        kwargs["model_version"] = "7"
        code, text = "StatusCode.NOT_FOUND", 'model_version: "7"'
    elif case == "hidden":
        inp = make_input(x[:, :256].copy(), "FP32")
        code, text = "StatusCode.INVALID_ARGUMENT", "expected hidden size 512, got 256"
    elif case == "datatype":
        inp = tc.InferInput("input", [2, HIDDEN], "INT32")
        inp.set_data_from_numpy(np.zeros((2, HIDDEN), np.int32))
        code, text = "StatusCode.INVALID_ARGUMENT", "expected BF16, FP16 or FP32"
    elif case == "empty batch":
        inp = tc.InferInput("input", [0, HIDDEN], "FP32")
        inp.set_data_from_numpy(np.zeros((0, HIDDEN), np.float32))
        code, text = "StatusCode.INVALID_ARGUMENT", "n_tokens >= 1"
    else:
        big = np.zeros((9000, HIDDEN), np.float32)
        inp = make_input(big, "FP32")
        code, text = "StatusCode.INVALID_ARGUMENT", "exceeds max_batch_tokens 8192"
    with pytest.raises(InferenceServerException) as err:
        client.infer(name, [inp], **kwargs)
    assert err.value.status() == code, err.value
    assert text in err.value.message(), err.value.message()
    assert client.is_server_ready()  # bad input never disturbs the daemon


def test_grpc_health_and_reflection(daemon, native, model_name):
    channel = grpc.insecure_channel(daemon.address)
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "moe.v1.MoeService", "inference.GRPCInferenceService", model_name,
                    f"{model_name}.layer3"]:
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()
    assert {"moe.v1.MoeService", "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= native.services()


def test_wire_protos_match_tritonclient(native):
    """Every message of ours in package `inference` has tritonclient's field names, numbers and
    types (our proto is a subset: fields we do not declare are allowed to be missing)."""
    from tritonclient.grpc import model_config_pb2, service_pb2
    theirs = {}
    for mod in (service_pb2, model_config_pb2):
        def walk(desc):
            theirs[desc.full_name] = desc
            for nested in desc.nested_types:
                walk(nested)
        for desc in mod.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    ours_file = native.pool.FindFileContainingSymbol("inference.GRPCInferenceService")
    checked = 0

    def compare(desc):
        nonlocal checked
        assert desc.full_name in theirs, desc.full_name
        other = theirs[desc.full_name]
        for f in desc.fields:
            assert f.name in other.fields_by_name, f"{desc.full_name}.{f.name}"
            o = other.fields_by_name[f.name]
            assert (f.number, f.type, f.label) == (o.number, o.type, o.label), \
                f"{desc.full_name}.{f.name}"
            checked += 1
        for nested in desc.nested_types:
            if not nested.GetOptions().map_entry:
                compare(nested)

    for desc in list(ours_file.message_types_by_name.values()) + list(
            ours_file.dependencies[0].message_types_by_name.values()):
        compare(desc)
    ours_service = ours_file.services_by_name["GRPCInferenceService"]
    their_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for m in ours_service.methods:
        o = their_service.methods_by_name[m.name]
        assert m.input_type.full_name == o.input_type.full_name
        assert m.output_type.full_name == o.output_type.full_name
    assert checked > 80
