"""Start `jetcap serve-engine` on a free loopback port, caption one sample image over HTTP, stop it.

The last step of `make demo`: what a client of the Jetson's HTTP service sees.
"""
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

from jetcap import samples


def main(bundle):
    server = subprocess.Popen([sys.executable, "-m", "jetcap", "serve-engine", bundle, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    try:
        url = None
        while url is None:
            line = server.stdout.readline()
            if not line:
                raise SystemExit("serve-engine exited before listening")
            match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        print("server:", url)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                if time.time() > deadline:
                    raise SystemExit("server never became ready: {}".format(exc.read().decode()))
            time.sleep(0.2)
        image = samples.sample_images()[0]
        request = urllib.request.Request(url + "/caption", data=image.read_bytes(),
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read().decode())
        print("POST /caption {} -> {!r} ({} {}, {:.1f} ms)".format(
            image.name, reply["caption"], reply["backend"], reply["precision"], reply["latency_ms"]))
    finally:
        server.send_signal(signal.SIGTERM)
        print("server exited with", server.wait(timeout=30))


if __name__ == "__main__":
    main(sys.argv[1])
