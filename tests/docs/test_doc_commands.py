"""Every command shown in the README and the docs, run against the README's server (issue 15).

Usage: test_doc_commands.py FACTLENS_SERVER BUILD_DIR SOURCE_DIR

Reads the Markdown files of DOCS and extracts
  * every fenced ```sh / ```bash / ```shell block: each command (continuation lines joined, comments
    dropped); the `export`s before it in the same block are run before it;
  * every ```console block: each `$ ` line is a command and the lines after it its output, which
    must appear in the real output (lines with "..." or "<-" are elisions and notes, skipped);
  * every ```python block: run as a script on its own (a block that needs an earlier block's
    variables fails: make it whole);
  * every inline code span that reads like a command (`factlens trace ...`, `curl -s ...`).
The README's server command (the one starting build/server/factlens_server) is started, with its
flags, as the server all the others talk to. Every other command either runs and must exit 0 (with
the EXPECT checks, and the files named by --html / savefig / to_html must be written), or is in
EXCLUDED with the reason and the test that covers it. The test fails when a doc shows a command that
is neither (so a doc edit cannot escape), when an EXCLUDED entry no longer appears in the docs, when
a fence has a language this test does not know, and when an unlabelled or text fence holds
something that looks like a command (label it sh or console).

How the docs' world is mapped onto the test's (nothing else is changed):
  * each command runs in a fresh temporary directory that stands for the checkout's root: every
    top-level entry of SOURCE_DIR is symlinked into it and `build` points at BUILD_DIR;
  * the docs' addresses 127.0.0.1 / localhost / 0.0.0.0 with port 50051 (gRPC) or 9090 (metrics)
    become the test server's free ports, and $FACTLENS_SERVER is set to its gRPC address, standing
    for the clients' default 127.0.0.1:50051; $FACTLENS_MODEL and $FACTLENS_TOKEN are unset;
  * the installed commands (`factlens` from `pip install ./client/python`, and the binaries by their
    bare names) are on PATH: `factlens` runs `python3 -m factlens` with PYTHONPATH=BUILD_DIR/python;
    `python3` is the interpreter this test runs under (CTest: /usr/bin/python3, the client's Python).
Temporary directories and the server are removed in every outcome.
"""
import collections
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SERVER_BINARY, BUILD, SOURCE = (os.path.abspath(a) for a in sys.argv[1:4])
sys.path.insert(0, os.path.join(SOURCE, "tests", "python"))
from server_process import ServerProcess  # noqa: E402

# The Markdown files whose commands are run. docs/*.md must all be here (checked below).
DOCS = [
    "README.md",
    "docs/api-examples.md",
    "docs/design.md",
    "docs/fairseq.md",
    "docs/gpu.md",
    "docs/method-reference.md",
    "docs/metrics.md",
    "docs/python-client.md",
    "docs/reliability.md",
    "docs/tokenizer.md",
    "client/python/README.md",
    "client/cpp/README.md",
    "deploy/README.md",
]

# (file, command exactly as the doc shows it, whitespace collapsed, comment dropped):
#   (why it is not run here, what runs it or covers it instead)
EXCLUDED = {
    # Set-up and build scripts: minutes each, network, and the build this test runs in.
    ("README.md", "./scripts/demo.sh"): (
        "sets up and builds (scripts/setup.sh, scripts/build.sh), then serves the demo model",
        "its server + LocateFact steps are the README's 'Using it' commands run here; the build: "
        ".ci/run -> scripts/test.sh"),
    ("README.md", './scripts/test.sh'): (
        "sets up, builds and runs every test, this one included", ".ci/run runs exactly it"),
    ("README.md", 'scripts/demo.sh "The capital of Japan is" " Tokyo"'): (
        "scripts/demo.sh: sets up and builds first",
        "the same LocateFact with another fact: README's 'Using it' locate, run here"),
    ("README.md", "scripts/build.sh"): (
        "the full build, the one this test runs in", ".ci/run -> scripts/test.sh"),
    ("README.md", "pip install ./client/python"): (
        "installs into the system's Python", "python_client_pip_install (into a fresh venv)"),
    ("README.md", "pip install torch==2.11.0"): (
        "a 2.6 GB download, shown as the alternative scripts/setup.sh does not take", "none: not a step"),
    ("README.md", "pip install"): ("a fragment in prose, not a command", "none"),
    ("README.md", "grpcurl -plaintext localhost:50051 list"): (
        "grpcurl is not installed here (the README: 'for users who have grpcurl')",
        "server_e2e test_reflection_lists_the_services (the same reflection list)"),
    ("README.md", "scripts/fuzz.sh --seconds 20"): (
        "a clang build of the fuzz targets, minutes", "fuzz_bounded runs exactly it"),
    ("README.md", "scripts/fuzz.sh --seconds 600"): (
        "ten minutes of fuzzing per target", "fuzz_bounded (the 20 s form)"),
    ("README.md", "scripts/sanitize.sh --fuzz_seconds 600"): (
        "an ASan + UBSan build of the tests, ~40 minutes on 2 cores, then 10 minutes of fuzzing",
        "the same tests uninstrumented, and fuzz_requests_bounded; figures in docs/reliability.md"),
    # GPU and large models.
    ("docs/gpu.md", "build/server/factlens_server --model llama=/models/llama-7b,device=cuda:0,dtype=float16 "
                    "--model gpt2=/models/gpt2-medium,device=cuda:1"): (
        "two CUDA devices and the Llama-7B / GPT-2 medium checkpoints", "gpu_test (label gpu) via scripts/gpu_check.sh"),
    ("docs/gpu.md", 'cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release '
                    '-DFACTLENS_TORCH_PYTHON="$(command -v python3)" -DTORCH_CUDA_ARCH_LIST=9.0'): (
        "a full build on the GPU machine", "scripts/gpu_check.sh"),
    ("docs/gpu.md", "cmake --build build"): ("a full build on the GPU machine", "scripts/gpu_check.sh"),
    ("docs/gpu.md", "cd build && ctest -L gpu --output-on-failure"): (
        "needs a GPU", "scripts/gpu_check.sh runs the gpu label"),
    ("docs/gpu.md", "scripts/gpu_check.sh --fetch-debs"): (
        "downloads Debian packages (network)", "scripts/gpu_check.sh's own run on the GPU machine"),
    ("docs/fairseq.md", "factlens_server --model wiki=/data/adaptive_lm_wiki103.v2"): (
        "the 1 GB Baevski wiki103 checkpoint", "model_test (fairseq_model_test.cc) and server_e2e on baevski-tiny"),
    # Builds and test runs of their own.
    ("docs/tokenizer.md", "cmake -S . -B build-tok -DCMAKE_BUILD_TYPE=Release"): (
        "a second build tree", "the same tests in the main build: ctest -L tokenizer, via scripts/test.sh"),
    ("docs/tokenizer.md", "cmake --build build-tok -j2 --target tokenizer_golden_test tokenizer_unit_test "
                          "tokenizer_sentencepiece_test tokenizer_fairseq_test tokenizer_bench"): (
        "a second build tree", "scripts/test.sh builds these targets"),
    ("docs/tokenizer.md", "ctest --test-dir build-tok -L tokenizer"): (
        "runs a test suite", "scripts/test.sh (label tokenizer)"),
    ("docs/tokenizer.md", "build-tok/bench/tokenizer/tokenizer_bench"): (
        "a benchmark of a second build tree", "none (numbers in bench/RESULTS.md)"),
    ("docs/tokenizer.md", "cmake -S . -B build-fuzz-tok -DFACTLENS_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 "
                          "-DCMAKE_BUILD_TYPE=RelWithDebInfo"): ("a clang fuzz build", "fuzz_bounded (scripts/fuzz.sh)"),
    ("docs/tokenizer.md", "cmake --build build-fuzz-tok -j2 --target fuzz_tokenizer"): (
        "a clang fuzz build", "fuzz_bounded (scripts/fuzz.sh)"),
    ("docs/tokenizer.md", "mkdir -p /tmp/fuzz-tok && build-fuzz-tok/tests/tokenizer/fuzz_tokenizer /tmp/fuzz-tok "
                          "tests/tokenizer/fuzz_corpus -max_total_time=60 -max_len=8192"): (
        "60 s of fuzzing in a fuzz build", "fuzz_bounded (scripts/fuzz.sh)"),
    ("docs/metrics.md", "ctest --test-dir build -L server --output-on-failure"): (
        "runs a test suite", "scripts/test.sh (every label)"),
    ("docs/python-client.md", "ctest -L client"): ("runs a test suite", "scripts/test.sh (every label)"),
    ("docs/reliability.md", "ctest --test-dir build -L reliability --output-on-failure"): (
        "runs a test suite", "scripts/test.sh (every label)"),
    ("docs/reliability.md", "python3 tools/loadgen.py --server build/server/factlens_server --clients 1,8,32,64 "
                            "--seconds 150"): (
        "10 minutes of load", "reliability_load runs the same generator for 10 s"),
    ("docs/reliability.md", "python3 tools/loadgen.py --server build/server/factlens_server --rss --clients 8 "
                            "--seconds 300"): (
        "5 minutes of load", "reliability_load runs the same generator for 10 s"),
    ("docs/reliability.md", "scripts/sanitize.sh --fuzz_seconds 600"): (
        "an ASan + UBSan build of the tests, ~40 minutes on 2 cores, then 10 minutes of fuzzing",
        "the same tests uninstrumented, and fuzz_requests_bounded"),
    ("docs/reliability.md", "scripts/fuzz.sh --seconds 600"): (
        "ten minutes of fuzzing per target", "fuzz_bounded (the 20 s form)"),
    ("docs/python-client.md", "python3 client/python/tests/test_client.py build/server/factlens_server build/python"): (
        "a test of its own, with its own servers", "python_client_api runs exactly it"),
    ("client/cpp/README.md", "ctest --test-dir build -L client"): ("runs a test suite", "scripts/test.sh"),
    ("client/cpp/README.md", "cmake -S client/cpp -B build-client -G Ninja"): (
        "a second build tree (standalone client build)", "cpp_client_e2e runs the client built with the project"),
    ("client/cpp/README.md", "cmake --build build-client"): (
        "a second build tree (standalone client build)", "cpp_client_e2e runs the client built with the project"),
    ("client/cpp/README.md", "cmake -S my/client -B build-client -DFACTLENS_PROTO_DIR=/path/to/proto"): (
        "placeholder paths", "none"),
    ("client/cpp/README.md", "factlens_cpp_client --server HOST:PORT [--token T] [--model NAME] [--deadline_s S] "
                             "[--json] locate PROMPT TARGET [--top_k N]"): (
        "a usage synopsis (placeholders)", "its concrete forms, the console blocks below it, run here"),
    ("client/cpp/README.md", "factlens_cpp_client ... rank PROMPT TARGET [--level LEVEL] [--top_k N]"): (
        "a usage synopsis (placeholders)", "its concrete forms, the console blocks below it, run here"),
    # Installs, containers, clusters.
    ("docs/python-client.md", "pip install ./client/python"): (
        "installs into the system's Python", "python_client_pip_install (into a fresh venv)"),
    ("docs/python-client.md", "python3 -m venv --system-site-packages V && V/bin/pip install "
                              "--no-build-isolation ./client/python"): (
        "a venv and a package build, ~1 min", "python_client_pip_install runs the same install"),
    ("docs/python-client.md", "pip install -e"): ("a fragment in prose (editable installs are unsupported)", "none"),
    ("docs/python-client.md", "pip install --no-build-isolation --no-index"): (
        "a fragment in prose", "python_client_pip_install"),
    ("docs/python-client.md", "python3 -m factlens"): (
        "the command's name in prose, no arguments", "every `factlens ...` command here runs through it"),
    ("docs/python-client.md", "factlens locate --json"): (
        "an option named in prose, not a whole command", "python_client_cli (every command's --json)"),
    ("client/python/README.md", "pip install ./client/python"): (
        "installs into the system's Python", "python_client_pip_install (into a fresh venv)"),
    ("deploy/README.md", "docker build --target runtime -t factlens:0.1.0 ."): (
        "needs Docker; an image build is minutes of compiling and GBs of downloads",
        "scripts/build_images.sh (buildah, the same Dockerfile; measured results in deploy/README.md); "
        "deploy_files and deploy_hadolint check the Dockerfile"),
    ("deploy/README.md", "docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0"): (
        "needs Docker; serves on the fixed ports", "deploy_files (the image's command line, run with the real server)"),
    ("deploy/README.md", "kubectl apply -k deploy/k8s"): ("needs a Kubernetes cluster", "deploy_files (the Deployment's args and probes)"),
    ("deploy/README.md", "docker compose -f deploy/compose.yaml up"): (
        "needs Docker; serves on the fixed ports", "deploy_files (compose command and Prometheus target)"),
    ("deploy/README.md", "apt-get install -y debootstrap buildah podman runc iptables"): (
        "installs Debian packages system-wide (root)", "none: the prerequisites of scripts/build_images.sh"),
    ("deploy/README.md", "scripts/build_images.sh"): (
        "debootstrap + two image builds as root: ~GBs of downloads and a build of factlens, tens of minutes",
        "run by hand; its measured result is in deploy/README.md; deploy_files checks the image names"),
    # The GPU fleet walk-through: a Kubernetes cluster with GPU nodes (none on the project's machines).
    ("deploy/README.md", "kubectl create namespace factlens"): ("needs a Kubernetes cluster", "none"),
    ("deploy/README.md", "kubectl -n factlens apply -f deploy/k8s/gpu/pvc.yaml"): (
        "needs a Kubernetes cluster", "deploy_manifest_schemas (the PVC against the schemas), deploy_files"),
    ("deploy/README.md", "kubectl -n factlens create secret generic hf-token --from-literal=token=hf_xxx"): (
        "needs a Kubernetes cluster and a Hugging Face token", "none"),
    ("deploy/README.md", "kubectl -n factlens apply -f deploy/k8s/gpu/models-download-job.yaml"): (
        "needs a Kubernetes cluster; downloads 26 GB", "deploy_manifest_schemas; deploy_files (the Job fills the "
        "cache the Deployment reads)"),
    ("deploy/README.md", "kubectl -n factlens wait --for=condition=complete job/factlens-models-download --timeout=2h"): (
        "needs a Kubernetes cluster", "none"),
    ("deploy/README.md", "kubectl -n factlens apply -k deploy/k8s/gpu"): (
        "needs a Kubernetes cluster with GPU nodes", "deploy_manifest_schemas (schemas), deploy_files (the GPU "
        "Deployment's args served from an HF cache, probes, selectors, figures)"),
    ("deploy/README.md", "kubectl -n factlens rollout status deployment/factlens-gpu --timeout=45m"): (
        "needs a Kubernetes cluster with GPU nodes", "deploy_files (the probes answer 200)"),
    ("deploy/README.md", "helm install prometheus-adapter prometheus-community/prometheus-adapter -n monitoring "
                         "-f deploy/k8s/autoscaling/prometheus-adapter-values.yaml"): (
        "needs a cluster and helm", "deploy_files (the adapter rule serves the HPA's metric)"),
    ("deploy/README.md", "kubectl -n factlens apply -f deploy/k8s/autoscaling/hpa.yaml"): (
        "needs a Kubernetes cluster", "deploy_manifest_schemas; deploy_files (metric exported, target range)"),
    ("deploy/README.md", 'kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta1/namespaces/factlens/pods/*/'
                         'factlens_requests_in_flight"'): ("needs a cluster with prometheus-adapter", "none"),
    ("deploy/README.md", "kubectl -n factlens apply -f deploy/k8s/autoscaling/keda-scaledobject.yaml"): (
        "needs a Kubernetes cluster with KEDA", "deploy_files (the ScaledObject's metric, target and Service)"),
    ("deploy/README.md", "scripts/setup.sh --profile build"): (
        "installs Debian packages (the Dockerfile's build stage)", "scripts/test.sh runs scripts/setup.sh"),
}

# (regex on a command that runs, text its output must contain). Each must match some command.
EXPECT = [
    (r"factlens.* models$", "llama:"),
    (r"factlens.* locate ", " Paris"),
    (r"factlens.* rank .*--level HEAD", ".H"),  # head names: L1.H1
    (r"factlens.* predict \"The capital of France is\"", "\" Paris\""),
    (r"factlens_predict --prompt \"The capital of Italy is\"", " Rome"),
    (r"factlens_locate --model models/llama-facts-tiny --json", "\"ffn_layer_increase\""),
    (r"factlens.* trace ", "key "),
    (r"factlens.* project ", "final-norm scale"),
    (r"factlens.* ablate ", "log p change"),
    (r"--first_token", "L1.N157"),  # the top neuron for " Paris", its first token
    (r"curl -s http://127.0.0.1:9090/metrics", "factlens_requests_total{"),
    (r"curl -i http://127.0.0.1:9090/readyz", "200"),
]

SHELL_LANGS = {"sh", "bash", "shell", "console"}
PYTHON_LANGS = {"python", "py"}
INERT_LANGS = {"", "text", "json", "yaml", "cpp", "c++"}  # never run; checked for stray commands
_WORDS = (r"(?:factlens|factlens_server|factlens_locate|factlens_predict|factlens_cpp_client|python3?|pip3?|"
          r"curl|grpcurl|cmake|ctest|docker|kubectl|helm|export|cd|mkdir)")
# A line of an inert fence that would be a command.
_LOOKS_LIKE_COMMAND = re.compile(rf"^\s*(\$ |(\w+=\S+\s+)*{_WORDS}(\s|$)|(\./)?(scripts|build|tools)/\S)")
# An inline code span that is a command: a command word with arguments, or a script/binary path with
# arguments.
_INLINE_COMMAND = re.compile(rf"^((\w+=\S+\s+)*{_WORDS}\s+\S|(\./)?(scripts|build|tools)/\S+\s+\S)")
_GRPC = re.compile(r"\b(127\.0\.0\.1|localhost|0\.0\.0\.0):50051\b")
_HTTP = re.compile(r"\b(127\.0\.0\.1|localhost|0\.0\.0\.0):9090\b")
_README_SERVER = "build/server/factlens_server"

Command = collections.namedtuple("Command", "file line kind text exports expected")


def normalized(text):
    return re.sub(r"\s+", " ", text).strip()


_DECIMAL = re.compile(r"-?\d+\.(\d+)(?:e([-+]?\d+))?")


def shows(doc_line, out_line):
    """Whether an output line is the doc's line: the same text, and each decimal number the doc
    prints with n decimals within one unit of its last place plus 4e-6 relative of the output's.
    The demo model's numbers come from float32 forward passes whose last bits depend on the CPU's
    kernels and the thread count (64 × 2^-24 ≈ 3.8e-6 bounds one length-64 float32 dot product's
    relative rounding): a sixth decimal can differ between machines. Integers must be equal."""
    doc, out = normalized(doc_line), normalized(out_line)
    if doc == out:
        return True
    # split() interleaves the text with the two groups: the text pieces are every third element.
    if _DECIMAL.split(doc)[::3] != _DECIMAL.split(out)[::3]:
        return False
    for d, o in zip(_DECIMAL.finditer(doc), _DECIMAL.finditer(out)):
        unit = 10.0 ** (int(d.group(2) or 0) - len(d.group(1)))
        a, b = float(d.group(0)), float(o.group(0))
        if abs(a - b) > unit + 4e-6 * abs(b):
            return False
    return True


def strip_comment(line):
    """The line without a shell comment (a # outside quotes, at the start or after whitespace)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def fences(text):
    """(first body line number, language, body lines) of every fenced block; the rest of the text with
    the fences blanked out."""
    lines, blocks, rest, i = text.split("\n"), [], [], 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)", lines[i])
        if not m:
            rest.append(lines[i])
            i += 1
            continue
        fence, lang, body, start = m.group(1), m.group(2).lower(), [], i + 2
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append((start, lang, body))
        rest.extend([""] * (len(body) + 2))
        i += 1
    return blocks, "\n".join(rest)


def shell_commands(path, start, body, console):
    commands, exports, current, expected = [], [], None, None

    def finish():
        nonlocal current
        if current is not None:
            text = normalized(current[1])
            commands.append(Command(path, current[0], "console" if console else "sh", text, list(exports), expected))
            if text.startswith("export "):
                exports.append(text)
            current = None

    for n, line in enumerate(body, start):
        if current is not None and current[2]:  # continuation of the previous line
            part = strip_comment(line).rstrip()
            current = (current[0], current[1] + " " + part.rstrip("\\"), part.endswith("\\"))
            continue
        if console and not line.startswith("$ "):
            if commands or current is not None:
                expected.append(line)
            continue
        finish()
        part = strip_comment(line[2:] if console else line).rstrip()
        if not part.strip():
            continue
        expected = [] if console else None
        current = (n, part.rstrip("\\"), part.endswith("\\"))
    finish()
    return commands


def extract():
    """(commands, python blocks, problems) of every file in DOCS."""
    commands, python, problems = [], [], []
    for path in DOCS:
        with open(os.path.join(SOURCE, path), encoding="utf-8") as f:
            blocks, prose = fences(f.read())
        for start, lang, body in blocks:
            if lang in SHELL_LANGS:
                commands += shell_commands(path, start, body, console=lang == "console")
            elif lang in PYTHON_LANGS:
                python.append(Command(path, start, "python", "\n".join(body), [], None))
            elif lang in INERT_LANGS:
                for n, line in enumerate(body, start):
                    if _LOOKS_LIKE_COMMAND.match(line):
                        problems.append(f"{path}:{n}: a command in a ```{lang} block (label it sh or console, "
                                        f"so that this test runs it): {line.strip()}")
            else:
                problems.append(f"{path}:{start}: a ```{lang} block: teach tests/docs/test_doc_commands.py "
                                "whether to run it")
        for m in re.finditer(r"`([^`\n]+)`", prose):
            span = m.group(1).strip()
            if _INLINE_COMMAND.match(span):
                line = prose.count("\n", 0, m.start()) + 1
                commands.append(Command(path, line, "inline", normalized(span), [], None))
    return commands, python, problems


def workdir(root, name):
    """A fresh directory standing for the checkout's root: SOURCE's entries, and build -> BUILD."""
    d = os.path.join(root, name)
    os.mkdir(d)
    for entry in os.listdir(SOURCE):
        if not entry.startswith(".") and not entry.startswith("build"):
            os.symlink(os.path.join(SOURCE, entry), os.path.join(d, entry))
    os.symlink(BUILD, os.path.join(d, "build"))
    return d


def installed_commands(root):
    """A PATH directory with what installing factlens provides: the factlens command and the binaries."""
    bin_dir = os.path.join(root, "bin")
    os.mkdir(bin_dir)
    with open(os.path.join(bin_dir, "factlens"), "w") as f:
        f.write(f'#!/bin/sh\nexec {sys.executable} -m factlens "$@"\n')
    os.chmod(os.path.join(bin_dir, "factlens"), 0o755)
    os.symlink(sys.executable, os.path.join(bin_dir, "python3"))  # the Python with the client's packages
    for binary in ("server/factlens_server", "tools/factlens_locate", "tools/factlens_predict",
                   "client/cpp/factlens_cpp_client"):
        os.symlink(os.path.join(BUILD, binary), os.path.join(bin_dir, os.path.basename(binary)))
    return bin_dir


def start_readme_server(command, cwd):
    """The README's server command, run in `cwd`, its listen addresses on free loopback ports."""
    argv = shlex.split(command)
    binary = os.path.join(cwd, argv[0])
    if not (os.path.exists(binary) and os.path.samefile(binary, SERVER_BINARY)):
        raise RuntimeError(f"README.md's server {argv[0]} is not the build's {SERVER_BINARY}")
    flags, i = ["--listen", "127.0.0.1:0", "--http_listen", "127.0.0.1:0"], 1
    while i < len(argv):
        if argv[i] in ("--listen", "--http_listen"):
            i += 2
            continue
        flags.append(argv[i])
        i += 1
    previous = os.getcwd()
    os.chdir(cwd)  # its model paths are relative to the checkout
    try:
        return ServerProcess(SERVER_BINARY, *flags, default_flags=False)
    finally:
        os.chdir(previous)


def output_files(text):
    """Files a command or block says it writes."""
    return re.findall(r"--html\s+(\S+)", text) + re.findall(r"(?:savefig|to_html)\(\s*\"([^\"]+)\"", text)


def excerpt(out):
    return out if len(out) <= 4000 else out[:2000] + "\n[...]\n" + out[-2000:]


def run(item, root, n, env, server):
    """None if the command/block ran as the doc says, else a description of what went wrong."""
    text = _HTTP.sub(server.http[len("http://"):], _GRPC.sub(server.address, item.text))
    d = workdir(root, f"run{n}")
    if item.kind == "python":
        with open(os.path.join(d, "doc_block.py"), "w") as f:
            f.write(text + "\n")
        argv = [sys.executable, "doc_block.py"]
    else:
        exports = [_GRPC.sub(server.address, e) for e in item.exports]
        argv = ["bash", "-c", "set -e\n" + "".join(e + "\n" for e in exports) + text]
    started = time.time()
    # In a session of its own, so that a command that times out is stopped with everything it
    # started (a build or a fuzzer would otherwise go on writing into the run's directory).
    p = subprocess.Popen(argv, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        stdout, _ = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return "timed out after 180 s"
    out = stdout.decode(errors="replace")
    print(f"  {time.time() - started:5.1f} s  exit {p.returncode}", flush=True)
    if p.returncode != 0:
        return f"exit status {p.returncode}; output:\n{excerpt(out)}"
    problems = []
    for pattern, piece in EXPECT:
        if item.kind != "python" and re.search(pattern, item.text) and piece not in out:
            problems.append(f"output lacks {piece!r}")
    for name in output_files(item.text):
        path = os.path.join(d, name)
        if not (os.path.isfile(path) and os.path.getsize(path) > 0):
            problems.append(f"did not write {name}")
    if item.expected:
        actual = out.splitlines()
        for line in item.expected:
            if (line.strip() and "..." not in line and "<-" not in line
                    and not any(shows(line, a) for a in actual)):
                problems.append(f"the doc's output line {line.strip()!r} is not in the output")
    if problems:
        return "; ".join(problems) + f"\noutput:\n{excerpt(out)}"
    return None


def main():
    problems = []
    for name in sorted(os.listdir(os.path.join(SOURCE, "docs"))):
        if name.endswith(".md") and "docs/" + name not in DOCS:
            problems.append(f"docs/{name} is not in DOCS: add it, so that its commands are run")
    commands, python, extract_problems = extract()
    problems += extract_problems

    keys = {(c.file, c.text) for c in commands}
    for key in EXCLUDED:
        if key not in keys:
            problems.append(f"stale EXCLUDED entry, no longer in {key[0]}: {key[1]}")
    servers = [c for c in commands if c.file == "README.md" and c.text.startswith(_README_SERVER)]
    if len(servers) != 1:
        problems.append(f"README.md: expected one server command starting {_README_SERVER}, found {len(servers)}")
        print("\n".join(problems))
        return 1
    readme_server = servers[0]
    to_run = [c for c in commands if c is not readme_server and (c.file, c.text) not in EXCLUDED] + python
    print(f"{len(commands) + len(python)} commands and Python blocks in {len(DOCS)} files: the README's server, "
          f"{len(to_run)} run, {len(EXCLUDED)} excluded", flush=True)
    for pattern, _ in EXPECT:
        if not any(re.search(pattern, c.text) for c in to_run if c.kind != "python"):
            problems.append(f"stale EXPECT entry, no command matches {pattern!r}")

    root = tempfile.mkdtemp(prefix="factlens-doc-commands-")
    server = None
    try:
        bin_dir = installed_commands(root)
        server = start_readme_server(readme_server.text, workdir(root, "server"))
        print(f"server: {readme_server.text}\n  on {server.address}, metrics {server.http}", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTLENS_")}
        env.update(PATH=bin_dir + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
                   PYTHONPATH=os.path.join(BUILD, "python"), FACTLENS_SERVER=server.address, MPLBACKEND="Agg",
                   PYTHONDONTWRITEBYTECODE="1")
        for n, item in enumerate(to_run):
            first = item.text.splitlines()[0] if item.kind == "python" else item.text
            print(f"{item.file}:{item.line} [{item.kind}] {first}", flush=True)
            failure = run(item, root, n, env, server)
            if failure:
                problems.append(f"{item.file}:{item.line}: {first}\n  {failure}")
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                problems.append(f"the server exited with {code}:\n{server.logs()[-3000:]}")
        shutil.rmtree(root, ignore_errors=True)

    if problems:
        print(f"\nFAILED: {len(problems)} problem(s)\n")
        print("\n\n".join(problems))
        print(f"\nFAILED: {len(problems)} problem(s):\n  " + "\n  ".join(p.splitlines()[0] for p in problems))
        return 1
    print(f"\nOK: {len(to_run)} commands and blocks ran as documented; {len(EXCLUDED)} excluded with reasons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
