"""The installed layout (cmake --install) runs on its own, as the Docker image's runtime stage does.

Usage: test_install.py CMAKE BUILD_DIR SOURCE_DIR CLIENT_PYTHON_DIR

Installs BUILD_DIR into a temporary prefix (removed in every outcome the test process sees: pass,
failure, exception, SIGTERM/SIGINT/SIGHUP), then, from a working directory outside the source and
build trees, runs the installed factlens_server with only --listen/--http_listen (no --model): it
must serve the demo model from PREFIX/share/factlens/models (/readyz 200, ListModels over gRPC); the
installed factlens_locate and factlens_predict must run without --model; binaries without the share/
tree beside them must fail naming the path tried and --model. The Dockerfile's runtime stage must
copy that same install tree (DESTDIR of the build stage's cmake --install) and start its bin/
factlens_server with no --model, and the model paths the deployment files name must exist in it.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import yaml

CMAKE, BUILD, SOURCE, CLIENT_DIR = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import grpc  # noqa: E402

from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402
from server_process import ServerProcess  # noqa: E402

BINARIES = ("factlens_server", "factlens_locate", "factlens_predict")
DEMO_MODELS = ("gpt2-facts-tiny", "llama-facts-tiny")
DEFAULT_MODEL = "gpt2-facts-tiny"
LISTEN_FLAGS = ("--listen=127.0.0.1:0", "--http_listen=127.0.0.1:0")


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # unittest lets it through; main's finally removes the prefix


ROOT = None  # the temporary directory of the prefix, created and removed by main


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = ROOT
        cls.prefix = os.path.join(cls.root, "prefix")
        env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}  # exactly into the prefix
        installed = subprocess.run([CMAKE, "--install", BUILD, "--prefix", cls.prefix],
                                   capture_output=True, text=True, env=env)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        # Every binary runs from here, a directory with nothing in it (no models/, no build tree).
        cls.cwd = os.path.join(cls.root, "elsewhere")
        os.mkdir(cls.cwd)
        os.chdir(cls.cwd)
        cls.models = os.path.join(cls.prefix, "share", "factlens", "models")

    def bin(self, name):
        return os.path.join(self.prefix, "bin", name)

    def test_the_layout_holds_the_binaries_and_real_copies_of_the_demo_models(self):
        for name in BINARIES:
            self.assertTrue(os.access(self.bin(name), os.X_OK), name)
        for model in DEMO_MODELS:
            for f in ("config.json", "model.safetensors", "tokenizer.json"):
                path = os.path.join(self.models, model, f)
                self.assertTrue(os.path.isfile(path) and not os.path.islink(path), path)
        # cmake --install keeps the RUNPATH to libtorch (the venv's torch/lib, the same path in the image).
        dynamic = subprocess.run(["readelf", "-d", self.bin("factlens_server")], capture_output=True,
                                 text=True, check=True).stdout
        self.assertRegex(dynamic, r"R(UN)?PATH.*/site-packages/torch/lib")
        # No source path compiled in for the default model.
        with open(self.bin("factlens_server"), "rb") as f:
            self.assertNotIn(os.path.join(SOURCE, "models").encode(), f.read())

    def test_the_installed_server_serves_the_demo_model_without_model(self):
        server = ServerProcess(self.bin("factlens_server"), *LISTEN_FLAGS, default_flags=False)
        try:
            with urllib.request.urlopen(server.http + "/readyz", timeout=5) as r:
                self.assertEqual(r.status, 200)
            with grpc.insecure_channel(server.address) as channel:
                models = pb_grpc.FactLensStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models
            self.assertEqual([(m.name, m.family, m.layers) for m in models], [(DEFAULT_MODEL, "gpt2", 4)])
            events = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
            (chosen,) = [e for e in events if e.get("event") == "default_model"]
            self.assertEqual(chosen["directory"], os.path.join(self.models, DEFAULT_MODEL))
        finally:
            self.assertEqual(server.stop(), 0, server.logs())

    def test_help_names_the_installed_default_also_through_a_symlink(self):
        link = os.path.join(self.root, "factlens_server")
        os.symlink(self.bin("factlens_server"), link)
        want = os.path.join(self.models, DEFAULT_MODEL)
        for binary in (self.bin("factlens_server"), link):
            out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn(f"Without --model it serves {DEFAULT_MODEL}={want}", out.stdout)
        out = subprocess.run([self.bin("factlens_locate"), "--help"], capture_output=True, text=True, timeout=60)
        self.assertIn(f'default: "{want}"', out.stdout)

    def test_the_installed_tools_run_without_model(self):
        locate = subprocess.run([self.bin("factlens_locate"), "--json", "--threads=1"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(locate.returncode, 0, locate.stderr)
        report = json.loads(locate.stdout)
        self.assertGreater(report["outcome"]["prob"], 0.5)  # " Paris" after the default prompt
        predict = subprocess.run([self.bin("factlens_predict"), "--top_k=1", "--threads=1"],
                                 capture_output=True, text=True, timeout=120)
        self.assertEqual(predict.returncode, 0, predict.stderr)
        self.assertIn("model   " + os.path.join(self.models, DEFAULT_MODEL) + " ", predict.stdout)
        self.assertIn('" Paris"', predict.stdout)

    def test_binaries_without_the_share_tree_name_the_path_tried_and_model(self):
        bare = os.path.join(self.root, "bare")
        os.makedirs(os.path.join(bare, "bin"))
        tried = os.path.join(bare, "share", "factlens", "models", DEFAULT_MODEL)
        for name, flags, code in (("factlens_server", LISTEN_FLAGS, 2), ("factlens_locate", (), 1),
                                  ("factlens_predict", (), 1)):
            copy = os.path.join(bare, "bin", name)
            try:
                os.link(self.bin(name), copy)  # /proc/self/exe is the path it was started by
            except OSError:
                shutil.copy2(self.bin(name), copy)
            out = subprocess.run([copy, *flags], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, code, name + ": " + out.stderr)
            self.assertIn(tried, out.stderr, name)
            self.assertIn("pass --model", out.stderr, name)

    def test_the_dockerfile_runtime_stage_is_this_install_tree(self):
        with open(os.path.join(SOURCE, "Dockerfile")) as f:
            text = re.sub(r"\\\n", " ", f.read())  # continuation lines joined
        stages = {}
        for block in re.split(r"^(?=FROM )", text, flags=re.M)[1:]:
            stages[re.match(r"FROM \S+ AS (\S+)", block).group(1)] = block
        build, runtime = stages["build"], stages["runtime"]
        install = re.search(r"DESTDIR=(\S+) cmake --install (\S+) --prefix (\S+)", build)
        self.assertIsNotNone(install, "the build stage must stage the install tree with DESTDIR=... cmake --install")
        destdir, build_dir, prefix = (s.rstrip("/") for s in install.groups())
        built = re.search(r"FACTLENS_BUILD_DIR=(\S+) \S*scripts/build\.sh ([^&\n]*)", build)
        self.assertEqual(built.group(1).rstrip("/"), build_dir)
        self.assertLessEqual(set(BINARIES), set(built.group(2).split()), "cmake --install needs every target built")
        # The runtime stage copies the staged tree onto /, so PREFIX in the image is this install's prefix.
        self.assertRegex(runtime, rf"(?m)^COPY --from=build {re.escape(destdir)}/? /$")
        entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (\[.*\])$", runtime, re.M).group(1))
        self.assertEqual(entrypoint[0], prefix + "/bin/factlens_server")
        cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
        image_args = entrypoint[1:] + (yaml.safe_load(cmd.group(1)) if cmd else [])
        self.assertFalse([a for a in image_args if re.match(r"--?model\b", a)],
                         "the image must rely on the installed default model, not a --model argument")
        # Both stages use one venv path, the one the installed RUNPATH names.
        venvs = {name: m.group(1) for name, stage in stages.items() if (m := re.search(r"FACTLENS_VENV=(\S+)", stage))}
        self.assertEqual(venvs["build"], venvs["runtime"])
        # Every other stage (the GPU image) builds on the runtime stage, so it has the same tree.
        for name, stage in stages.items():
            if name not in ("build", "runtime"):
                self.assertRegex(stage, rf"^FROM runtime AS {name}\b", name)
        # The models the deployment files name are in this install tree, under the image's prefix.
        image_models = prefix + "/share/factlens/models/"
        named = []
        for path in ("deploy/k8s/deployment.yaml", "deploy/compose.yaml"):
            with open(os.path.join(SOURCE, path)) as f:
                named += re.findall(r"--model=[^=\s]+=(/\S+?)(?:,|\s|$)", f.read())
        self.assertTrue(named)
        for path in named:
            self.assertTrue(path.startswith(image_models), path)
            self.assertTrue(os.path.isfile(os.path.join(self.models, path[len(image_models):], "config.json")), path)


if __name__ == "__main__":
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _interrupt)
    ROOT = tempfile.mkdtemp(prefix="factlens-install-")
    try:
        result = unittest.main(argv=[sys.argv[0]], verbosity=2, exit=False).result
    finally:
        os.chdir("/")
        shutil.rmtree(ROOT, ignore_errors=True)
    sys.exit(0 if result.wasSuccessful() else 1)
