"""factlens_server as a child process of a test, on free loopback ports.

Shared by the Python-driven tests (tests/e2e, tests/deploy, client/python/tests); each puts this
directory on sys.path.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import weakref

# What every test server gets unless the test passes default_flags=False: free loopback ports and
# one thread (the tests run two at a time on two cores).
DEFAULT_FLAGS = ("--listen", "127.0.0.1:0", "--http_listen", "127.0.0.1:0", "--threads", "1")


def _kill_and_remove(procs, directory):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(directory, ignore_errors=True)


class ServerProcess:
    """Starts BINARY with DEFAULT_FLAGS (unless default_flags=False) and `flags`, waits until it
    serves (it writes its ports to --port_file once its models are loaded), and exposes
    .address (gRPC host:port), .http (base URL of /metrics, /healthz, /readyz), logs(), metrics()
    and stop(). Raises RuntimeError, with the server's log, if it exits or is not ready in 60 s."""

    def __init__(self, binary, *flags, default_flags=True):
        self.dir = tempfile.mkdtemp(prefix="factlens-server-")
        self._log = None
        # Registered before anything can fail: a server its test never stopped (an exception between
        # start and stop) is killed, and the directory removed, when the object goes away or the
        # interpreter exits; a server that could not be started (Popen raised) leaves nothing either.
        procs = []
        self._cleanup = weakref.finalize(self, _kill_and_remove, procs, self.dir)
        port_file = os.path.join(self.dir, "ports")
        self.log_path = os.path.join(self.dir, "server.log")
        try:
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    [binary, *(DEFAULT_FLAGS if default_flags else ()), *flags, "--port_file", port_file],
                    stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            self._cleanup()
            raise
        procs.append(self.proc)
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("factlens_server did not start:\n" + self.logs())
            time.sleep(0.05)
        with open(port_file) as f:
            grpc_port, http_port = f.read().split()
        self.address, self.http = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"

    def logs(self):
        if self._log is not None:  # stopped: the directory is gone, its log kept
            return self._log
        with open(self.log_path) as f:
            return f.read()

    def metrics(self):
        return urllib.request.urlopen(self.http + "/metrics", timeout=5).read().decode()

    def stop(self):
        """SIGTERM (if still running), then the exit status. Removes the server's temporary
        directory; logs() still returns its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if self._log is None:
            self._log = self.logs()
            self._cleanup()
        return code
