"""Renders the project's kustomizations (deploy/k8s, deploy/k8s/gpu) without kubectl.

Only the part of kustomize those files use: `resources` (YAML files and kustomization directories),
`labels` (`pairs`, `includeSelectors`) and `images` (`name`, `newName`, `newTag`). Anything else in a
kustomization.yaml is refused, so a file that starts using more cannot be rendered wrongly in
silence; where kubectl is installed, tests/deploy/test_manifest_schemas.py also checks that this
rendering equals `kubectl kustomize`.
"""
import copy
import os

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "labels", "resources", "images"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _set_in(obj, path, labels):
    for key in path:
        obj = obj.setdefault(key, {})
    obj.update(labels)


def _add_labels(doc, labels, include_selectors):
    _set_in(doc, ("metadata", "labels"), labels)
    if not include_selectors:
        return
    kind = doc["kind"]
    if kind in POD_TEMPLATE_KINDS:
        _set_in(doc, ("spec", "selector", "matchLabels"), labels)
        _set_in(doc, ("spec", "template", "metadata", "labels"), labels)
    elif kind == "Service":
        _set_in(doc, ("spec", "selector"), labels)
    elif kind == "PodDisruptionBudget":
        _set_in(doc, ("spec", "selector", "matchLabels"), labels)


def _set_images(doc, images):
    if doc["kind"] not in POD_TEMPLATE_KINDS:
        return
    pod = doc["spec"]["template"]["spec"]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = image.get("newName", name) + ":" + image.get("newTag", tag)
                container["image"] = container["image"].rstrip(":")


def files_of(directory):
    """Every YAML file the kustomization in `directory` reads (its own kustomization.yaml included)."""
    path = os.path.join(directory, "kustomization.yaml")
    out = [path]
    for resource in load_all(path)[0]["resources"]:
        target = os.path.normpath(os.path.join(directory, resource))
        out += files_of(target) if os.path.isdir(target) else [target]
    return out


def render(directory):
    """The list of objects `kubectl kustomize directory` prints (order aside)."""
    (kustomization,) = load_all(os.path.join(directory, "kustomization.yaml"))
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which kustomize_lite does not "
                         "render: teach it, or compare with kubectl kustomize")
    docs = []
    for resource in kustomization["resources"]:
        target = os.path.join(directory, resource)
        docs += render(target) if os.path.isdir(target) else copy.deepcopy(load_all(target))
    for entry in kustomization.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors"}:
            raise ValueError(f"{directory}: labels entry {entry} has fields kustomize_lite does not render")
        for doc in docs:
            _add_labels(doc, entry["pairs"], entry.get("includeSelectors", False))
    for doc in docs:
        _set_images(doc, kustomization.get("images", []))
    return docs


def by_kind(docs):
    """{kind: [objects]}"""
    out = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out
