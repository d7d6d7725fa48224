"""Soak test of ``jetcap serve-engine``: many requests against a server on loopback, watching its memory.

Starts ``python -m jetcap serve-engine BUNDLE --host 127.0.0.1 --port 0 [SERVER ARGS]``, waits for
``/ready``, sends ``--warmup`` requests, then ``--requests`` more from ``--concurrency`` client threads
(the bundle's sample inputs: images for a captioner, gesture sequences for a classifier), stopping by
itself after ``--requests`` or ``--max-seconds``.  It records the server's resident memory (VmRSS from
/proc) after loading, after the warm-up and at the end, plus every ``--rss-every`` requests; then it
stops the server with SIGTERM and checks it exits 0.

Prints a markdown snippet for docs/BENCHMARKS.md and exits 1 when a request failed (any non-200),
the resident memory grew by ``--max-growth`` (default 5 %) or more after the warm-up, or the server
did not exit cleanly.

    python benchmarks/soak_serve.py BUNDLE --requests 10000 --concurrency 8 -- --threads 1

Python 3.6 compatible, standard library only (the server itself needs numpy/onnxruntime/Pillow).
"""
import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time

from jetcap.runtime.loader import current_rss_bytes

HOST = "127.0.0.1"


def rss_bytes(pid):
    """VmRSS of process ``pid`` in bytes (None once it is gone or unreadable)."""
    return current_rss_bytes("/proc/{}/status".format(pid))


def request(port, method, path, body=None, headers=None, timeout=60.0):
    """``(status, body bytes)`` of one request on a fresh connection (the server speaks HTTP/1.0)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ServerProcess(object):
    """The server subprocess; its stdout is read on a thread, its JSON log goes to ``log_path``."""

    def __init__(self, bundle, server_args, log_path):
        command = [sys.executable, "-m", "jetcap", "serve-engine", str(bundle), "--host", HOST, "--port", "0"]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(command + list(server_args), stdout=subprocess.PIPE, stderr=self.log,
                                     universal_newlines=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines = []
        self.port = None
        thread = threading.Thread(target=self._read)
        thread.daemon = True
        thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout=300.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.port is None:
                for line in self.lines:
                    match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                    if match:
                        self.port = int(match.group(1))
            if self.port is not None:
                status, body = request(self.port, "GET", "/ready")
                if status == 200:
                    return json.loads(body.decode("utf-8"))
                info = json.loads(body.decode("utf-8"))
                if info.get("state") == "failed":
                    raise SystemExit("the server could not load the bundle: {}".format(info.get("detail")))
            if self.proc.poll() is not None:
                raise SystemExit("the server exited with {} before it was ready: {}".format(
                    self.proc.returncode, self.lines))
            time.sleep(0.1)
        raise SystemExit("the server was not ready within {} s".format(timeout))

    def stop(self, timeout=120.0):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


def sample_requests(family):
    """``[(path, body, headers)]`` cycled through by the clients: the shipped sample inputs."""
    from jetcap import samples

    if family == "captioner":
        return [("/caption", path.read_bytes(), {"Content-Type": "image/png"}) for path in samples.sample_images()]
    import numpy as np

    return [("/predict", json.dumps({"sequence": np.load(str(path)).tolist()}).encode("utf-8"),
             {"Content-Type": "application/json"}) for path in samples.sample_sequences()]


class Soak(object):
    """Runs the request loop on ``concurrency`` threads and collects latencies and statuses."""

    def __init__(self, port, inputs, total, concurrency, max_seconds, rss_probe, rss_every):
        self.port = port
        self.inputs = inputs
        self.total = total
        self.concurrency = concurrency
        self.deadline = time.time() + max_seconds
        self.rss_probe = rss_probe
        self.rss_every = rss_every
        self.latencies = []
        self.statuses = {}
        self.errors = []
        self.rss_trace = []
        self._next = 0
        self._lock = threading.Lock()

    def _take(self):
        with self._lock:
            if self._next >= self.total or time.time() > self.deadline:
                return None
            index = self._next
            self._next += 1
            if self.rss_every and index % self.rss_every == 0:
                self.rss_trace.append((index, self.rss_probe()))
            return index

    def _client(self):
        while True:
            index = self._take()
            if index is None:
                return
            path, body, headers = self.inputs[index % len(self.inputs)]
            began = time.time()
            try:
                status, _ = request(self.port, "POST", path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                status = "{}".format(type(exc).__name__)
                with self._lock:
                    self.errors.append(str(exc))
            elapsed = time.time() - began
            with self._lock:
                self.latencies.append(elapsed)
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def run(self):
        began = time.time()
        threads = [threading.Thread(target=self._client) for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.time() - began


def percentile(values, fraction):
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def machine():
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except (IOError, OSError):
        cpu = cpu or "unknown CPU"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "{}, {} usable cores, {} {}, Python {}".format(cpu, usable, platform.system(), platform.release(),
                                                           platform.python_version())


def mib(value):
    return "n/a" if value is None else "{:.1f} MiB".format(value / 1048576.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s BUNDLE [options] [-- serve-engine options]",
                                     epilog="Arguments after -- go to jetcap serve-engine.")
    parser.add_argument("bundle", help="bundle directory to serve")
    parser.add_argument("--requests", type=int, default=10000, help="measured requests (default 10000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the RSS baseline (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop sending after this long (default 900)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up (0.05)")
    parser.add_argument("--rss-every", type=int, default=1000, help="sample RSS every N requests (default 1000)")
    parser.add_argument("--log", default=None, help="where the server's JSON log goes (default: a temp file)")
    argv = list(sys.argv[1:] if argv is None else argv)
    server_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")

    import tempfile

    log_path = args.log or os.path.join(tempfile.mkdtemp(prefix="jetcap-soak-"), "server.log")
    server = ServerProcess(args.bundle, server_args, log_path)
    clean_exit = False
    try:
        ready = server.wait_ready()
        pid = server.proc.pid
        rss_loaded = rss_bytes(pid)
        family = ready["family"]
        inputs = sample_requests(family)
        if args.warmup:
            Soak(server.port, inputs, args.warmup, args.concurrency, args.max_seconds, lambda: None, 0).run()
        rss_start = rss_bytes(pid)
        soak = Soak(server.port, inputs, args.requests, args.concurrency, args.max_seconds,
                    lambda: rss_bytes(pid), args.rss_every)
        seconds = soak.run()
        rss_end = rss_bytes(pid)
        soak.rss_trace.append((len(soak.latencies), rss_end))
        code = server.stop()
        clean_exit = code == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    done = len(soak.latencies)
    ok = soak.statuses.get(200, 0)
    growth = (rss_end - rss_start) / float(rss_start) if rss_start and rss_end else float("nan")
    stopped_by = "count" if done >= args.requests else "time limit ({} s)".format(args.max_seconds)
    failures = []
    if ok != done:
        failures.append("{} of {} requests were not 200: {}".format(done - ok, done, soak.statuses))
    if not growth < args.max_growth:
        failures.append("RSS grew by {:.1%} (limit {:.0%})".format(growth, args.max_growth))
    if not clean_exit:
        failures.append("the server did not exit 0 on SIGTERM")

    endpoint = "POST /caption" if family == "captioner" else "POST /predict"
    print("### serve-engine soak: {} {} on {} {}".format(family, endpoint, ready["backend"], ready["precision"]))
    print("")
    print("Machine: {}.  Command: `python benchmarks/soak_serve.py {} --requests {} --concurrency {}{}`.".format(
        machine(), os.path.basename(os.path.normpath(args.bundle)), args.requests, args.concurrency,
        (" -- " + " ".join(server_args)) if server_args else ""))
    print("")
    print("| requests | concurrency | non-200 | seconds | req/s | p50 ms | p95 ms | p99 ms | RSS loaded | "
          "RSS after warm-up | RSS end | growth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("| {} | {} | {} | {:.1f} | {:.1f} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} | {:+.2%} |".format(
        done, args.concurrency, done - ok, seconds, done / seconds, percentile(soak.latencies, 0.5) * 1000,
        percentile(soak.latencies, 0.95) * 1000, percentile(soak.latencies, 0.99) * 1000, mib(rss_loaded),
        mib(rss_start), mib(rss_end), growth))
    print("")
    print("RSS every {} requests: {}.  Warm-up: {} requests before the baseline.  Stopped by: {}; "
          "server exit on SIGTERM: {}.".format(
              args.rss_every, ", ".join(mib(v) for _, v in soak.rss_trace), args.warmup, stopped_by,
              "0" if clean_exit else "not clean"))
    if failures:
        print("")
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
