"""A loopback "AWS endpoint" for the workflow test: Lambda Invoke calls go to the runtime API
emulator of the function named (by the suffix of its name: -initialize, -infer, -summarize),
every other request goes to moto unchanged.

moto's Step Functions interpreter calls Lambda at http://localhost:$MOTO_PORT, so moto is
started with MOTO_PORT set to this router's port; the router then stands where AWS Lambda's
Invoke API stands, and the functions themselves are our binary on `cargo lambda`'s emulator.

usage: lambda_router.py PORT MOTO_PORT initialize=PORT infer=PORT summarize=PORT
"""
import http.client
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, MOTO_PORT = int(sys.argv[1]), int(sys.argv[2])
EMULATORS = dict(a.split("=", 1) for a in sys.argv[3:])
DROP = {"host", "content-length", "connection", "transfer-encoding"}


class Route(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        port, path = MOTO_PORT, self.path
        parts = self.path.split("?")[0].split("/")
        if len(parts) == 5 and parts[1:3] == ["2015-03-31", "functions"] and parts[4] == "invocations":
            name = urllib.parse.unquote(parts[3]).split(":function:")[-1].split(":")[0]
            suffix = name.rsplit("-", 1)[-1]
            if suffix not in EMULATORS:
                self.reply(404, [("Content-Type", "application/json")],
                           b'{"Type":"User","Message":"Function not found: %s"}' % name.encode())
                return
            port, path = int(EMULATORS[suffix]), "/2015-03-31/functions/_/invocations"
            sys.stderr.write(f"invoke {name}\n")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROP}
        conn.request(self.command, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        keep = [(k, v) for k, v in r.getheaders() if k.lower() not in DROP | {"date", "server"}]
        self.reply(r.status, keep, data)

    def reply(self, status, headers, data):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward


ThreadingHTTPServer(("127.0.0.1", PORT), Route).serve_forever()
