#!/usr/bin/env python3
"""Records what the real Segment and RudderStack SDKs send, as golden files for seam-ingest's tests.

Run after `scripts/test` has installed the SDKs (or with PYTHONPATH and node_modules in place):
    python3 scripts/record-sdk-payloads.py
It starts a local HTTP server on 127.0.0.1 that answers like Seam, runs each SDK's scenario against it, and
writes the request bodies (gzip inflated) to crates/seam-ingest/tests/golden/<sdk>.json. Then run
`SEAM_UPDATE_GOLDEN=1 cargo test -p seam-ingest --test golden` to refresh the expected normalised events.
"""
import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDK_DIR = os.path.join(ROOT, "crates", "seam", "tests", "sdk")
OUT = os.path.join(ROOT, "crates", "seam-ingest", "tests", "golden")
PYTHONPATH = os.environ.get("SEAM_SDK_PYTHONPATH", os.path.join(ROOT, "target", "sdk-python"))


class Recorder(BaseHTTPRequestHandler):
    bodies = []

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        Recorder.bodies.append({"path": self.path, "body": json.loads(raw)})
        out = b'{"success":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def record(name, cmd, env):
    Recorder.bodies = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    subprocess.run(cmd + [base, "wk_golden", name], check=True, env=env, cwd=SDK_DIR, timeout=60)
    server.shutdown()
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(Recorder.bodies, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: {len(Recorder.bodies)} requests")


def main():
    os.makedirs(OUT, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    record("segment-python", [sys.executable, "python_sdk.py", "segment"], env)
    record("rudder-python", [sys.executable, "python_sdk.py", "rudder"], env)
    record("segment-node", ["node", "node_sdk.js", "segment"], env)
    record("rudder-node", ["node", "node_sdk.js", "rudder"], env)


if __name__ == "__main__":
    main()
