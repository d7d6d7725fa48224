"""With N slow clients attached, how fast do /health and normal /caption clients get answers? (bounded)

Starts ``jetcap serve-engine`` on loopback, measures /health latency and the /caption throughput of
``--clients`` normal clients for ``--seconds``, then again while ``--slow`` connections trickle their
headers (one byte every ``--trickle`` seconds, reconnecting when closed).  Prints one JSON object.

    python benchmarks/slow_clients.py BUNDLE --slow 64 --seconds 10
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HOST = "127.0.0.1"


def start_server(bundle, extra):
    command = [sys.executable, "-m", "jetcap", "serve-engine", bundle, "--host", HOST, "--port", "0",
               "--threads", "1"] + extra
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    port = None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
        if line.startswith("model ready"):
            return proc, port
        if line.startswith("model NOT ready") or not line:
            break
    proc.kill()
    raise SystemExit("server did not become ready")


def trickler(port, stop, trickle):
    while not stop.is_set():
        try:
            sock = socket.create_connection((HOST, port), timeout=5)
            sock.sendall(b"POST /caption HTTP/1.0\r\n")
            while not stop.is_set():
                sock.sendall(b"X")
                if stop.wait(trickle):
                    break
        except (OSError, socket.error):
            stop.wait(0.05)
        finally:
            try:
                sock.close()
            except Exception:
                pass


def measure(port, image, clients, seconds):
    done, errors, health = [], [], []
    stop = threading.Event()

    def caption_client():
        while not stop.is_set():
            try:
                request = urllib.request.Request("http://{}:{}/caption".format(HOST, port), data=image)
                urllib.request.urlopen(request, timeout=30).read()
                done.append(time.time())
            except Exception as exc:
                errors.append(type(exc).__name__)

    def health_client():
        while not stop.is_set():
            began = time.time()
            try:
                urllib.request.urlopen("http://{}:{}/health".format(HOST, port), timeout=30).read()
                health.append((time.time() - began) * 1000.0)
            except Exception as exc:
                errors.append("health " + type(exc).__name__)
            stop.wait(0.1)

    threads = [threading.Thread(target=caption_client) for _ in range(clients)] + [threading.Thread(target=health_client)]
    began = time.time()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(35)
    elapsed = time.time() - began
    health.sort()
    return {"captions_per_s": round(len(done) / elapsed, 2), "captions": len(done), "errors": len(errors),
            "error_kinds": sorted(set(errors)),
            "health_ms_median": round(statistics.median(health), 2) if health else None,
            "health_ms_p99": round(health[int(0.99 * (len(health) - 1))], 2) if health else None,
            "health_ms_max": round(health[-1], 2) if health else None, "health_probes": len(health)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--trickle", type=float, default=5.0)
    parser.add_argument("--image", default=None, help="image to caption [default: the first sample image]")
    args = parser.parse_args()
    if args.image:
        image = open(args.image, "rb").read()
    else:
        from jetcap import samples

        image = samples.sample_images()[0].read_bytes()
    proc, port = start_server(args.bundle, [])
    try:
        baseline = measure(port, image, args.clients, args.seconds)
        stop = threading.Event()
        slow = [threading.Thread(target=trickler, args=(port, stop, args.trickle)) for _ in range(args.slow)]
        for thread in slow:
            thread.daemon = True
            thread.start()
        time.sleep(1.5)  # all attached and stalled
        attacked = measure(port, image, args.clients, args.seconds)
        stop.set()
    finally:
        proc.terminate()
        proc.wait(30)
    print(json.dumps({"slow_clients": args.slow, "clients": args.clients, "seconds": args.seconds,
                      "cpus": os.cpu_count(), "without": baseline, "with": attacked}, indent=1))


if __name__ == "__main__":
    main()
