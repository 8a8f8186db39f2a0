"""The version store: every aggregated global model is an immutable, content-addressed version.

`version` names a model by its content and provenance; `store` keeps versions on disk (atomic, verified,
with lineage); `runs` finds the registry a command should open. Both the coordinator (which adds versions)
and the silos (which fetch a pinned one) use it, so it sits below both.
"""

from fedrec.versions.runs import DEFAULT_ROOT, ENV_ROOT, RUN_REGISTRY_GLOBS, resolve_registry_root, run_registries
from fedrec.versions.store import LOCK_FILE, ModelRegistry
from fedrec.versions.version import SHORT, ModelVersion, describe_version

__all__ = ["DEFAULT_ROOT", "ENV_ROOT", "LOCK_FILE", "RUN_REGISTRY_GLOBS", "SHORT", "ModelRegistry", "ModelVersion",
           "describe_version", "resolve_registry_root", "run_registries"]
