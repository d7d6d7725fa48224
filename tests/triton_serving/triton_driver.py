"""Drive a real tritonserver for tests/triton_serving (run with .venv-triton's python, which has PyTriton's Triton and
tritonclient; the test process itself may have numpy 2).

    python triton_driver.py SPEC.json OUT.json

SPEC: {repositories: [...], workdir, images: [...], sequences: [...], captioners: [model...],
classifiers: [model...], concurrent_model, clients, requests_per_client}.  Writes OUT: health, captions and
labels per model over HTTP and gRPC, batching statistics, shutdown code and timings.
"""
import json
import sys
import threading
import time
import urllib.request

import numpy as np


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read().decode("utf-8") or "null")


def http_status(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def caption_requests(module, images):
    inputs = []
    for path in images:
        with open(path, "rb") as handle:
            data = np.array([[handle.read()]], dtype=np.object_)
        tensor = module.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def run(spec):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from jetcap.triton.server import TritonServer

    out = {"started": time.time()}
    server = TritonServer(spec["repositories"], spec["workdir"])
    out["command"] = server.command
    server.start()
    try:
        server.wait_ready(spec.get("ready_timeout", 240))
        out["ready_seconds"] = time.time() - out["started"]
        base = "http://" + server.http_url
        out["health"] = {"live": http_status(base + "/v2/health/live"), "ready": http_status(base + "/v2/health/ready")}
        out["models_ready"] = dict((m, http_status("{}/v2/models/{}/ready".format(base, m)))
                                   for m in spec["captioners"] + spec["classifiers"])
        out["server_metadata"] = http_json(base + "/v2")[1]
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        out["captions"], out["labels"] = {}, {}
        for model in spec["captioners"]:
            for proto, client, module in (("http", http, httpclient), ("grpc", grpc, grpcclient)):
                texts = []
                for tensor in caption_requests(module, spec["images"]):
                    result = client.infer(model, [tensor])
                    texts.append(result.as_numpy("caption").reshape(-1)[0].decode("utf-8"))
                out["captions"]["{}/{}".format(model, proto)] = texts
            # beam search (the session's reorder() over BLS) and one request carrying a preprocessed batch
            beam = []
            for tensor in caption_requests(httpclient, spec["images"]):
                width = httpclient.InferInput("beam_size", [1, 1], "INT32")
                width.set_data_from_numpy(np.array([[spec["beam_size"]]], dtype=np.int32))
                beam.append(http.infer(model, [tensor, width]).as_numpy("caption").reshape(-1)[0].decode("utf-8"))
            out.setdefault("beam_captions", {})[model] = beam
            images = np.load(spec["preprocessed"])
            tensor = httpclient.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            result = http.infer(model, [tensor])
            out.setdefault("batch_captions", {})[model] = [c.decode("utf-8") for c in
                                                          result.as_numpy("caption").reshape(-1)]
        for model in spec["classifiers"]:
            for proto, client, module in (("http", http, httpclient), ("grpc", grpc, grpcclient)):
                labels, probs = [], []
                for path in spec["sequences"]:
                    sequence = np.load(path).astype(np.float32)[None]
                    tensor = module.InferInput("sequence", list(sequence.shape), "FP32")
                    tensor.set_data_from_numpy(sequence)
                    result = client.infer(model, [tensor])
                    labels.append(result.as_numpy("label").reshape(-1)[0].decode("utf-8"))
                    probs.append(result.as_numpy("probabilities")[0].tolist())
                out["labels"]["{}/{}".format(model, proto)] = labels
                out["probabilities"] = out.get("probabilities", {})
                out["probabilities"]["{}/{}".format(model, proto)] = probs
        # an input error is answered as an error, and the server stays up
        bad = httpclient.InferInput("image", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
        try:
            http.infer(spec["captioners"][0], [bad])
            out["bad_input_error"] = None
        except Exception as exc:  # tritonclient raises InferenceServerException
            out["bad_input_error"] = str(exc)
        http.close()
        grpc.close()
        out["concurrency"] = concurrency(spec, server, httpclient)
    finally:
        began = time.time()
        out["shutdown_code"] = server.stop()
        out["shutdown_seconds"] = time.time() - began
        out["log_tail"] = server.log_tail(15)
    return out


def stats(server, model):
    status, body = http_json("http://{}/v2/models/{}/stats".format(server.http_url, model))
    entry = body["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def settled_stats(server, model, wait_seconds=10.0):
    """:func:`stats` once two reads 0.2 s apart agree: Triton counts an inference after its response is
    sent, so a request answered just before the read may not be counted yet (seen: 65 of 64)."""
    deadline = time.time() + wait_seconds
    last = stats(server, model)
    while time.time() < deadline:
        time.sleep(0.2)
        now = stats(server, model)
        if now == last:
            return now
        last = now
    return last


def concurrency(spec, server, httpclient):
    model = spec["concurrent_model"]
    clients, per_client = spec["clients"], spec["requests_per_client"]
    with open(spec["images"][0], "rb") as handle:
        data = np.array([[handle.read()]], dtype=np.object_)
    before = settled_stats(server, model)
    errors, latencies = [], []
    barrier = threading.Barrier(clients)

    def worker():
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            barrier.wait(30)
            for _ in range(per_client):
                tensor = httpclient.InferInput("image", [1, 1], "BYTES")
                tensor.set_data_from_numpy(data)
                began = time.time()
                client.infer(model, [tensor])
                latencies.append(time.time() - began)
        except Exception as exc:  # reported, and the test fails on it
            errors.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.time() - began
    after = settled_stats(server, model)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    return {"clients": clients, "requests": clients * per_client, "errors": errors, "inferences": inferences,
            "executions": executions, "average_batch": inferences / float(max(executions, 1)),
            "seconds": wall, "p50_ms": 1000 * float(np.median(latencies)) if latencies else None}


def main():
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    out = run(spec)
    with open(sys.argv[2], "w") as handle:
        json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
