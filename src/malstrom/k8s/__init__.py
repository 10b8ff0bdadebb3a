"""Run malstrom jobs on Kubernetes: the ``MalstromJob`` resource and its operator.

A ``MalstromJob`` (group ``malstrom.io``, version ``v1``; the CRD is ``crd.yaml`` next to
this module, also printed by ``python -m malstrom.k8s crd``) describes one job: its image, its
``app`` (``path/to/job.py:build``), ``parallelism``, ``persistence`` and ``suspend``. The
operator (``pip install 'malstrom[k8s]'``, then ``python -m malstrom.k8s operator``) keeps a
coordinator Deployment and a worker StatefulSet for it:

- creating the resource starts the job;
- changing ``spec.parallelism`` rescales the running job live through the coordinator
  (no restart): new worker pods start and join, or released workers hand over and exit;
- ``spec.suspend: true`` stops the job with a final snapshot and scales it to zero;
  clearing it resumes from that snapshot (at the then current ``parallelism``);
- deleting the resource stops the job with a final snapshot first.

``python -m malstrom.k8s render JOB.yaml`` prints the plain manifests the operator would
create, for clusters without the operator. The operator's decisions are a pure function
(:func:`reconcile`) of the resource and what it observes, and ``malstrom.k8s._local`` runs the
same operator against local processes instead of a cluster. See ``docs/deployment.md``.
"""

from malstrom.k8s._reconcile import (
    Admin,
    Apply,
    CreateSecret,
    Observed,
    Plan,
    Scale,
    observe,
    reconcile,
)
from malstrom.k8s._resources import render
from malstrom.k8s._spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, JobSpec, SpecError

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Admin",
    "Apply",
    "CreateSecret",
    "JobSpec",
    "Observed",
    "Plan",
    "Scale",
    "SpecError",
    "observe",
    "reconcile",
    "render",
]
