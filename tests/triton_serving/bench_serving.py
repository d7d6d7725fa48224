"""Throughput/latency of ``jetcap serve-engine`` vs ``jetcap serve-triton`` at 1/4/16 concurrent clients.

Not a test (no ``test_`` prefix): run by hand with the Triton venv's python, which has tritonclient::

    .venv-triton/bin/python tests/triton_serving/bench_serving.py BUNDLE IMAGE [REQUESTS_PER_LEVEL]

Both servers run on 127.0.0.1 with their defaults (serve-engine: one inference at a time, queue 32;
serve-triton: Python backend in-process ONNX Runtime, 1 instance, dynamic batching 500 us).  Prints a
Markdown table.  Bounded: REQUESTS_PER_LEVEL requests (default 96) per concurrency level.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN_JETCAP = os.path.join(ROOT, ".venv", "bin", "jetcap")
LEVELS = (1, 4, 16)


def run_level(send, clients, total):
    latencies, errors = [], []
    per_client = max(1, total // clients)

    def worker():
        session = send()
        for _ in range(per_client):
            began = time.time()
            try:
                session()
            except Exception as exc:  # counted and printed
                errors.append(repr(exc))
                continue
            latencies.append(time.time() - began)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - began
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def wait_line(process, prefix, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix) or prefix in line:
            return line
        if not line and process.poll() is not None:
            raise RuntimeError("server exited: " + process.stderr.read()[-2000:])
    raise RuntimeError("no {!r} line".format(prefix))


def bench_engine(bundle, image, total):
    process = subprocess.Popen([MAIN_JETCAP, "serve-engine", bundle, "--port", "0", "--queue", "32",
                                "--backend", "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        line = wait_line(process, "http://")
        url = line[line.index("http://"):].split()[0].rstrip("/")
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        with open(image, "rb") as handle:
            body = handle.read()

        def send():
            def once():
                request = urllib.request.Request(url + "/caption", data=body, headers={"Content-Type": "image/png"})
                with urllib.request.urlopen(request, timeout=60) as r:
                    r.read()
            return once

        return dict((level, run_level(send, level, total)) for level in LEVELS)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def bench_triton(bundle, image, total):
    import tritonclient.http as httpclient

    process = subprocess.Popen([sys.executable, "-m", "jetcap.cli", "serve-triton", bundle, "--port", "0",
                                "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        line = wait_line(process, "http=")
        fields = dict(part.split("=", 1) for part in line.split())
        with open(image, "rb") as handle:
            data = np.array([[handle.read()]], dtype=np.object_)
        clients = []

        def send():
            client = httpclient.InferenceServerClient(fields["http"])
            clients.append(client)

            def once():
                tensor = httpclient.InferInput("image", [1, 1], "BYTES")
                tensor.set_data_from_numpy(data)
                client.infer(fields["model"], [tensor])
            return once

        results = dict((level, run_level(send, level, total)) for level in LEVELS)
        for client in clients:
            client.close()
        return results
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main():
    bundle, image = sys.argv[1], sys.argv[2]
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 96
    rows = [("jetcap serve-engine", bench_engine(bundle, image, total)),
            ("jetcap serve-triton", bench_triton(bundle, image, total))]
    print("| server | clients | req/s | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|---|")
    for name, results in rows:
        for level in LEVELS:
            r = results[level]
            print("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {} |".format(name, level, r["rps"], r["p50"], r["p95"],
                                                                      r["errors"]))
            if r["first_error"]:
                print("first error:", r["first_error"], file=sys.stderr)


if __name__ == "__main__":
    main()
