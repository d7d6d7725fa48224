"""serve-engine throughput with requests batched across clients, against the sequential rate.

    .venv/bin/python benchmarks/serve_batching.py BUNDLE [--data DIR] [--requests 64] [--clients 8]
        [--threads 2] [--json OUT.json] [--skip-no-batching] [--precision fp32]

For ``--batching`` and ``--no-batching``: one server process on 127.0.0.1 (port 0), then ``--requests``
captions sent by 1 client (the sequential batch-1 rate) and by ``--clients`` concurrent clients;
captions/s, p50/p95 latency, errors, and whether every caption equals the single-client caption of the
same image.  Prints a Markdown table; the batching server's ``/metrics`` batch occupancy and queue time
are printed too.  Bounded: each run stops after ``--requests`` requests or 300 s; loopback only.
"""
import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from soak_serve import ServerProcess, request  # noqa: E402


def load_images(data):
    from jetcap import samples

    if data:
        names = sorted(n for n in os.listdir(data) if n.lower().endswith((".png", ".jpg", ".jpeg")))
        return [open(os.path.join(data, n), "rb").read() for n in names]
    return [p.read_bytes() for p in samples.sample_images()]


def run(port, images, total, clients, max_seconds=300.0):
    """Send ``total`` /caption requests from ``clients`` threads; returns latencies, captions, errors, seconds."""
    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": 0, "captions": {}}
    deadline = time.time() + max_seconds

    def client():
        while time.time() < deadline:
            with lock:
                index = state["next"]
                if index >= total:
                    return
                state["next"] += 1
            image = index % len(images)
            began = time.time()
            status, body = request(port, "POST", "/caption", images[image], {"Content-Type": "image/png"})
            elapsed = time.time() - began
            with lock:
                state["latencies"].append(elapsed)
                if status != 200:
                    state["errors"] += 1
                else:
                    tokens = tuple(json.loads(body.decode("utf-8"))["tokens"])
                    state["captions"].setdefault(image, set()).add(tokens)

    began = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state["seconds"] = time.time() - began
    return state


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=None)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-no-batching", action="store_true", help="measure the batching server only")
    parser.add_argument("--precision", default="fp32", help="the bundle variant served (default fp32)")
    args = parser.parse_args()
    images = load_images(args.data)
    rows, reference = [], None
    modes = ([] if args.skip_no_batching else [["--no-batching"]]) + [["--batching"]]
    metrics = {}
    for flags in modes:
        mode = " ".join(f.lstrip("-") for f in flags)
        server = ServerProcess(args.bundle, flags + ["--max-concurrency", str(args.clients), "--queue", "64",
                                             "--threads", str(args.threads), "--precision", args.precision],
                               "/tmp/jetcap-serve-batching.log")
        try:
            server.wait_ready()
            for clients in (1, args.clients):
                result = run(server.port, images, args.requests, clients)
                single = {k: v for k, v in result["captions"].items()}
                if reference is None:
                    reference = single
                same = all(v == reference.get(k, v) and len(v) == 1 for k, v in single.items())
                rows.append({"mode": mode, "clients": clients,
                             "captions_per_s": len(result["latencies"]) / result["seconds"],
                             "p50_ms": 1000 * percentile(result["latencies"], 0.5),
                             "p95_ms": 1000 * percentile(result["latencies"], 0.95),
                             "errors": result["errors"], "captions_identical": same})
            if "--batching" in flags:
                status, body = request(server.port, "GET", "/metrics")
                metrics[mode] = [line for line in body.decode("utf-8").splitlines()
                           if line.startswith("jetcap_batch_") and not line.startswith("#")]
        finally:
            server.stop()
    print("| server | clients | captions/s | p50 ms | p95 ms | errors | captions identical to 1-client |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {mode} | {clients} | {captions_per_s:.1f} | {p50_ms:.1f} | {p95_ms:.1f} | {errors} | "
              "{captions_identical} |".format(**row))
    for mode, lines in metrics.items():
        base = [r for r in rows if r["mode"] == mode and r["clients"] == 1][0]
        best = [r for r in rows if r["mode"] == mode and r["clients"] == args.clients][0]
        print("\n{} server, {} clients vs 1 client: {:.2f}x captions/s; p50 {:.2f}x the single-client p50".format(
            mode, args.clients, best["captions_per_s"] / base["captions_per_s"], best["p50_ms"] / base["p50_ms"]))
        print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "metrics": metrics}, handle, indent=2)


if __name__ == "__main__":
    main()
