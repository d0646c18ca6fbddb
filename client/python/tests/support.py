"""Shared by the client tests: the real factlens_server on loopback, and the facts the tests rely on.

Every test script takes FACTLENS_SERVER and the directory holding the factlens package (with stubs)
as its first two arguments.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

PROMPT = "The capital of France is"
PARIS = 6342  # GPT-2's id of " Paris"; the demo model's argmax after PROMPT
TOKEN = "client-test-token"


def args():
    """(server binary, package dir) from the command line; the package dir is put first on sys.path."""
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} FACTLENS_SERVER PYTHON_PACKAGE_DIR")
    sys.path.insert(0, sys.argv[2])
    return sys.argv[1], sys.argv[2]


def write_token_file(directory):
    path = os.path.join(directory, "tokens")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")
    return path


class Server:
    """A factlens_server child process on free loopback ports (the demo model); stop() sends SIGTERM."""

    def __init__(self, binary, *flags):
        self.dir = tempfile.mkdtemp(prefix="factlens-client-test-")
        port_file = os.path.join(self.dir, "ports")
        self.log_path = os.path.join(self.dir, "server.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--http_listen", "127.0.0.1:0",
                                          "--port_file", port_file, "--threads", "1", *flags],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("factlens_server did not start:\n" + self.logs())
            time.sleep(0.05)
        with open(port_file) as f:
            self.address = "127.0.0.1:" + f.read().split()[0]

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)
