"""Shared by the client tests: the real factlens_server on loopback, and the facts the tests rely on.

Every test script takes FACTLENS_SERVER and the directory holding the factlens package (with stubs)
as its first two arguments.
"""
import os
import sys

# The server harness shared with the project's other Python-driven tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests", "python"))
from server_process import ServerProcess as Server  # noqa: E402,F401  (re-exported to the tests)

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
