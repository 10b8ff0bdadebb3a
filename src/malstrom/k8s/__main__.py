"""``python -m malstrom.k8s``: the MalstromJob CRD, plain manifests, and the operator.

python -m malstrom.k8s crd                        print the CustomResourceDefinition
python -m malstrom.k8s render JOB.yaml            print the objects that run a MalstromJob
python -m malstrom.k8s operator [-n NAMESPACE]    run the operator (kopf) in a cluster
python -m malstrom.k8s local FILE.yaml... [--root D]   run a MalstromJob (and the
                      ConfigMaps and Secrets beside it) on local processes; edit the
                      MalstromJob's file and the operator follows
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CRD = Path(__file__).with_name("crd.yaml")


def _load(path: str) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    jobs = [d for d in docs if d.get("kind") == "MalstromJob"]
    if len(jobs) != 1:
        raise SystemExit(f"{path}: expected one MalstromJob, found {len(jobs)}")
    return dict(jobs[0])


def _render(args: argparse.Namespace) -> int:
    import yaml

    from malstrom.k8s._resources import render
    from malstrom.k8s._spec import JobSpec

    job = _load(args.job)
    spec = JobSpec.from_resource(job)
    objects = render(
        spec,
        workers=0 if spec.suspend else spec.parallelism,
        coordinator=0 if spec.suspend else 1,
        owned=False,
    )
    namespaced = bool((job.get("metadata") or {}).get("namespace"))
    if not namespaced:  # like the MalstromJob: for `kubectl apply -n NAMESPACE`
        for obj in objects:
            del obj["metadata"]["namespace"]
    where = f" -n {spec.namespace}" if namespaced else ""
    print(
        f"# The objects that run the job {spec.name!r} without the operator\n"
        f"# (python -m malstrom.k8s render {args.job}).\n"
        f"# Create its token first: kubectl{where} create secret generic "
        f"{spec.token_secret_name} --from-literal=token=$(openssl rand -hex 32)"
    )
    for obj in objects:
        print("---")
        print(yaml.safe_dump(obj, sort_keys=False), end="")
    return 0


def _operator(args: argparse.Namespace) -> int:
    import logging

    import kopf

    import malstrom.k8s._kopf  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0


def _local(args: argparse.Namespace) -> int:
    import logging
    import time

    import yaml

    from malstrom.k8s._local import LocalCluster, run_operator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    others, job_file = [], None
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if any(d.get("kind") == "MalstromJob" for d in docs):
            if job_file is not None:
                raise SystemExit("give one MalstromJob")
            job_file = path
        others += [d for d in docs if d.get("kind") in ("ConfigMap", "Secret")]
    if job_file is None:
        raise SystemExit("none of the files has a MalstromJob")
    job = _load(job_file)
    meta = job.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    ns, name = meta["namespace"], meta["name"]
    stop = threading.Event()
    with LocalCluster(args.root) as cluster:
        for obj in others:
            obj.setdefault("metadata", {}).setdefault("namespace", ns)
            cluster.apply(obj)
        cluster.create(job)
        loop = threading.Thread(target=run_operator, args=(cluster,), kwargs={"stop": stop})
        loop.start()
        seen = Path(job_file).stat().st_mtime
        last = None
        try:
            while cluster.get(ns, name) is not None:
                time.sleep(0.5)
                mtime = Path(job_file).stat().st_mtime
                if mtime != seen:  # the file changed: apply its spec
                    seen = mtime
                    cluster.patch_spec(ns, name, _load(job_file).get("spec") or {})
                status = (cluster.get(ns, name) or {}).get("status") or {}
                line = f"{status.get('phase')}: {status.get('message')}"
                if line != last:
                    print(f"{name}: {line}", flush=True)
                    last = line
        except KeyboardInterrupt:
            print(f"{name}: deleting (stop with a final snapshot)", flush=True)
            cluster.delete(ns, name)
            while cluster.get(ns, name) is not None:
                time.sleep(0.5)
        finally:
            stop.set()
            loop.join()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m malstrom.k8s", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("crd", help="print the MalstromJob CustomResourceDefinition")
    p = sub.add_parser("render", help="print the Kubernetes objects of a MalstromJob")
    p.add_argument("job", help="a YAML file with one MalstromJob")
    p = sub.add_parser("operator", help="run the operator (kopf)")
    p.add_argument("-n", "--namespace", action="append", help="watch only these namespaces")
    p.add_argument("--health-port", type=int, default=8080)
    p = sub.add_parser("local", help="run a MalstromJob on local processes, following its file")
    p.add_argument("files", nargs="+", help="YAML files: one MalstromJob, ConfigMaps, Secrets")
    p.add_argument("--root", default="malstrom-local", help="directory for volumes and logs")
    args = ap.parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(CRD.read_text())
        return 0
    handlers = {"render": _render, "operator": _operator, "local": _local}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
