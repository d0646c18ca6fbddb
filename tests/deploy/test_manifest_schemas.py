"""Every Kubernetes manifest of deploy/k8s validates against the Kubernetes JSON schemas (issue 14).

Usage: test_manifest_schemas.py VENV_BIN SOURCE_DIR

Offline: the schemas come with the pinned PyPI package kubernetes-validate (scripts/setup.sh installs
it into the project venv, VENV_BIN/python). Each kustomization (deploy/k8s, deploy/k8s/gpu) is
rendered as `kubectl kustomize` would (tests/deploy/kustomize_lite.py; where kubectl is installed the
two renderings are compared), the autoscaling manifests are read as they are, and every object is
validated in strict mode (no property the schema does not define, so a misspelt field fails) against
the Kubernetes versions of KUBERNETES_VERSIONS. Custom resources (ServiceMonitor, ScaledObject) have no
schema there; they are checked field by field in tests/deploy/test_deploy.py. Every YAML file under
deploy/k8s must be covered, by a kustomization or by STANDALONE, or be in NOT_MANIFESTS with a reason.
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import yaml

VENV_BIN, SOURCE = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_lite  # noqa: E402

K8S = os.path.join(SOURCE, "deploy", "k8s")
# The oldest Kubernetes these manifests need (PodDisruptionBudget's unhealthyPodEvictionPolicy is GA
# in 1.31), and a current one; both are schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")
KUSTOMIZATIONS = ("", "gpu")
STANDALONE = ("autoscaling/hpa.yaml", "autoscaling/keda-scaledobject.yaml", "gpu/models-download-job.yaml")
NOT_MANIFESTS = {
    "autoscaling/prometheus-adapter-values.yaml": "Helm values of prometheus-adapter, not a Kubernetes object "
                                                  "(test_deploy checks its rule against the HPA)",
}
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}

# Runs in the venv's Python (kubernetes-validate and its jsonschema live there): validates the JSON list
# of objects on stdin, prints one result per object and version.
VALIDATOR = r"""
import json, sys
import kubernetes_validate as kv
objects, versions = json.load(sys.stdin)
results = []
for obj in objects:
    for version in versions:
        try:
            kv.validate(obj, version, strict=True)
            results.append("ok")
        except kv.SchemaNotFoundError:
            results.append("no schema")
        except kv.ValidationError as e:
            results.append("invalid: " + str(e).splitlines()[0] + " at " + "/".join(map(str, e.path)))
print(json.dumps(results))
"""


def validate(objects):
    python = os.path.join(VENV_BIN, "python")
    if not os.path.exists(python):
        raise AssertionError(f"{python} is missing: scripts/setup.sh installs kubernetes-validate into the venv")
    p = subprocess.run([python, "-c", VALIDATOR], input=json.dumps([objects, KUBERNETES_VERSIONS]),
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("kubernetes-validate failed to run (scripts/setup.sh installs it):\n" + p.stderr)
    results = iter(json.loads(p.stdout))
    return [(obj, version, next(results)) for obj in objects for version in KUBERNETES_VERSIONS]


def name(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


class ManifestSchemaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objects = {}  # where -> objects
        for directory in KUSTOMIZATIONS:
            cls.objects[os.path.join("deploy/k8s", directory, "kustomization.yaml")] = \
                kustomize_lite.render(os.path.join(K8S, directory))
        for path in STANDALONE:
            cls.objects[os.path.join("deploy/k8s", path)] = kustomize_lite.load_all(os.path.join(K8S, path))

    def test_every_yaml_file_is_covered(self):
        covered = set()
        for directory in KUSTOMIZATIONS:
            covered |= {os.path.relpath(f, K8S) for f in kustomize_lite.files_of(os.path.join(K8S, directory))}
        covered |= set(STANDALONE) | set(NOT_MANIFESTS)
        found = set()
        for dirpath, _, names in os.walk(K8S):
            found |= {os.path.relpath(os.path.join(dirpath, n), K8S) for n in names if n.endswith((".yaml", ".yml"))}
        self.assertEqual(found - covered, set(), "manifests no kustomization, STANDALONE or NOT_MANIFESTS covers")
        self.assertEqual(covered - found, set(), "stale entries")

    def test_every_object_validates_against_the_kubernetes_schemas(self):
        objects = [obj for objs in self.objects.values() for obj in objs]
        self.assertGreaterEqual(len(objects), 12)
        validated, problems = set(), []
        for obj, version, result in validate(objects):
            if result == "ok":
                validated.add(obj["kind"])
            elif result == "no schema" and (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
                pass
            else:
                problems.append(f"{name(obj)} on Kubernetes {version}: {result}")
        self.assertFalse(problems, "\n".join(problems))
        self.assertLessEqual({"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim",
                              "HorizontalPodAutoscaler", "Job"}, validated)

    def test_the_validator_rejects_a_misspelt_field_and_a_wrong_type(self):
        # The same strict validation, on broken copies of the GPU Deployment: it must fail them.
        (deployment,) = [o for o in self.objects["deploy/k8s/gpu/kustomization.yaml"] if o["kind"] == "Deployment"]
        misspelt = json.loads(json.dumps(deployment))
        misspelt["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
        wrong_type = json.loads(json.dumps(deployment))
        wrong_type["spec"]["replicas"] = "two"
        for obj, version, result in validate([misspelt, wrong_type]):
            self.assertTrue(result.startswith("invalid: "), f"{version}: {result}")

    def test_kustomize_lite_renders_what_kubectl_kustomize_renders(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            self.skipTest("kubectl is not installed; kustomize_lite refuses every kustomize feature it does not render")
        for directory in KUSTOMIZATIONS:
            out = subprocess.run([kubectl, "kustomize", os.path.join(K8S, directory)], capture_output=True,
                                 text=True, check=True, timeout=60).stdout
            theirs = {name(o): o for o in yaml.safe_load_all(out) if o}
            ours = {name(o): o for o in kustomize_lite.render(os.path.join(K8S, directory))}
            self.assertEqual(sorted(ours), sorted(theirs), directory)
            for key in theirs:
                self.assertEqual(ours[key], theirs[key], f"{directory}: {key}")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
