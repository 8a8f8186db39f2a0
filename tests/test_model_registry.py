"""The model registry on real files: content ids, lineage, verified loads, atomic writes under crashes, the CLI."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.commands.models import models_main
from fedrec.errors import ConfigError, DataError
from fedrec.model_io import load_global_model
from fedrec.models.base import ModelSpec
from fedrec.versions import LOCK_FILE, ModelRegistry, ModelVersion

SPEC = ModelSpec(name="mf", dim=4, kwargs={"n_items": 5, "bias": True})


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"item.emb.weight": rng.normal(size=(5, 4)).astype(np.float32),
            "item.bias.weight": rng.normal(size=(5, 1)).astype(np.float32),
            "steps": np.array(seed, dtype=np.int64)}


def add(reg: ModelRegistry, seed: int, parent: str | None = None, rnd: int = 1, **kw: object) -> ModelVersion:
    fields: dict = {"contributors": ["eu", "us"], "epsilon": {"eu": 0.5 * rnd, "us": 0.4 * rnd},
                    "strategy": "fedavg", "config_hash": "cfg123", "metrics": {"overall": {"ndcg@10": 0.1 * rnd}}}
    fields.update(kw)
    return reg.add(weights(seed), spec=SPEC, parent=parent, round=rnd, **fields)


def chain(reg: ModelRegistry, n: int) -> list[ModelVersion]:
    versions: list[ModelVersion] = []
    for rnd in range(n):
        versions.append(add(reg, seed=rnd, parent=versions[-1].id if versions else None, rnd=rnd))
    return versions


def version_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "versions").iterdir())


def test_add_get_load_round_trip(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = add(reg, seed=1)
    assert len(v.id) == 64 and v.short_id == v.id[:16]
    assert v.contributors == ("eu", "us") and v.epsilon == {"eu": 0.5, "us": 0.4}
    assert reg.get(v.id) == v and reg.get(v.short_id[:6]) == v
    arrays, loaded = reg.load(v.id)
    assert loaded == v and loaded.model_spec() == SPEC
    expected = weights(1)
    assert arrays.keys() == expected.keys()
    for name, a in expected.items():
        assert arrays[name].dtype == a.dtype and np.array_equal(arrays[name], a)
    # a fresh registry object (another process) sees the same version, with nothing but the directory
    assert ModelRegistry(tmp_path, create=False).list() == [v]


def test_same_content_same_id_one_directory(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    first = add(reg, seed=1)
    again = add(reg, seed=1, metrics={"other": 1.0})  # metrics are not identity: the stored version wins
    assert again == first
    assert version_dirs(tmp_path) == [first.id]
    # non-contiguous, big-endian input with the same values is the same content
    w = weights(1)
    w["item.emb.weight"] = np.asfortranarray(w["item.emb.weight"]).astype(">f4")
    assert reg.add(w, spec=SPEC, parent=None, round=1, contributors=["us", "eu"], epsilon={"eu": 0.5, "us": 0.4},
                   strategy="fedavg", config_hash="cfg123").id == first.id


def test_different_content_different_id(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    base = add(reg, seed=1)
    tweaked = weights(1)
    tweaked["item.bias.weight"][0, 0] += 1e-6
    ids = {base.id,
           reg.add(tweaked, spec=SPEC, parent=None, round=1).id,
           add(reg, seed=1, rnd=2).id,
           add(reg, seed=1, strategy="fedprox").id,
           add(reg, seed=1, epsilon={"eu": 0.5, "us": 0.41}).id,
           add(reg, seed=1, contributors=["eu"]).id,
           add(reg, seed=1, parent=base.id).id}
    assert len(ids) == 7 and len(version_dirs(tmp_path)) == 7


def test_refuses_local_arrays_and_unknown_parent(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    leaky = {**weights(1), "user.emb.weight": np.zeros((3, 4), np.float32)}
    with pytest.raises(ValueError, match=r"user\.emb\.weight"):
        reg.add(leaky, spec=SPEC, parent=None, round=1)
    with pytest.raises(ConfigError, match="not in the registry"):
        add(reg, seed=1, parent="ab" * 32)
    with pytest.raises(ValueError, match="full version id"):
        add(reg, seed=1, parent="abc")
    with pytest.raises(ValueError, match="epsilon"):
        add(reg, seed=1, epsilon={"eu": float("inf")})
    assert version_dirs(tmp_path) == []


def test_lineage_reaches_every_ancestor_in_order(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v0, v1, v2, v3 = chain(reg, 4)
    side = add(reg, seed=9, parent=v1.id, rnd=2)  # a branch does not enter v3's lineage
    assert [v.id for v in reg.lineage(v3.short_id)] == [v3.id, v2.id, v1.id, v0.id]
    assert [v.id for v in reg.lineage(side.id)] == [side.id, v1.id, v0.id]
    assert reg.lineage(v0.id) == [v0]
    assert [v.id for v in reg.list()] == [v0.id, v1.id, v2.id, side.id, v3.id]


def test_failed_publish_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path)
    earlier = chain(reg, 2)

    def broken_rename(src: object, dst: object) -> None:
        assert {p.name for p in Path(str(src)).iterdir()} == {"weights.safetensors", "manifest.json"}
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk full"):
        add(reg, seed=5, parent=earlier[-1].id, rnd=2)
    monkeypatch.undo()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert ModelRegistry(tmp_path).list() == earlier


CRASHING_WRITER = """
import os, sys
import numpy as np
from fedrec.versions import ModelRegistry
from fedrec.models.base import ModelSpec

def power_cut(src, dst):  # everything is written and fsynced; the process dies before publishing
    os._exit(3)

reg = ModelRegistry(sys.argv[1])
os.rename = power_cut
reg.add({"item.emb.weight": np.ones((5, 4), np.float32)}, spec=ModelSpec(), parent=sys.argv[2], round=7)
"""


def test_registry_reopens_after_a_crash_mid_write(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    earlier = chain(reg, 2)
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(tmp_path), earlier[-1].id],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    (stray,) = (tmp_path / "tmp").iterdir()  # the dead writer's fully written, unpublished version
    assert {p.name for p in stray.iterdir()} == {"weights.safetensors", "manifest.json"}
    assert reg.list() == earlier  # invisible to readers even before cleanup
    # a second dead writer that got less far: half a weights file, no manifest
    half = tmp_path / "tmp" / "half-written"
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"\x10\x00\x00")
    reopened = ModelRegistry(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert reopened.list() == earlier
    assert version_dirs(tmp_path) == sorted(v.id for v in earlier)
    assert add(reopened, seed=7, parent=earlier[-1].id, rnd=2).parent == earlier[-1].id


def test_open_leaves_a_live_writers_tmp_alone(tmp_path: Path) -> None:
    ModelRegistry(tmp_path)
    in_progress = tmp_path / "tmp" / "someone-writing"
    in_progress.mkdir()
    with open(tmp_path / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another writer is mid-add
        ModelRegistry(tmp_path)
        assert in_progress.exists()
    ModelRegistry(tmp_path)  # that writer died without finishing
    assert not in_progress.exists()


def test_hand_made_version_dir_is_reported_corrupt(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = add(reg, seed=1)
    (tmp_path / "versions" / v.id / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"missing manifest\.json"):
        reg.list()
    (tmp_path / "versions" / v.id).rename(tmp_path / "versions" / "my-model")
    with pytest.raises(DataError, match="unexpected entry"):
        reg.list()


def test_tampering_is_detected(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = add(reg, seed=1)
    path = tmp_path / "versions" / v.id / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match its content hash"):
        reg.load(v.short_id)
    path.write_bytes(bytes(data[:-7]))  # truncated
    with pytest.raises(DataError, match="unreadable"):
        reg.load(v.short_id)
    manifest = tmp_path / "versions" / v.id / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["epsilon"]["eu"] = 0.01  # rewriting history
    manifest.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="does not match the version id"):
        reg.get(v.id)


def test_unknown_and_ambiguous_prefixes(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    versions = [add(reg, seed=s) for s in range(20)]  # 20 ids over 16 first digits: two must share one
    digits = [v.id[0] for v in versions]
    first = max(set(digits), key=digits.count)
    sharing = sorted(v.id for v in versions if v.id[0] == first)
    with pytest.raises(ConfigError, match=rf"ambiguous: {len(sharing)} versions match \({sharing[0][:16]}"):
        reg.get(first)
    unused = next(p for p in (f"{i:02x}" for i in range(256)) if not any(v.id.startswith(p) for v in versions))
    with pytest.raises(ConfigError, match="no model version"):
        reg.get(unused)
    for bad in ("", "../etc", "xyz"):
        with pytest.raises(ConfigError, match="not a model version id"):
            reg.get(bad)


def test_diff_reports_changed_and_unchanged_tensors(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    a = add(reg, seed=1)
    w = weights(1)
    w["item.bias.weight"] = w["item.bias.weight"] + np.float32(0.5)
    w["extra"] = np.zeros(3, np.float32)
    w["steps"] = np.zeros((2,), np.int64)
    b = reg.add(w, spec=SPEC, parent=a.id, round=2, contributors=["eu"], strategy="fedavg", config_hash="cfg123")
    d = reg.diff(a.short_id, b.short_id)
    assert (d["a"], d["b"]) == (a.id, b.id)
    t = d["tensors"]
    assert t["item.emb.weight"] == {"status": "unchanged", "shape": [5, 4], "l2": 0.0, "relative": 0.0}
    bias = t["item.bias.weight"]
    assert bias["status"] == "changed" and bias["l2"] == pytest.approx(0.5 * np.sqrt(5))
    assert bias["relative"] == pytest.approx(bias["l2"] / np.linalg.norm(weights(1)["item.bias.weight"]))
    assert t["steps"] == {"status": "shape_mismatch", "shape_a": [], "shape_b": [2]}
    assert t["extra"] == {"status": "only_in_b", "shape_b": [3]}
    assert set(d["fields"]) >= {"parent", "round", "contributors", "epsilon", "weights_sha256", "metrics"}
    assert "strategy" not in d["fields"] and d["fields"]["round"] == {"a": 1, "b": 2}


def test_export_loads_with_model_io(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    v = add(reg, seed=3)
    out = reg.export(v.short_id, tmp_path)
    assert out == tmp_path / f"{v.short_id}.safetensors"
    arrays, spec, meta = load_global_model(out)
    assert spec == SPEC and meta["id"] == v.id and meta["epsilon"] == v.epsilon
    assert all(np.array_equal(arrays[k], a) for k, a in weights(3).items()) and arrays.keys() == weights(3).keys()
    with pytest.raises(ConfigError, match="already exists"):
        reg.export(v.id, out)
    assert reg.export(v.id, out, overwrite=True) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["reg", out.name])  # no temp file left


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = models_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    root = tmp_path / "reg"
    v0, v1 = chain(ModelRegistry(root), 2)
    code, out, err = run_cli(capsys, "--root", str(root), "list")
    assert code == 0 and v0.short_id in out and v1.short_id in out and err == ""
    code, out, _ = run_cli(capsys, "show", v1.short_id[:8], "--root", str(root))
    assert code == 0 and "item.emb.weight" in out and "weights verified" in out and v0.short_id in out
    code, out, _ = run_cli(capsys, "--root", str(root), "diff", v0.short_id, v1.short_id)
    assert code == 0 and "item.emb.weight" in out and "changed" in out
    monkeypatch.setenv("FEDREC_REGISTRY", str(root))
    code, out, _ = run_cli(capsys, "export", v1.short_id, str(tmp_path / "m.safetensors"))
    assert code == 0 and load_global_model(tmp_path / "m.safetensors")[2]["id"] == v1.id


@pytest.mark.parametrize("argv", [["show", "0123abcd"], ["show", "not-hex"], ["diff", "abc"], ["frobnicate"],
                                  ["--root", "/nonexistent/registry", "list"]])
def test_cli_user_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        argv: list[str]) -> None:
    root = tmp_path / "reg"
    chain(ModelRegistry(root), 1)
    code, out, err = run_cli(capsys, "--root", str(root), *argv)
    assert code == 2 and out == ""
    assert err.startswith("fedrec models: error: ") and err.count("\n") == 1, err


def run_registry(base: Path, run: str, seed: int) -> ModelVersion:
    """A fake finished run: a registry at `base/run/registry` holding one version."""
    return add(ModelRegistry(base / run / "registry"), seed=seed)


def test_cli_without_root_uses_the_newest_runs_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: three runs; the newest by its DATE/TIME directories is written first, so not the last written
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FEDREC_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    newest = run_registry(tmp_path, "outputs/2026-03-02/09-00-00", seed=2)
    older = run_registry(tmp_path, "outputs/2026-03-01/23-59-59", seed=1)
    sweep = run_registry(tmp_path, "multirun/2026-02-28/10-00-00/0_seed=1", seed=3)
    (tmp_path / "outputs/2026-03-03/08-00-00").mkdir(parents=True)  # a run that failed before its registry

    # Act
    code, out, err = run_cli(capsys, "list")

    # Assert: the newest run's versions only, and stderr names the registry it picked
    assert code == 0, err
    assert newest.short_id in out and older.short_id not in out and sweep.short_id not in out
    assert "outputs/2026-03-02/09-00-00/registry" in err and "newest of 3" in err and "--root" in err
    assert err.count("\n") == 1
    code, out, _ = run_cli(capsys, "show", newest.short_id[:8])
    assert code == 0 and "weights verified" in out

    # Act + Assert: a newer sweep wins over the runs
    later_sweep = run_registry(tmp_path, "multirun/2026-03-02/10-30-00/1_seed=2", seed=4)
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and later_sweep.short_id in out and "multirun/2026-03-02/10-30-00/1_seed=2/registry" in err

    # Act + Assert: $FEDREC_REGISTRY, then --root, take precedence, silently
    monkeypatch.setenv("FEDREC_REGISTRY", "outputs/2026-03-01/23-59-59/registry")
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and older.short_id in out and newest.short_id not in out and err == ""
    code, out, err = run_cli(capsys, "--root", "multirun/2026-02-28/10-00-00/0_seed=1/registry", "list")
    assert code == 0 and sweep.short_id in out and older.short_id not in out and err == ""


def test_cli_without_root_prefers_an_existing_fedrec_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the former default directory next to a run
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FEDREC_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    shared = add(ModelRegistry(tmp_path / "fedrec-registry"), seed=5)
    run = run_registry(tmp_path, "outputs/2026-03-02/09-00-00", seed=6)

    # Act
    code, out, err = run_cli(capsys, "list")

    # Assert
    assert code == 0 and shared.short_id in out and run.short_id not in out
    assert "fedrec-registry" in err


def test_cli_without_any_registry_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: an empty working directory but for a run with no registry
    monkeypatch.delenv("FEDREC_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/2026-03-02/09-00-00").mkdir(parents=True)

    # Act
    code, out, err = run_cli(capsys, "list")

    # Assert: one line naming the directory, the places searched and the fix
    assert code == 2 and out == ""
    assert err.startswith("fedrec models: error: no model registry found") and err.count("\n") == 1, err
    for fragment in (str(tmp_path.resolve()), "./fedrec-registry", "./outputs/*/*/registry",
                     "./multirun/*/*/*/registry", "--root", "FEDREC_REGISTRY"):
        assert fragment in err, (fragment, err)
