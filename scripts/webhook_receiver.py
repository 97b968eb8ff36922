"""A webhook receiver for `make e2e` and for trying webhooks by hand: listens on
127.0.0.1:PORT, verifies each POST's Standard Webhooks signature with the secret in the
environment variable WEBHOOK_SECRET, answers 204 (or 401 when it does not verify), and
appends one JSON line per request to FILE: {"id", "type", "job_id", "status", "verified"}.

Usage: WEBHOOK_SECRET=whsec_... python3 scripts/webhook_receiver.py PORT FILE
(the secret may also be given later: the file FILE.secret is read when it exists).
"""

import base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer


# --- verify (docs/webhooks.md shows this function verbatim) ---
def verify(secret: str, headers, body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > 300:
        return False  # too old or from the future: a replay
    signed = f"{msg_id}.{ts}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s.split(",", 1)[1])
               for s in headers["webhook-signature"].split() if s.startswith("v1,"))
# --- end verify ---


def secret(out: str) -> str:
    try:
        with open(out + ".secret") as f:
            return f.read().strip()
    except FileNotFoundError:
        return os.environ.get("WEBHOOK_SECRET", "")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        out = self.server.out
        try:
            ok = verify(secret(out), self.headers, body)
        except (KeyError, ValueError):
            ok = False
        event = json.loads(body or b"{}")
        job = event.get("data", {}).get("job", {})
        line = {"id": self.headers.get("webhook-id"), "type": event.get("type"),
                "job_id": job.get("id"), "status": job.get("status"), "verified": ok}
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.out = sys.argv[2]
    server.serve_forever()
