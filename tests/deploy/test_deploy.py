"""The deployment files agree with the server they deploy.

Usage: test_deploy.py FACTLENS_SERVER SOURCE_DIR

No cluster and no Docker daemon are needed (neither exists on the project's machines): the files are
parsed, and what they say is checked against the real binary. The server is started with the
Kubernetes Deployment's own arguments (the model path and listen ports mapped to this machine), and
the probe paths it names must answer 200; every flag in the Deployment, the Dockerfile and the compose
file must be one the server defines; the runtime profile of scripts/setup.sh, which the Dockerfile's
runtime stage runs, must provide every shared library the server loads (Debian's runtime packages,
or the torch wheel and the CUDA library wheels); the Prometheus configuration must pass promtool.
"""
import os
import re
import subprocess
import sys
import unittest
import urllib.request

import yaml

SERVER, SOURCE = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from server_process import ServerProcess  # noqa: E402
DEPLOY = os.path.join(SOURCE, "deploy")
IMAGE_MODELS = "/usr/local/share/factlens/models"  # the image's install tree (tests/deploy/test_install.py)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def flag_values(args):
    """{name: value} of --name=value arguments."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--([a-z_]+)=(.*)", a)
        assert m, f"argument {a!r} is not of the form --name=value"
        out[m.group(1)] = m.group(2)
    return out


def port_of(address):
    return int(address.rsplit(":", 1)[1])


class DeployTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        help_text = subprocess.run([SERVER, "--helpfull"], capture_output=True, text=True).stdout
        cls.server_flags = set(re.findall(r"^\s+--([a-z_]+)\b", help_text, re.M))
        assert "drain_seconds" in cls.server_flags, help_text[:500]
        resources = []
        kustomization = load_all(os.path.join(DEPLOY, "k8s", "kustomization.yaml"))[0]
        for name in kustomization["resources"]:
            resources += load_all(os.path.join(DEPLOY, "k8s", name))
        cls.kinds = {r["kind"]: r for r in resources}
        cls.labels = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
        cls.container = cls.kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        cls.args = flag_values(cls.container["args"])

    def assertKnownFlags(self, args, where):
        unknown = set(flag_values(args)) - self.server_flags
        self.assertFalse(unknown, f"{where} passes flags factlens_server does not define: {unknown}")

    def test_deployment_flags_exist(self):
        self.assertKnownFlags(self.container["args"], "deploy/k8s/deployment.yaml")

    def test_ports_and_probes_match_the_flags(self):
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(ports["grpc"], port_of(self.args["listen"]))
        self.assertEqual(ports["metrics"], port_of(self.args["http_listen"]))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(self.container[probe]["httpGet"]["port"], "metrics", probe)
        self.assertEqual(self.container["readinessProbe"]["httpGet"]["path"], "/readyz")
        pod = self.kinds["Deployment"]["spec"]["template"]["spec"]
        self.assertGreater(pod["terminationGracePeriodSeconds"], int(self.args["drain_seconds"]),
                           "the kubelet would kill the server while it drains")

    def test_service_and_servicemonitor_reach_the_named_ports(self):
        container_ports = {p["name"] for p in self.container["ports"]}
        service_ports = {p["name"] for p in self.kinds["Service"]["spec"]["ports"]}
        for p in self.kinds["Service"]["spec"]["ports"]:
            self.assertIn(p["targetPort"], container_ports)
        monitor = self.kinds["ServiceMonitor"]["spec"]
        self.assertIn(monitor["endpoints"][0]["port"], service_ports)
        self.assertEqual(monitor["endpoints"][0]["path"], "/metrics")
        self.assertLessEqual(monitor["selector"]["matchLabels"].items(), self.labels.items())

    def test_the_server_runs_with_the_deployments_arguments_and_answers_its_probes(self):
        args = [a.replace(IMAGE_MODELS, os.path.join(SOURCE, "models")) for a in self.container["args"]]
        args = [re.sub(r"^--(listen|http_listen)=0\.0\.0\.0:\d+$", r"--\1=127.0.0.1:0", a) for a in args]
        server = ServerProcess(SERVER, *args, default_flags=False)  # exactly the Deployment's flags
        try:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                path = self.container[probe]["httpGet"]["path"]
                with urllib.request.urlopen(server.http + path, timeout=5) as r:
                    self.assertEqual(r.status, 200, probe)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_dockerfile_flags_ports_and_model(self):
        with open(os.path.join(SOURCE, "Dockerfile")) as f:
            text = f.read()
        entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
        cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
        cmd = yaml.safe_load(cmd.group(1)) if cmd else []
        self.assertKnownFlags(entrypoint[1:] + cmd, "Dockerfile")
        flags = flag_values(entrypoint[1:] + cmd)
        exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}
        self.assertEqual(exposed, {port_of(flags["listen"]), port_of(flags["http_listen"])})
        # No --model in ENTRYPOINT or CMD: the image serves the binary's own default, the installed
        # demo model (tests/deploy/test_install.py), also when `docker run` arguments replace CMD.
        self.assertNotIn("model", flags)

    # The CUDA toolkit's libraries the server loads here, and the PyPI wheel that carries each in an
    # image without the toolkit (torch 2.11.0's pins).
    CUDA_LIBRARY_WHEELS = {
        "libcudart": "nvidia-cuda-runtime", "libcublas": "nvidia-cublas", "libcublasLt": "nvidia-cublas",
        "libcudnn": "nvidia-cudnn-cu13", "libcufft": "nvidia-cufft", "libcurand": "nvidia-curand",
        "libcusolver": "nvidia-cusolver", "libcusparse": "nvidia-cusparse",
        "libnvJitLink": "nvidia-nvjitlink", "libnvrtc": "nvidia-cuda-nvrtc", "libcupti": "nvidia-cuda-cupti",
        "libnvToolsExt": "nvidia-nvtx", "libnccl": "nvidia-nccl-cu13",
    }

    def split_torch_libraries(self, libraries):
        """(Debian-side libraries, {CUDA toolkit library: wheel}); checks the venv's libraries."""
        with open(os.path.join(SOURCE, "scripts", "setup.sh")) as f:
            setup = f.read()
        wheels = set(re.findall(r"\b(nvidia-[a-z0-9-]+)==", setup))
        self.assertIn('"torch==$TORCH_VERSION"', setup)
        debian, cuda = [], {}
        for library in libraries:
            real = os.path.realpath(library)
            if "/site-packages/torch/lib/" in real:
                continue  # the torch wheel itself
            if "/site-packages/nvidia/" in real:
                self.assertIn(re.search(r"/site-packages/nvidia/([^/]+)/", real).group(1),
                              {"cu13", "cusparselt", "nvshmem"}, real)
                continue
            if real.startswith("/usr/local/cuda"):
                stem = os.path.basename(library).split(".so")[0]
                cuda[library] = self.CUDA_LIBRARY_WHEELS.get(stem)
                self.assertIn(cuda[library], wheels, f"{library}: no runtime wheel provides it")
                continue
            debian.append(library)
        return debian, cuda

    def test_runtime_packages_provide_every_shared_library(self):
        with open(os.path.join(SOURCE, "scripts", "setup.sh")) as f:
            runtime = re.search(r"RUNTIME_PACKAGES=\(([^)]*)\)", f.read()).group(1).split()
        closure = set(runtime)
        depends = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                                  "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *runtime],
                                 capture_output=True, text=True, check=True).stdout
        closure |= set(re.findall(r"^\s+(?:Pre)?Depends: <?([^\s>:]+)", depends, re.M))
        closure |= set(re.findall(r"^(\S+)$", depends, re.M))
        required = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Priority}\\n"],
                                  capture_output=True, text=True, check=True).stdout
        closure |= {line.split()[0] for line in required.splitlines() if line.endswith(" required")}
        libraries = re.findall(r"=> (/\S+)", subprocess.run(["ldd", SERVER], capture_output=True, text=True).stdout)
        self.assertGreater(len(libraries), 20)
        libraries, cuda = self.split_torch_libraries(libraries)
        self.assertIn("nvidia-cublas", cuda.values())  # the CUDA libtorch is what the server loads
        # dpkg -S in one call: each library under its ldd path, its real path, and both under /usr
        # (Debian 12 has merged /usr; dpkg records whichever path the package shipped).
        candidates = {}
        for library in libraries:
            real = os.path.realpath(library)
            for path in (library, real, "/usr" + library, "/usr" + real):
                candidates.setdefault(path, library)
        owners = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True).stdout
        owner_of = {}
        for line in owners.splitlines():
            package, path = line.split(": ", 1)
            if path in candidates:
                owner_of.setdefault(candidates[path], package.split(":")[0])
        missing = {lib: owner_of.get(lib) for lib in libraries if owner_of.get(lib) not in closure}
        self.assertFalse(missing, f"shared libraries not provided by the runtime packages {runtime}: {missing}")

    def test_compose_and_prometheus_configuration(self):
        (compose,) = load_all(os.path.join(DEPLOY, "compose.yaml"))
        factlens = compose["services"]["factlens"]
        self.assertKnownFlags(factlens["command"], "deploy/compose.yaml")
        grace = int(factlens["stop_grace_period"].rstrip("s"))
        self.assertGreater(grace, int(flag_values(factlens["command"])["drain_seconds"]))
        (prometheus,) = load_all(os.path.join(DEPLOY, "prometheus.yml"))
        (target,) = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(target, "factlens:9090")  # the compose service and the image's metrics port
        self.assertIn("9090:9090", factlens["ports"])
        check = subprocess.run(["promtool", "check", "config", os.path.join(DEPLOY, "prometheus.yml")],
                               capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
