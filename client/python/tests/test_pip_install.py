"""`pip install --no-build-isolation ./client/python` into a fresh venv (Debian's packages, no network):
the stubs are compiled from proto/, the dependency floors are what they need, and the installed
`factlens` console script and `python -m factlens` talk to the real server. Without proto/ next to
client/python the build stops with a message that says so.

Usage: test_pip_install.py FACTLENS_SERVER SOURCE_DIR (the repository root)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from support import PARIS, PROMPT, Server

SERVER, SOURCE = sys.argv[1], sys.argv[2]
# Untracked build output and stubs that a developer may have in the source tree must not leak in.
IGNORE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "v1", "grpc_health", "grpc_reflection")


def run(*argv, check=True):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    # cwd "/": `python -c` puts the working directory first on sys.path, which must not hold a factlens.
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd="/")
    if check and out.returncode != 0:
        raise AssertionError(f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


class PipInstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = cls.enterClassContext(tempfile.TemporaryDirectory(prefix="factlens-pip-"))  # removed however it ends
        cls.checkout = os.path.join(cls.dir, "checkout")  # a checkout's layout: client/python next to proto/
        shutil.copytree(os.path.join(SOURCE, "client", "python"), os.path.join(cls.checkout, "client", "python"),
                        ignore=IGNORE)
        shutil.copytree(os.path.join(SOURCE, "proto"), os.path.join(cls.checkout, "proto"))
        cls.venv = os.path.join(cls.dir, "venv")
        run("/usr/bin/python3", "-m", "venv", "--system-site-packages", cls.venv)
        cls.python = os.path.join(cls.venv, "bin", "python")
        cls.install = run(os.path.join(cls.venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index",
                          os.path.join(cls.checkout, "client", "python"))

    def test_installed_into_the_venv_with_stubs_of_the_current_proto(self):
        probe = ("import json, factlens, factlens.v1.factlens_pb2 as pb; print(json.dumps([factlens.__file__, "
                 "list(pb.DESCRIPTOR.services_by_name['FactLens'].methods_by_name)]))")
        path, methods = json.loads(run(self.python, "-c", probe).stdout)
        self.assertTrue(path.startswith(os.path.join(self.venv, "lib")), path)
        with open(os.path.join(SOURCE, "proto", "factlens", "v1", "factlens.proto")) as f:
            self.assertEqual(sorted(methods), sorted(re.findall(r"^\s*rpc (\w+)\(", f.read(), re.M)))

    def test_dependency_floors(self):
        metadata = run(self.python, "-c", "from importlib.metadata import requires; print('\\n'.join(requires('factlens')))")
        requires = {re.split(r"[ (<>=]", r)[0]: r for r in metadata.stdout.split("\n") if r}
        # Debian's protoc 3.21 writes stubs that need protobuf's builder module (protobuf 3.20+), nothing newer.
        self.assertIn("3.21.", run("protoc", "--version").stdout)
        self.assertRegex(requires["protobuf"], r"protobuf ?\(?>=3\.20\)?$")
        self.assertRegex(requires["grpcio"], r"grpcio ?\(?>=1\.51\)?$")
        self.assertEqual(sorted(requires), ["grpcio", "matplotlib", "numpy", "pandas", "protobuf", "tqdm"])

    def test_console_script_and_module_against_the_server(self):
        server = Server(SERVER)
        try:
            for command in ([os.path.join(self.venv, "bin", "factlens")], [self.python, "-m", "factlens"]):
                out = run(*command, "--server", server.address, "--json", "predict", PROMPT, "--top_k", "1",
                          check=False)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(int(json.loads(out.stdout)["predictions"][0]["id"]), PARIS)
        finally:
            self.assertEqual(server.stop(), 0, server.logs())

    def test_build_without_the_proto_says_why(self):
        lone = os.path.join(self.dir, "lone", "python")
        shutil.copytree(os.path.join(SOURCE, "client", "python"), lone, ignore=IGNORE)
        out = run(os.path.join(self.venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index", lone,
                  check=False)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("factlens/v1/factlens.proto not found", out.stdout + out.stderr)


class FloorsOfNewerStubsTest(unittest.TestCase):
    """requirements() on the headers that newer compilers write (copied from stubs of protobuf 5.29 /
    grpcio-tools 1.66 and protobuf 4.25), which Debian's protoc cannot produce here."""

    def floors(self, pb2, grpc_stub):
        sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
        sys.dont_write_bytecode = True  # no __pycache__ in the source tree
        try:
            from setup import requirements
        finally:
            sys.path.pop(0)
        out = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-stubs-"))
        os.makedirs(os.path.join(out, "factlens", "v1"))
        for name, text in [("factlens_pb2.py", pb2), ("factlens_pb2_grpc.py", grpc_stub)]:
            with open(os.path.join(out, "factlens", "v1", name), "w") as f:
                f.write(text)
        return requirements(out, "test")[:2]

    def test_runtime_checked_stubs(self):
        one_line = ("from google.protobuf.internal import builder as _builder\n_runtime_version.ValidateProtobufRuntimeVersion("
                    "_runtime_version.Domain.PUBLIC, 5, 29, 0, '', 'factlens/v1/factlens.proto')\n")
        multi_line = ("_runtime_version.ValidateProtobufRuntimeVersion(\n    _runtime_version.Domain.PUBLIC,\n    6,\n"
                      "    31,\n    1,\n    '',\n    'factlens/v1/factlens.proto'\n)\n")
        grpc_stub = "import grpc\nGRPC_GENERATED_VERSION = '1.66.0'\nGRPC_VERSION = grpc.__version__\n"
        self.assertEqual(self.floors(one_line, grpc_stub), ["grpcio>=1.66.0", "protobuf>=5.29.0"])
        self.assertEqual(self.floors(multi_line, "import grpc\n"), ["grpcio>=1.51", "protobuf>=6.31.1"])
        versioned = "# Protobuf Python Version: 4.25.1\nfrom google.protobuf.internal import builder as _builder\n"
        self.assertEqual(self.floors(versioned, ""), ["grpcio>=1.51", "protobuf>=4.25.1"])


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
