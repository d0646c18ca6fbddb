"""Builds the factlens client package, generating the gRPC stubs of ../../proto/factlens/v1/factlens.proto.

The stubs are never copied by hand: they are compiled on every build, by grpcio-tools (>= 1.51, what
`pip install` gets from PyPI) when importable, else by protoc + grpc_python_plugin from PATH. The
dependency floors of grpcio and protobuf are read from the generated code, so stubs from a newer
compiler raise them exactly as far as needed and stubs from Debian 12's protoc 3.21 ask for
protobuf>=3.20 only.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = "factlens/v1/factlens.proto"
TESTED = ["numpy>=1.24", "pandas>=1.5", "matplotlib>=3.6", "tqdm>=4.64"]  # Debian 12's versions
OLDEST_TESTED_GRPCIO = "1.51"


def _grpc_tools_version():
    """The installed grpcio-tools version as a tuple, or None."""
    from importlib import metadata

    try:
        return tuple(int(x) for x in re.findall(r"\d+", metadata.version("grpcio-tools"))[:2])
    except metadata.PackageNotFoundError:
        return None


def generate_stubs(out):
    """Compiles factlens.proto into out/factlens/v1; returns which compiler did it."""
    if not os.path.isfile(os.path.join(PROTO_ROOT, PROTO)):
        sys.exit(f"factlens: {PROTO} not found in {PROTO_ROOT}. Build the client from a factlens checkout "
                 "(client/python next to proto/): pip install ./client/python")
    args = [f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    tools = _grpc_tools_version()
    if tools and tools >= (1, 51):  # older ones bundle a protoc < 3.20, whose stubs need an old protobuf
        from grpc_tools import protoc

        if protoc.main(["grpc_tools.protoc"] + args) != 0:
            sys.exit("factlens: grpc_tools.protoc failed on " + PROTO)
        compiler = "grpcio-tools %d.%d" % tools
    else:
        protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
        if not (protoc and plugin):
            sys.exit("factlens: generating the gRPC stubs needs grpcio-tools>=1.51 (pip) or protoc and "
                     "grpc_python_plugin on PATH (Debian: apt install protobuf-compiler protobuf-compiler-grpc)")
        subprocess.run([protoc, f"--plugin=protoc-gen-grpc_python={plugin}"] + args, check=True)
        compiler = subprocess.run([protoc, "--version"], capture_output=True, text=True).stdout.strip()
    open(os.path.join(out, "factlens", "v1", "__init__.py"), "w").close()
    return compiler


def requirements(out, compiler):
    """grpcio and protobuf floors that the generated stubs need."""
    with open(os.path.join(out, "factlens", "v1", "factlens_pb2.py")) as f:
        pb2 = f.read()
    with open(os.path.join(out, "factlens", "v1", "factlens_pb2_grpc.py")) as f:
        grpc_stub = f.read()
    runtime = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)
    comment = re.search(r"# Protobuf Python Version: (\d+\.\d+\.\d+)", pb2)
    if runtime:  # protobuf >= 5.26 stubs check the runtime themselves
        protobuf = ".".join(runtime.groups())
    elif comment:
        protobuf = comment[1]
    elif "import builder as _builder" in pb2:  # the builder module arrived in protobuf 3.20
        protobuf = "3.20"
    else:
        sys.exit(f"factlens: {compiler} is older than protoc 3.20; its stubs do not load with current protobuf")
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
    return [f"grpcio>={grpc_version[1] if grpc_version else OLDEST_TESTED_GRPCIO}", f"protobuf>={protobuf}"] + TESTED


def main():
    stubs = tempfile.TemporaryDirectory(prefix="factlens-stubs-")
    os.makedirs(os.path.join(stubs.name, "factlens", "v1"))
    compiler = generate_stubs(stubs.name)

    class BuildPyWithStubs(build_py):
        """build_py that adds the generated factlens.v1 package."""

        def run(self):
            super().run()
            self.copy_tree(os.path.join(stubs.name, "factlens", "v1"), os.path.join(self.build_lib, "factlens", "v1"))

    setup(install_requires=requirements(stubs.name, compiler), cmdclass={"build_py": BuildPyWithStubs})


if __name__ == "__main__":  # as setuptools runs it; tests import requirements()
    main()
