"""serve-engine throughput with requests batched across clients, against the sequential rate.

    .venv/bin/python benchmarks/serve_batching.py BUNDLE [--data DIR] [--requests 64] [--clients 8]
        [--threads 2] [--json OUT.json] [--skip-no-batching] [--precision fp32] [--in-process]

For ``--batching`` and ``--no-batching``: one server process on 127.0.0.1 (port 0), then ``--requests``
captions sent by 1 client (the sequential batch-1 rate) and by ``--clients`` concurrent clients;
captions/s, p50/p95 latency, errors, and whether every caption equals the single-client caption of the
same image.  Prints a Markdown table; the batching server's ``/metrics`` batch occupancy and queue time
are printed too.  Bounded: each run stops after ``--requests`` requests or 300 s; loopback only.

``--in-process`` adds the decode loop alone, without HTTP: the same images, decoded and preprocessed
beforehand, sent by 1 and ``--clients`` threads straight to a ``DecodeScheduler`` over the server's
runners (same threads, same spinning, the bundle's default beam).  It is how the loop itself scales on
this machine; the server adds to each request its HTTP, its image decoding and its thread hand-offs,
which no batching shares (serial at 1 client; at N clients on the same cores as the graphs).  Its
profile (encoder and step: rows and ms per call; the loop's own Python) says why it scales as it does.
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


def run_in_process(bundle, images, total, clients, threads, precision):
    """The decode loop without HTTP: ``[(clients, captions/s, p50 s, profile dict, captions)]`` for 1 and
    ``clients`` threads, each on a fresh ``DecodeScheduler`` (after a warm-up of 2 x ``clients`` captions)."""
    import io

    from jetcap.runtime import preprocess
    from jetcap.runtime.backends.onnxruntime import SPIN_DURING_RUNS
    from jetcap.runtime.scheduler import DecodeScheduler
    from jetcap.runtime.session import open_bundle

    out = []
    with open_bundle(bundle, backend="onnxruntime", precision=precision, threads=threads,
                     spinning=SPIN_DURING_RUNS) as session:
        arrays = [preprocess.preprocess_image(preprocess.open_image(io.BytesIO(data)),
                                              session.manifest.preprocessing)[None] for data in images]
        beam = int(session.manifest.decoding.get("beam_size") or 1)  # what /caption runs by default
        for count in (1, clients):
            loop = DecodeScheduler(session.manifest, session.runners)
            try:
                state = {"next": 0, "latencies": [], "captions": {}}
                lock = threading.Lock()

                def client(limit):
                    while True:
                        with lock:
                            index = state["next"]
                            if index >= limit:
                                return
                            state["next"] += 1
                        began = time.time()
                        tokens = tuple(loop.caption(arrays[index % len(arrays)], beam_size=beam)[0].tokens)
                        with lock:
                            state["latencies"].append(time.time() - began)
                            state["captions"].setdefault(index % len(arrays), set()).add(tokens)

                def load(limit):
                    state["next"], state["latencies"] = 0, []
                    workers = [threading.Thread(target=client, args=(limit,)) for _ in range(count)]
                    began = time.time()
                    for worker in workers:
                        worker.start()
                    for worker in workers:
                        worker.join()
                    return time.time() - began

                load(2 * count)
                busy = loop.busy_seconds
                ran = dict((graph, stats.snapshot()) for graph, stats in loop.stats.items())
                seconds = load(total)
                profile = {"busy_s": loop.busy_seconds - busy, "seconds": seconds}
                for graph, stats in loop.stats.items():
                    now = stats.snapshot()
                    calls = now["calls"] - ran[graph]["calls"]
                    profile[graph] = {"calls": calls, "rows_per_call": (now["rows"] - ran[graph]["rows"]) / float(max(1, calls)),
                                      "ms_per_call": 1000 * (now["run_seconds"] - ran[graph]["run_seconds"]) / max(1, calls),
                                      "run_s": now["run_seconds"] - ran[graph]["run_seconds"]}
                profile["python_s"] = profile["busy_s"] - profile["encoder"]["run_s"] - profile["decoder_step"]["run_s"]
                out.append((count, total / seconds, percentile(state["latencies"], 0.5), profile, state["captions"]))
            finally:
                loop.close()
    return out


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
    parser.add_argument("--in-process", action="store_true",
                        help="also the decode loop without HTTP: how the loop itself scales (see above)")
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
    in_process = []
    if args.in_process:
        for clients, rate, p50, profile, captions in run_in_process(args.bundle, images, args.requests, args.clients,
                                                                     args.threads, args.precision):
            same = all(v == reference.get(k, v) and len(v) == 1 for k, v in captions.items())
            in_process.append({"clients": clients, "captions_per_s": rate, "p50_ms": 1000 * p50,
                               "captions_identical": same, "profile": profile})
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
    for row in in_process:
        profile = row["profile"]
        print("\ndecode loop in-process, {clients} client(s): {captions_per_s:.1f} captions/s, p50 {p50_ms:.1f} ms, "
              "captions identical to the server's: {captions_identical}".format(**row))
        print("  encoder {:.2f} images/call {:.2f} ms/call; step {:.2f} rows/call {:.2f} ms/call; loop busy {:.2f} of "
              "{:.2f} s, its own Python {:.2f} s".format(
                  profile["encoder"]["rows_per_call"], profile["encoder"]["ms_per_call"],
                  profile["decoder_step"]["rows_per_call"], profile["decoder_step"]["ms_per_call"],
                  profile["busy_s"], profile["seconds"], profile["python_s"]))
    if len(in_process) == 2:
        print("\ndecode loop in-process, {} clients vs 1: {:.2f}x captions/s (the loop's own scaling)".format(
            args.clients, in_process[1]["captions_per_s"] / in_process[0]["captions_per_s"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "metrics": metrics, "in_process": in_process}, handle, indent=2)


if __name__ == "__main__":
    main()
