"""What a region serves at this moment, read the way a serving process would: the pointer, then the model it names.

A serving process reads `serving/serving.json` (the pointer, `fedrec.silo.adoption.ServingRecord`) and loads the
model it names: a fork line (`fork:BASE`) from `fork.safetensors`, anything else (a global version id, `own:`,
`adapted:`) from `served.safetensors`, whose header names the model it holds. The silo writes a new model first
and moves the pointer after it (`fedrec.silo.serving`), keeping the file each write replaced
(`served.prev.safetensors`, `fork.prev.safetensors`) so that the model the pointer still names stays readable in
between; every file is replaced by an atomic rename (`fedrec.io`), so a reader sees a whole old or a whole new
file. `served_now` never raises for the state it finds: it says what it could not read, which is what
`fedrec.divestment.transition` counts as a moment without a served model.

What it checks: the pointer parses and names a model, a stored file holds that model (by its header), and
every array of that file loads. What it does not: that the arrays are the ones the decision meant (nothing
hashes them), nor the per-user parameters a global version is served with (the silo's current users, kept per
run under `runs/`), nor that anything outside the state dir (a real model server) switched when the pointer did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.numpy import load_file

from fedrec.silo.adoption import SERVING_FILE
from fedrec.silo.serving import FORK_FILE, FORK_PREFIX, SERVED_FILE, prev_file
from fedrec.silo.state_dir import StateDir


@dataclass(frozen=True)
class ServedNow:
    """One reading of a region's serving state: the model it serves, or why none could be read."""

    label: str | None
    """What the pointer names (None: no readable pointer, or it names nothing)."""
    source: str = ""
    """The file the model was loaded from (empty when none was)."""
    rounds: int | None = None
    """A fork line's local rounds so far (None for any other model)."""
    problem: str = ""
    """Why no model is served now (empty when one is)."""

    @property
    def ok(self) -> bool:
        """Whether a whole model named by the pointer was loaded."""
        return not self.problem

    @property
    def model_id(self) -> str:
        """The served model's identity: its label, and a fork's rounds (a continued fork is a new model)."""
        return f"{self.label}+{self.rounds}" if self.rounds is not None else str(self.label)


def read_pointer(serving_dir: Path) -> tuple[str | None, str]:
    """(label, problem) from the pointer file: a missing, partial or unparsable pointer is a problem."""
    path = serving_dir / SERVING_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, "no serving pointer"
    except OSError as exc:
        return None, f"pointer unreadable ({exc})"
    try:
        label = json.loads(text)["version"]
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"pointer unreadable ({type(exc).__name__}: {text[:60]!r})"
    if not label:
        return None, "the pointer names no model"
    return str(label), ""


def _load(path: Path, key: str, want: str) -> tuple[bool, int | None, str]:
    """(found, fork rounds, problem): whether `path`'s header `key` is `want` and all its arrays load."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            head = dict(f.metadata() or {})
        if head.get(key) != want:
            return False, None, f"{path.name} holds {head.get(key)!r}"
        load_file(str(path))
    except FileNotFoundError:
        return False, None, f"no {path.name}"
    except Exception as exc:  # a partial or corrupt file, whatever the reader says about it
        return False, None, f"{path.name} unreadable ({type(exc).__name__})"
    return True, int(head["rounds"]) if "rounds" in head else None, ""


def _resolve(serving_dir: Path, label: str) -> ServedNow:
    file, key, want = ((FORK_FILE, "base", label[len(FORK_PREFIX):]) if label.startswith(FORK_PREFIX)
                       else (SERVED_FILE, "version", label))
    problems = []
    for name in (file, prev_file(file)):
        found, rounds, problem = _load(serving_dir / name, key, want)
        if found:
            return ServedNow(label, name, rounds)
        problems.append(problem)
    return ServedNow(label, problem=f"the pointer names {label[:24]!r} but " + "; ".join(problems))


def served_now(state_dir: Path) -> ServedNow:
    """The model region `state_dir` serves now, loaded as a serving process would (see the module)."""
    serving_dir = StateDir(Path(state_dir)).serving
    label, problem = read_pointer(serving_dir)
    if label is None:
        return ServedNow(None, problem=problem)
    now = _resolve(serving_dir, label)
    if now.ok:
        return now
    again, _ = read_pointer(serving_dir)  # the pointer may have moved while we read: a reader retries once
    return _resolve(serving_dir, again) if again is not None and again != label else now
