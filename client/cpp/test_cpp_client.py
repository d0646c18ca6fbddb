"""End-to-end test of the C++ sample client against the real factlens_server.

Usage: test_cpp_client.py FACTLENS_SERVER FACTLENS_CPP_CLIENT
Starts the server on free loopback ports with a bearer-token file (serving its demo model), runs the
client's locate and rank commands and its error paths, then stops the server with SIGTERM and
checks that it exits 0. Exits 0 when every check passes, 1 otherwise (the failures are listed).
"""
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

SERVER, CLIENT = sys.argv[1], sys.argv[2]
# The server harness shared with the project's other Python-driven tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "python"))
from server_process import ServerProcess  # noqa: E402
TOKEN = "cpp-client-token"
PROMPT = "The capital of France is"
# Independent facts about the demo model gpt2-facts-tiny: GPT-2's token " Paris" is id 6342.
TARGET, TARGET_ID = " Paris", 6342

failures = []


def check(condition, what, detail=""):
    """Records a failed check (with detail) or prints ok."""
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures.append(what + ("\n" + detail if detail else ""))
    return condition


def client(address, *args, token=TOKEN):
    """Runs the C++ client; returns the CompletedProcess (text stdout/stderr)."""
    flags = ["--server", address] + (["--token", token] if token else [])
    return subprocess.run([CLIENT, *flags, *args], capture_output=True, text=True, timeout=60)


def client_json(address, *args):
    """Runs the client with --json; returns the parsed stdout, or None (a failed check)."""
    proc = client(address, "--json", *args)
    lines = proc.stdout.splitlines()
    try:
        ok = proc.returncode == 0 and len(lines) == 1
        parsed = json.loads(lines[0]) if ok else None
    except ValueError:
        parsed = None
    check(parsed is not None, f"{args[0]} --json: exit 0 and one line of JSON", show(proc))
    return parsed


def show(proc):
    """A finished client run, for failure messages."""
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def rank_rows(stdout):
    """The rows of the rank table: [(label, score)]."""
    rows = re.findall(r"^\d+\s+(L\d+ \S+(?: @\d+)?(?: d\d+)?)\s+(-?\d+\.\d+)(?:\s+-?\d+\.\d+)?$", stdout,
                      re.MULTILINE)
    return [(label, float(score)) for label, score in rows]


def test_locate(address):
    """locate: its text report and progress against its JSON report and against rank."""
    text = client(address, "locate", PROMPT, TARGET)
    if not check(text.returncode == 0, "locate: exit 0", show(text)):
        return
    check(f'target "{TARGET}" (id {TARGET_ID})' in text.stdout, "locate: names the target and its id",
          text.stdout)
    progress = [(float(f), stage) for f, stage in
                re.findall(r"^progress (\d+\.\d+) (.+)$", text.stderr, re.MULTILINE)]
    fractions = [f for f, _ in progress]
    check(len(progress) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0,
          "locate: progress lines on stderr, non-decreasing up to 1", text.stderr)

    report = client_json(address, "locate", PROMPT, TARGET)
    if report is None:
        return
    check(int(report["target"]["id"]) == TARGET_ID and report["target"]["token"] == TARGET,
          "locate --json: target", str(report["target"]))
    outcome = report["outcome"]
    printed = re.search(r"prob (\d+\.\d+)\s+log_prob (-?\d+\.\d+)\s+rank (\d+)", text.stdout)
    check(printed is not None and abs(float(printed.group(1)) - outcome["prob"]) <= 5e-7
          and abs(float(printed.group(2)) - outcome["log_prob"]) <= 5e-7
          and int(printed.group(3)) == int(outcome["rank"]),
          "locate: printed prob, log_prob and rank equal the report's", text.stdout[:400])
    check(abs(math.exp(outcome["log_prob"]) - outcome["prob"]) < 1e-9 and 0 < outcome["prob"] <= 1,
          "locate: prob = exp(log_prob)", str(outcome))
    predicted = [p for p in report["predictions"] if int(p["id"]) == TARGET_ID]
    check(len(predicted) == 1 and abs(predicted[0]["score"] - outcome["prob"]) < 1e-9,
          "locate: the target's prediction probability equals its outcome prob", str(report["predictions"]))

    # The per-layer table of the text report against separate Rank calls at the layer levels.
    table = {int(layer): (float(attn), float(ffn)) for layer, attn, ffn in
             re.findall(r"^(\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$", text.stdout, re.MULTILINE)}
    layers = len(report["ffn_layer_increase"])
    check(layers > 0 and sorted(table) == list(range(layers)), "locate: one table row per layer",
          text.stdout)
    for level, column in (("attention_layer", 0), ("ffn_layer", 1)):
        ranked = client(address, "rank", PROMPT, TARGET, "--level", level, "--top_k", str(layers))
        rows = rank_rows(ranked.stdout)
        by_layer = {int(re.match(r"L(\d+)", label).group(1)): score for label, score in rows}
        check(ranked.returncode == 0 and len(rows) == layers and all(
            layer in table and abs(table[layer][column] - score) <= 2e-6 for layer, score in by_layer.items()),
              f"locate: per-layer {level} increases equal rank --level {level}",
              show(ranked) + "\nlocate table: " + str(table))

    # The printed top FFN neurons against rank --level ffn_neuron (same metric and mode).
    neurons = [(f"L{layer} N{neuron}", float(score)) for layer, neuron, score in
               re.findall(r"^  L(\d+) N(\d+)\s+(-?\d+\.\d+)\s+coef", text.stdout, re.MULTILINE)]
    ranked = client(address, "rank", PROMPT, TARGET, "--level", "ffn_neuron", "--top_k", str(len(neurons)))
    check(len(neurons) > 0 and [l for l, _ in rank_rows(ranked.stdout)] == [l for l, _ in neurons],
          "locate: top FFN neurons equal rank --level ffn_neuron", show(ranked) + "\n" + str(neurons))


def test_rank(address):
    """rank: the table's rows, their order, and their scores against the JSON response."""
    ranked = client(address, "rank", PROMPT, TARGET, "--level", "ffn_neuron", "--top_k", "5")
    if not check(ranked.returncode == 0, "rank: exit 0", show(ranked)):
        return
    check(f"target id {TARGET_ID}" in ranked.stdout, "rank: names the target id", ranked.stdout)
    rows = rank_rows(ranked.stdout)
    scores = [score for _, score in rows]
    check(len(rows) == 5 and all(re.fullmatch(r"L\d+ N\d+", label) for label, _ in rows),
          "rank: 5 FFN neuron rows", ranked.stdout)
    check(scores == sorted(scores, reverse=True) and scores[0] > scores[-1],
          "rank: scores in descending order", ranked.stdout)
    response = client_json(address, "rank", PROMPT, TARGET, "--level", "ffn_neuron", "--top_k", "5")
    json_scores = [c["score"] for c in response["components"]] if response else []
    check(len(json_scores) == 5 and all(abs(a - b) <= 5e-7 for a, b in zip(scores, json_scores)),
          "rank: the table's scores equal the --json response's", f"{scores}\n{json_scores}")


def expect_error(what, proc, codes):
    """Checks that the client failed with exit 1, nothing on stdout, and one of `codes` on stderr."""
    check(proc.returncode == 1 and re.search(r"^error: (%s): \S" % "|".join(codes), proc.stderr, re.MULTILINE)
          and proc.stdout == "", what, show(proc))


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors(address):
    """The error contract: exit 1 with the status code name, exit 2 on usage errors."""
    expect_error("error: wrong token -> UNAUTHENTICATED",
                 client(address, "rank", PROMPT, TARGET, token="wrong-token"), ["UNAUTHENTICATED"])
    expect_error("error: no token -> UNAUTHENTICATED", client(address, "locate", PROMPT, TARGET, token=None),
                 ["UNAUTHENTICATED"])
    expect_error("error: multi-token target -> INVALID_ARGUMENT",
                 client(address, "locate", PROMPT, " Paris France"), ["INVALID_ARGUMENT"])
    expect_error("error: negative top_k -> INVALID_ARGUMENT",
                 client(address, "rank", PROMPT, TARGET, "--top_k", "-1"), ["INVALID_ARGUMENT"])
    expect_error("error: unknown model -> NOT_FOUND",
                 client(address, "--model", "no-such-model", "rank", PROMPT, TARGET), ["NOT_FOUND"])
    started = time.time()
    expect_error("error: no server -> UNAVAILABLE or DEADLINE_EXCEEDED",
                 client(f"127.0.0.1:{free_port()}", "--deadline_s", "2", "rank", PROMPT, TARGET),
                 ["UNAVAILABLE", "DEADLINE_EXCEEDED"])
    check(time.time() - started < 15, "error: no server fails within the deadline")
    usage = client(address, "rank", PROMPT)
    check(usage.returncode == 2 and usage.stderr.startswith("error: usage: "), "usage error -> exit 2",
          show(usage))
    usage = client(address, "rank", PROMPT, TARGET, "--level", "no_such_level")
    check(usage.returncode == 2 and "no_such_level" in usage.stderr, "unknown level -> exit 2", show(usage))


def main():
    """Runs every check against one server; returns the exit status. The token file's directory and
    the server's own (tests/python/server_process.py) are removed however the run ends."""
    with tempfile.TemporaryDirectory(prefix="factlens-cpp-client-") as scratch:
        token_file = os.path.join(scratch, "tokens")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        server = ServerProcess(SERVER, "--auth_token_file", token_file)
        try:
            test_locate(server.address)
            test_rank(server.address)
            test_errors(server.address)
        finally:
            status = server.stop()
    check(status == 0, "server: exits 0 on SIGTERM", server.logs()[-2000:])
    if failures:
        print(f"\n{len(failures)} check(s) failed:\n" + "\n\n".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
