"""Which registry a command opens: `--root`, `$FEDREC_REGISTRY`, `./fedrec-registry`, or the newest run's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fedrec.errors import ConfigError

ENV_ROOT = "FEDREC_REGISTRY"
DEFAULT_ROOT = Path("fedrec-registry")


def default_registry_root(env: Mapping[str, str] | None = None) -> Path:
    """`$FEDREC_REGISTRY` when set, else `./fedrec-registry`."""
    value = (os.environ if env is None else env).get(ENV_ROOT, "")
    return Path(value) if value else DEFAULT_ROOT



# Where `fedrec` runs leave their registry (`registry_dir: null` is `<output dir>/registry`; conf/config.yaml's
# `hydra.run.dir` and `hydra.sweep.dir`/`subdir`): outputs/DATE/TIME/ and multirun/DATE/TIME/JOB/.
RUN_REGISTRY_GLOBS = ("outputs/*/*/registry", "multirun/*/*/*/registry")


def run_registries(base: Path = Path()) -> list[Path]:
    """The registries of the runs under `base`, newest first, as paths found under `base`.

    Newest by the run's DATE/TIME directories, then by the last write (the jobs of one sweep share them).
    """

    def newest(path: Path) -> tuple[str, str, int]:
        parts = path.relative_to(base).parts  # (outputs|multirun, DATE, TIME, [JOB,] registry)
        try:
            written = (path / "versions").stat().st_mtime_ns
        except OSError:
            written = 0
        return parts[1], parts[2], written

    found = {p for pattern in RUN_REGISTRY_GLOBS for p in base.glob(pattern) if (p / "versions").is_dir()}
    return sorted(found, key=newest, reverse=True)


def resolve_registry_root(root: Path | None = None, env: Mapping[str, str] | None = None,
                          base: Path = Path()) -> tuple[Path, str | None]:
    """The registry `fedrec models` opens, and a note for stderr when it picked one itself.

    `--root`, else `$FEDREC_REGISTRY`, else `./fedrec-registry` if it exists, else the newest run's registry
    under `base` (`outputs/*/*/registry`, `multirun/*/*/*/registry`); a `ConfigError` naming where it
    looked when there is none.
    """
    if root is not None:
        return root, None
    if (os.environ if env is None else env).get(ENV_ROOT, ""):
        return default_registry_root(env), None
    if (base / DEFAULT_ROOT / "versions").is_dir():
        return base / DEFAULT_ROOT, f"using the registry {base / DEFAULT_ROOT} (pass --root to choose another)"
    runs = run_registries(base)
    if not runs:
        where = f"./{DEFAULT_ROOT}, ./{RUN_REGISTRY_GLOBS[0]} or ./{RUN_REGISTRY_GLOBS[1]}"
        raise ConfigError(f"no model registry found: --root not given, ${ENV_ROOT} not set, and none in "
                          f"{base.resolve()} at {where}; run `fedrec` here first, or pass --root DIR "
                          f"(a run keeps its registry in <output dir>/registry, or in its registry_dir)")
    others = f", the newest of {len(runs)} run registries" if len(runs) > 1 else ""
    return runs[0], f"using the newest run's registry {runs[0]}{others} (pass --root to choose another)"
