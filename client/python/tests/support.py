"""Shared by the client tests: the real factlens_server on loopback, and the facts the tests rely on.

Every test script takes FACTLENS_SERVER and the directory holding the factlens package (with stubs)
as its first two arguments.
"""
import contextlib
import http.server
import os
import socket
import sys
import threading

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")

# The server harness shared with the project's other Python-driven tests.
sys.path.insert(0, os.path.join(_ROOT, "tests", "python"))
from server_process import ServerProcess as Server  # noqa: E402,F401  (re-exported to the tests)

PROMPT = "The capital of France is"
PARIS = 6342  # GPT-2's id of " Paris"; the demo model's argmax after PROMPT
TOKEN = "client-test-token"
MODELS = os.path.normpath(os.path.join(_ROOT, "models"))  # gpt2-facts-tiny, llama-facts-tiny
# A warning as the server words it, for fake servers (quotes and '<' check the escaping).
WARNING = ('target "Paris" (token 40313) has no leading space: the model ranks it 812th <p = 1e-05>; '
           'did you mean " Paris" (rank 1, p = 0.84)?')


def args():
    """(server binary, package dir) from the command line; the package dir is put first on sys.path.
    The caller's $FACTLENS_SERVER / $FACTLENS_MODEL are dropped (for child processes too): the tests
    name their servers and models, and set these variables themselves where they test them."""
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} FACTLENS_SERVER PYTHON_PACKAGE_DIR")
    for name in ("FACTLENS_SERVER", "FACTLENS_MODEL"):
        os.environ.pop(name, None)
    sys.path.insert(0, sys.argv[2])
    return sys.argv[1], sys.argv[2]


def write_token_file(directory):
    path = os.path.join(directory, "tokens")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")
    return path


def closed_port():
    """A loopback port nothing listens on (bound once to pick it, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Http1Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def http1_server():
    """A plain HTTP/1.1 server (Python's http.server) on a loopback port, standing in for factlens_server's
    metrics port; yields its host:port and stops it however the block ends."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http1Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
