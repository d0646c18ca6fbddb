"""The deployment files agree with the server they deploy.

Usage: test_deploy.py FACTLENS_SERVER SOURCE_DIR

No cluster and no Docker daemon are needed (neither exists on the project's machines): the files are
parsed, and what they say is checked against the real binary. The server is started with each
Kubernetes Deployment's own arguments (the CPU one's model path and listen ports mapped to this
machine; the GPU one's Hugging Face repo id served from a cache in the layout its volume holds, built
from the Llama demo model, on the CPU), and the probe paths it names must answer 200; every flag in
the Deployments, the Dockerfile and the compose file must be one the server defines; Services,
headless Services, PodDisruptionBudgets and ServiceMonitors must select the pods and ports they are
for; the GPU Deployment's memory request and startup probe must cover its weights; the autoscaling
manifests (HPA + prometheus-adapter, KEDA) must scale the GPU Deployment on a metric the server
exports, with a target between --max_concurrent and a full queue; the runtime profile of
scripts/setup.sh, which the Dockerfile's runtime stage runs, must provide every shared library the
server loads (Debian's runtime packages, or the torch wheel and the CUDA library wheels); the
Prometheus configuration must pass promtool. Schema validation: test_manifest_schemas.py.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import yaml

SERVER, SOURCE = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import ServerProcess  # noqa: E402
import kustomize_lite  # noqa: E402
from kustomize_lite import load_all  # noqa: E402
DEPLOY = os.path.join(SOURCE, "deploy")
IMAGE_MODELS = "/usr/local/share/factlens/models"  # the image's install tree (tests/deploy/test_install.py)
GIB = 1 << 30
SLOW_VOLUME_BYTES_PER_SECOND = 25e6  # the GPU startup probe is sized for a volume this slow


def quantity(text):
    """Bytes of a Kubernetes memory quantity (binary suffixes, as the manifests use)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    assert m, f"unexpected quantity {text!r}"
    return int(m.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[m.group(2)]


def pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"]["labels"]


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
        # Each kustomization as kubectl kustomize renders it: {name: object} per kind.
        cls.sets = {}
        for name in ("cpu", "gpu"):
            directory = os.path.join(DEPLOY, "k8s", "gpu" if name == "gpu" else "")
            objects = kustomize_lite.by_kind(kustomize_lite.render(directory))
            cls.sets[name] = {kind: {o["metadata"]["name"]: o for o in objs} for kind, objs in objects.items()}
        cls.kinds = {kind: objs["factlens"] for kind, objs in cls.sets["cpu"].items() if "factlens" in objs}
        kustomization = load_all(os.path.join(DEPLOY, "k8s", "kustomization.yaml"))[0]
        cls.labels = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
        cls.container = cls.kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        cls.args = flag_values(cls.container["args"])
        (cls.gpu_deployment,) = cls.sets["gpu"]["Deployment"].values()
        cls.gpu_container = cls.gpu_deployment["spec"]["template"]["spec"]["containers"][0]
        cls.gpu_args = flag_values(cls.gpu_container["args"])
        autoscaling = os.path.join(DEPLOY, "k8s", "autoscaling")
        (cls.hpa,) = load_all(os.path.join(autoscaling, "hpa.yaml"))
        (cls.keda,) = load_all(os.path.join(autoscaling, "keda-scaledobject.yaml"))
        (cls.adapter,) = load_all(os.path.join(autoscaling, "prometheus-adapter-values.yaml"))

    def assertKnownFlags(self, args, where):
        unknown = set(flag_values(args)) - self.server_flags
        self.assertFalse(unknown, f"{where} passes flags factlens_server does not define: {unknown}")

    def test_deployment_flags_exist(self):
        self.assertKnownFlags(self.container["args"], "deploy/k8s/deployment.yaml")
        self.assertKnownFlags(self.gpu_container["args"], "deploy/k8s/gpu/deployment.yaml")

    def test_ports_and_probes_match_the_flags(self):
        for deployment in (self.kinds["Deployment"], self.gpu_deployment):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            args = flag_values(container["args"])
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            self.assertEqual(ports["grpc"], port_of(args["listen"]))
            self.assertEqual(ports["metrics"], port_of(args["http_listen"]))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertEqual(container[probe]["httpGet"]["port"], "metrics", probe)
            self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
            self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
            pod = deployment["spec"]["template"]["spec"]
            self.assertGreater(pod["terminationGracePeriodSeconds"], int(args["drain_seconds"]),
                               "the kubelet would kill the server while it drains")

    def test_service_and_servicemonitor_reach_the_named_ports(self):
        for objects in self.sets.values():
            (deployment,) = objects["Deployment"].values()
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            container_ports = {p["name"] for p in container["ports"]}
            services = objects["Service"].values()
            for service in services:
                self.assertEqual(service["spec"]["selector"], pod_labels(deployment), service["metadata"]["name"])
                for p in service["spec"]["ports"]:
                    self.assertIn(p["targetPort"], container_ports)
            (monitor,) = objects["ServiceMonitor"].values()
            endpoint = monitor["spec"]["endpoints"][0]
            self.assertEqual(endpoint["path"], "/metrics")
            # Exactly one Service matches the monitor's selector and has its port: each pod is
            # scraped once (the headless Service, which matches too, has no metrics port).
            scraped = [s for s in services
                       if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
                       and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
            self.assertEqual(len(scraped), 1, monitor["metadata"]["name"])
        self.assertLessEqual(self.kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items(),
                             self.labels.items())

    def test_headless_services_resolve_to_every_ready_pod(self):
        for objects in self.sets.values():
            (deployment,) = objects["Deployment"].values()
            headless = [s for s in objects["Service"].values() if s["spec"].get("clusterIP") == "None"]
            self.assertEqual(len(headless), 1, "one headless Service for client-side balancing")
            spec = headless[0]["spec"]
            self.assertEqual([(p["name"], p["targetPort"], p.get("appProtocol")) for p in spec["ports"]],
                             [("grpc", "grpc", "grpc")])
            # Not-ready pods (loading, draining) must not be handed to clients.
            self.assertFalse(spec.get("publishNotReadyAddresses", False))
            self.assertTrue(headless[0]["metadata"]["name"].endswith("-headless"))

    def test_disruption_budgets_keep_replicas_serving(self):
        for objects in self.sets.values():
            (deployment,) = objects["Deployment"].values()
            (budget,) = objects["PodDisruptionBudget"].values()
            self.assertEqual(budget["spec"]["selector"]["matchLabels"], pod_labels(deployment))
            self.assertEqual(budget["spec"]["maxUnavailable"], 1)
            self.assertNotIn("minAvailable", budget["spec"])
        # The GPU fleet runs 2 replicas, so a drain (one eviction at a time) leaves one serving, and
        # a rolling update starts the new replica before it stops an old one.
        self.assertGreaterEqual(self.gpu_deployment["spec"]["replicas"], 2)
        self.assertEqual(self.gpu_deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)

    def test_gpu_deployment_resources_follow_from_its_weights(self):
        weights = int(self.gpu_deployment["metadata"]["annotations"]["factlens.dev/weights-bytes"])
        # Llama-2-13B in float16: 13,015,864,320 parameters x 2 bytes.
        self.assertEqual(weights, 13_015_864_320 * 2)
        self.assertRegex(self.gpu_args["model"], r"^[^=]+=meta-llama/Llama-2-13b-hf,.*dtype=float16")
        resources = self.gpu_container["resources"]
        self.assertEqual(resources["limits"]["nvidia.com/gpu"], 1)
        self.assertEqual(resources["requests"]["nvidia.com/gpu"], 1)
        self.assertIn("device=cuda", self.gpu_args["model"])
        memory = quantity(resources["requests"]["memory"])
        self.assertGreaterEqual(memory, weights + 4 * GIB, "the checkpoint's page cache and the process")
        self.assertGreaterEqual(quantity(resources["limits"]["memory"]), memory)
        startup = self.gpu_container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        self.assertGreaterEqual(budget, weights / SLOW_VOLUME_BYTES_PER_SECOND,
                                "the startup probe would restart a pod still loading from a slow volume")
        pod = self.gpu_deployment["spec"]["template"]["spec"]
        self.assertEqual(pod["nodeSelector"], {"nvidia.com/gpu.present": "true"})
        self.assertIn({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, pod["tolerations"])
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        (card,) = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
        self.assertGreater(int(card["values"][0]) << 20, weights + 2 * GIB, "the card must hold the weights")

    def test_gpu_weights_come_read_only_from_the_claim(self):
        (claim,) = self.sets["gpu"]["PersistentVolumeClaim"].values()
        self.assertIn("ReadWriteMany", claim["spec"]["accessModes"])  # every replica's node mounts it
        pod = self.gpu_deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        self.assertEqual(volume["persistentVolumeClaim"], {"claimName": claim["metadata"]["name"], "readOnly": True})
        (mount,) = [m for m in self.gpu_container["volumeMounts"] if m["name"] == volume["name"]]
        self.assertTrue(mount["readOnly"])
        env = {e["name"]: e["value"] for e in self.gpu_container["env"]}
        self.assertTrue(env["HF_HUB_CACHE"].startswith(mount["mountPath"] + "/"))
        weights = int(self.gpu_deployment["metadata"]["annotations"]["factlens.dev/weights-bytes"])
        self.assertGreater(quantity(claim["spec"]["resources"]["requests"]["storage"]), weights)
        # The download Job writes the Deployment's repo id into the same cache on the same claim.
        (job,) = load_all(os.path.join(DEPLOY, "k8s", "gpu", "models-download-job.yaml"))
        job_pod = job["spec"]["template"]["spec"]
        (job_volume,) = [v for v in job_pod["volumes"] if "persistentVolumeClaim" in v]
        self.assertEqual(job_volume["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"])
        (downloader,) = job_pod["containers"]
        (job_mount,) = [m for m in downloader["volumeMounts"] if m["name"] == job_volume["name"]]
        job_env = {e["name"]: e.get("value") for e in downloader["env"]}
        self.assertEqual(os.path.relpath(job_env["HF_HUB_CACHE"], job_mount["mountPath"]),
                         os.path.relpath(env["HF_HUB_CACHE"], mount["mountPath"]))
        repo_id = self.gpu_args["model"].split("=", 1)[1].split(",")[0]
        self.assertIn(f"snapshot_download('{repo_id}'", " ".join(downloader["args"]))
        self.assertIn("*.safetensors", " ".join(downloader["args"]))

    def test_the_server_runs_with_the_gpu_deployments_arguments_from_an_hf_cache(self):
        """The GPU Deployment's flags and environment, on this machine's CPU: its repo id is served from
        an HF cache in the volume's layout (refs/main -> snapshots/REV), holding the Llama demo model.
        Mapped: listen ports (free loopback ports), HF_HUB_CACHE (the temporary cache), and the model's
        device and dtype options dropped (no GPU here: device=cuda cannot load, and the CPU run keeps its
        float32 default)."""
        name, spec = self.gpu_args["model"].split("=", 1)
        repo_id = spec.split(",")[0]
        cache = tempfile.mkdtemp(prefix="factlens-hf-cache-")
        try:
            repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
            revision = "0123456789abcdef0123456789abcdef01234567"
            os.makedirs(os.path.join(repo, "refs"))
            with open(os.path.join(repo, "refs", "main"), "w") as f:
                f.write(revision)
            snapshot = os.path.join(repo, "snapshots", revision)
            os.makedirs(snapshot)
            demo = os.path.abspath(os.path.join(SOURCE, "models", "llama-facts-tiny"))
            for entry in os.listdir(demo):
                os.symlink(os.path.join(demo, entry), os.path.join(snapshot, entry))
            args = [re.sub(r"^--(listen|http_listen)=0\.0\.0\.0:\d+$", r"--\1=127.0.0.1:0", a)
                    for a in self.gpu_container["args"]]
            args = [f"--model={name}={repo_id}" if a.startswith("--model=") else a for a in args]
            env = {e["name"]: e["value"] for e in self.gpu_container["env"]}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env, HF_HUB_CACHE=cache)
            try:
                server = ServerProcess(SERVER, *args, default_flags=False)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            try:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    path = self.gpu_container[probe]["httpGet"]["path"]
                    with urllib.request.urlopen(server.http + path, timeout=5) as r:
                        self.assertEqual(r.status, 200, probe)
                metrics = server.metrics()
                self.assertIn(f'factlens_model_ready{{model="{name}"}} 1', metrics)
                # The autoscaling metric is a gauge the server exports (its samples appear with a
                # model's first call; deploy/README.md says what that means for the autoscalers).
                metric = self.hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
                self.assertIn(f"# TYPE {metric} gauge", metrics)
            finally:
                self.assertEqual(server.stop(), 0, server.logs()[-2000:])
        finally:
            shutil.rmtree(cache)

    def test_autoscaling_scales_the_gpu_deployment_on_queue_depth(self):
        deployment = self.gpu_deployment["metadata"]["name"]
        running, queued = int(self.gpu_args["max_concurrent"]), int(self.gpu_args["max_queued"])
        # HPA (prometheus-adapter): a Pods metric, averaged over replicas.
        spec = self.hpa["spec"]
        self.assertEqual(spec["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment})
        (metric,) = spec["metrics"]
        self.assertEqual(metric["type"], "Pods")
        name = metric["pods"]["metric"]["name"]
        self.assertEqual(name, "factlens_requests_in_flight")  # admitted, queued or running (docs/metrics.md)
        target = float(metric["pods"]["target"]["averageValue"])
        # Above --max_concurrent (calls queue), below a full queue (calls are refused).
        self.assertGreater(target, running)
        self.assertLess(target, running + queued)
        self.assertLessEqual(spec["minReplicas"], self.gpu_deployment["spec"]["replicas"])
        self.assertGreater(spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
                           int(self.gpu_args["drain_seconds"]))
        # prometheus-adapter serves that metric, per pod.
        (rule,) = self.adapter["rules"]["custom"]
        self.assertTrue(rule["seriesQuery"].startswith(name + "{"))
        self.assertEqual(rule["name"]["as"], name)
        self.assertEqual(rule["resources"]["overrides"]["pod"], {"resource": "pod"})
        # KEDA: the same metric and target, over the Service the ServiceMonitor scrapes.
        keda = self.keda["spec"]
        self.assertEqual(keda["scaleTargetRef"]["name"], deployment)
        self.assertEqual((keda["minReplicaCount"], keda["maxReplicaCount"]), (spec["minReplicas"], spec["maxReplicas"]))
        (trigger,) = keda["triggers"]
        self.assertEqual(trigger["type"], "prometheus")
        self.assertEqual(float(trigger["metadata"]["threshold"]), target)
        service = re.fullmatch(rf'sum\({name}\{{service="([^"]+)"\}}\)', trigger["metadata"]["query"])
        self.assertIsNotNone(service, trigger["metadata"]["query"])
        metrics_service = self.sets["gpu"]["Service"][service.group(1)]
        self.assertIn("metrics", {p["name"] for p in metrics_service["spec"]["ports"]})

    def test_images_are_the_ones_scripts_build_images_sh_builds(self):
        with open(os.path.join(SOURCE, "scripts", "build_images.sh")) as f:
            script = f.read()
        default_tag = re.search(r'tag="\$\{FACTLENS_IMAGE_TAG:-([^}]+)\}"', script).group(1)
        built = dict(re.findall(r'^build (\w+) "localhost/([\w-]+):\$tag"$', script, re.M))
        self.assertEqual(built, {"runtime": "factlens", "gpu": "factlens-gpu"})
        for directory, target in (("", "runtime"), ("gpu", "gpu")):
            (kustomization,) = load_all(os.path.join(DEPLOY, "k8s", directory, "kustomization.yaml"))
            (image,) = kustomization["images"]
            self.assertEqual((image["name"], image["newTag"]), (built[target], default_tag))
        with open(os.path.join(SOURCE, "Dockerfile")) as f:
            text = f.read()
        gpu_stage = text[text.index("FROM runtime AS gpu"):]
        self.assertIn("NVIDIA_VISIBLE_DEVICES=all", gpu_stage)
        self.assertRegex(gpu_stage, r"NVIDIA_DRIVER_CAPABILITIES=\S*compute")
        self.assertNotRegex(gpu_stage, r"(?m)^(ENTRYPOINT|CMD|USER|RUN) ")  # the CPU image's, unchanged

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
