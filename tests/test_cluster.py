"""pcv-batch --engine ray: shards read back exactly as the whole file, and jobs on real Ray clusters
(a local instance, and a head plus a second node as separate processes) whose parts hold every good
record once with the local engine's answers, also when the second node is removed mid-job or the
driver is killed and the job resumed.

The Ray jobs run in a network namespace of their own where only loopback exists (`unshare -n`, as
root): every packet stays on this machine. Where that is not possible they skip, with the reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pcv.runtime.readers import ReaderConfig, read_records
from pcv.runtime.shards import GRAIN, plan, read_shard, scan, shard_lines

BIN = Path(sys.executable).parent
HARNESS = Path(__file__).with_name("ray_harness.py")
RAY_TIMEOUT = 420


def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "a network namespace of its own needs root (unshare -n)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode:
        return f"unshare -n failed here: {probe.stderr.strip()[:200]}"
    return None


def _ray_problem() -> str | None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return 'Ray Data is not installed (pip install "pcv[ray]")'
    return None


needs_ray = pytest.mark.skipif(_ray_problem() is not None, reason=str(_ray_problem()))
needs_netns = pytest.mark.skipif(_ray_problem() is not None or _netns_problem() is not None,
                                 reason=str(_ray_problem() or _netns_problem()))


def in_netns(cmd: list[str], timeout: int = RAY_TIMEOUT, **env_extra: str) -> subprocess.CompletedProcess:
    """cmd in a fresh network namespace with only loopback up."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env_extra}
    return subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd],
                          capture_output=True, text=True, timeout=timeout, env=env)


# -- shards: the planner against the reader ------------------------------------------------------------------


def _messy_jsonl(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        k = rng.random()
        if k < 0.05:
            lines.append("not json")
        elif k < 0.08:
            lines.append("")  # blank: not a record
        elif k < 0.10:
            lines.append(json.dumps({"id": f"r{i}", "text": 7}))
        elif k < 0.12:
            lines.append(json.dumps({"text": f"no id {i} é"}))  # the line number is the id
        else:
            lines.append(json.dumps({"id": f"r{i}", "text": "x" * rng.randint(1, 90) + " ü"}))
    path.write_bytes(("\ufeff" + "\r\n".join(lines[:10]) + "\r\n" + "\n".join(lines[10:])).encode())  # BOM, CRLF, no last break


@pytest.mark.parametrize("n,per_shard", [(1, 256), (255, 256), (256, 256), (257, 256), (3001, 512), (3001, 256 * 3)])
def test_shards_read_back_as_the_whole_file(tmp_path, n, per_shard):
    src = tmp_path / "in.jsonl"
    _messy_jsonl(src, n, seed=n)
    cfg = ReaderConfig()
    whole = list(read_records(str(src), cfg))
    s = scan(str(src))
    shards = plan([s], per_shard)
    assert len(shards) == max(1, -(-n // per_shard)) or n % per_shard == 0
    parts = [rec for sh in shards for rec in read_shard(sh, cfg)]
    assert parts == whole
    assert s.size == src.stat().st_size and s.splittable


def test_csv_gz_and_lone_cr_txt_are_one_shard_each(tmp_path):
    import gzip

    (tmp_path / "a.csv").write_text("id,text\n1,\"two\nlines\"\n2,b\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in range(600)))
    (tmp_path / "c.txt").write_bytes(b"one\rtwo\n" * 400)
    scans = [scan(str(tmp_path / n)) for n in ("a.csv", "b.jsonl.gz", "c.txt")]
    shards = plan(scans, GRAIN)
    assert [sh.kind for sh in shards] == ["file"] * 3
    for sh in shards:
        assert list(read_shard(sh, ReaderConfig())) == list(read_records(sh.input, ReaderConfig()))


def test_a_utf16_file_is_one_shard_and_one_error(tmp_path):
    src = tmp_path / "u.jsonl"
    src.write_bytes("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in range(2000)).encode("utf-16"))
    (shard,) = plan([scan(str(src))], GRAIN)
    recs = list(read_shard(shard, ReaderConfig()))
    assert len(recs) == 1 and "UTF-16" in recs[0].error
    assert recs == list(read_records(str(src), ReaderConfig()))


def test_parquet_shards_follow_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [None if i % 17 == 3 else f"text {i}" for i in range(1000)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(1000)], "text": texts}), tmp_path / "in.parquet",
                   row_group_size=100)
    s = scan(str(tmp_path / "in.parquet"))
    assert s.lines == 1000 and s.offsets == [100] * 10
    shards = plan([s], 256)
    assert [(sh.start, sh.end, sh.first_line) for sh in shards] == [(0, 3, 1), (3, 6, 301), (6, 9, 601), (9, 10, 901)]
    whole = list(read_records(str(tmp_path / "in.parquet"), ReaderConfig()))
    assert [r for sh in shards for r in read_shard(sh, ReaderConfig())] == whole
    assert whole[3].error == "field 'text' is null" and whole[3].line == 4 and whole[3].id == "p3"


def test_shard_size_follows_the_actors():
    class S:
        lines = 100_000

    assert shard_lines([S()], 2) == 12_544  # 100000 / 8 rounded up to a multiple of 256
    assert shard_lines([S()], 1000) == 512 and shard_lines([S()], 1) == 25_088
    assert shard_lines([S()], 2, asked=300) == 512


# -- jobs on Ray -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_input(tmp_path_factory, review_texts):
    """1,200 short reviews with bad lines mixed in, and the local engine's answers on them."""
    d = tmp_path_factory.mktemp("rayjob")
    lines = []
    for i in range(1200):
        if i % 101 == 7:
            lines.append("{broken json")
        elif i % 151 == 11:
            lines.append(json.dumps({"id": f"bad{i}", "text": None}))
        else:
            lines.append(json.dumps({"id": f"r{i}", "text": review_texts[i % len(review_texts)][:160], "label":
                                     "pos" if i % 2 else "neg"}))
    src = d / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    ref = subprocess.run([BIN / "pcv-batch", src, "-o", d / "local.jsonl", "-q"], capture_output=True, text=True)
    assert ref.returncode == 1, ref.stderr
    preds = {r["id"]: r for r in map(json.loads, (d / "local.jsonl").read_text().splitlines())}
    errors = {r["line"] for r in map(json.loads, (d / "local.jsonl.errors.jsonl").read_text().splitlines())}
    return src, preds, errors


def check_parts(out: Path, src: Path | str, preds: dict, errors: set, parquet: bool = False) -> dict:
    """Every good record once with the local engine's label and probabilities, every bad line once."""
    assert (out / "_SUCCESS").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".tmp-")], names
    got: dict[str, list] = {}
    bad: list[int] = []
    for path in out.iterdir():
        if "error" in path.name and path.suffix == ".jsonl":
            bad += [r["line"] for r in map(json.loads, path.read_text().splitlines())]
        elif path.name.startswith("part-"):
            if parquet:
                import pyarrow.parquet as pq

                rows = pq.read_table(path).to_pylist()
                rows = [{**r, "probs": {k[5:]: v for k, v in r.items() if k.startswith("prob_")}} for r in rows]
            else:
                rows = list(map(json.loads, path.read_text().splitlines()))
            for r in rows:
                assert r["input"] == str(src) and isinstance(r["line"], int)
                got.setdefault(r["id"], []).append(r)
    assert sorted(bad) == sorted(errors)
    assert set(got) == set(preds)
    for rid, rows in got.items():
        assert len(rows) == 1, (rid, rows)
        r, want = rows[0], preds[rid]
        assert r["label"] == want["label"]
        assert max(abs(r["probs"][k] - want["probs"][k]) for k in want["probs"]) <= 1e-5
    totals = manifest["totals"]
    assert (totals["classified"], totals["failed"]) == (len(preds), len(errors))
    return manifest


@needs_netns
def test_local_ray_instance_matches_the_local_engine(tmp_path, job_input):
    src, preds, errors = job_input
    out = tmp_path / "out"
    metrics = tmp_path / "m.json"
    r = in_netns([str(BIN / "pcv-batch"), str(src), "-o", str(out), "--engine", "ray", "--actors", "2", "-q",
                  "--shard-records", "256", "--label-field", "label", "--metrics", str(metrics)])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "provider cpu" in r.stderr and "accuracy" in r.stderr
    manifest = check_parts(out, src, preds, errors)
    assert len(manifest["shards"]) == 5
    assert json.loads(metrics.read_text())["per_class"].keys() == {"neg", "pos"}
    again = subprocess.run([BIN / "pcv-batch", src, "-o", out, "--engine", "ray", "--resume", "-q",
                            "--shard-records", "256", "--label-field", "label"], capture_output=True, text=True)
    assert again.returncode == 1 and "already complete" in again.stderr, again.stderr  # checked without starting Ray


def _harness(scenario: str, out: Path | str, src: Path | str, *extra: str, **env: str) -> dict:
    r = in_netns([sys.executable, str(HARNESS), scenario, str(out), str(src), *extra], **env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_netns
def test_two_node_cluster_runs_one_job_across_both(tmp_path, job_input):
    src, preds, errors = job_input
    rel = os.path.relpath(src, tmp_path)  # relative names, from a driver directory the nodes did not start in
    report = _harness("cluster", "out", rel, "--actors", "2", "--shard-records", "256", PCV_HARNESS_CWD=str(tmp_path))
    (run,) = report["runs"]
    assert run["rc"] == 1, run["stderr"]
    manifest = check_parts(tmp_path / "out", rel, preds, errors)
    assert len({p["node"] for p in manifest["parts"].values()}) == 2, manifest["parts"]


@needs_netns
def test_removing_a_node_mid_job_loses_and_doubles_nothing(tmp_path, job_input):
    src, preds, errors = job_input
    report = _harness("remove-node", tmp_path / "out", src, "--actors", "2", "--shard-records", "256")
    assert report["part_seen_before_removal"] and report["running_at_removal"], report
    (run,) = report["runs"]
    assert run["rc"] == 1, run["stderr"]
    assert "Traceback" not in run["stderr"]
    check_parts(tmp_path / "out", src, preds, errors)


@needs_netns
def test_a_killed_actor_loses_and_doubles_nothing(tmp_path, job_input):
    src, preds, errors = job_input
    report = _harness("kill-actor", tmp_path / "out", src, "--actors", "2", "--shard-records", "256")
    assert report["part_seen_before_kill"] and report["killed_actors"] == 1 and report["running_at_kill"], report
    (run,) = report["runs"]
    assert run["rc"] == 1, run["stderr"]
    check_parts(tmp_path / "out", src, preds, errors)


@needs_netns
def test_killed_driver_resumes_from_the_committed_shards(tmp_path, job_input):
    src, preds, errors = job_input
    report = _harness("kill-driver", tmp_path / "out", src, "--actors", "1", "--shard-records", "256")
    assert report["part_seen_before_kill"] and report["running_at_kill"], report
    killed, resumed = report["runs"]
    assert killed["rc"] == -9
    assert resumed["rc"] == 1, resumed["stderr"]
    assert "resuming:" in resumed["stderr"], resumed["stderr"]
    check_parts(tmp_path / "out", src, preds, errors)


@needs_netns
def test_parquet_in_and_out_through_filesystem_uris(tmp_path, job_input):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, preds, errors = job_input
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.startswith('{"id": "r')]
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}), tmp_path / "in.parquet",
                   row_group_size=200)
    out = tmp_path / "out"
    uri = f"file://{tmp_path / 'in.parquet'}"  # through pyarrow.fs, as s3:// or gs:// would be
    r = in_netns([str(BIN / "pcv-batch"), uri, "-o", f"file://{out}", "--engine", "ray",
                  "--actors", "2", "-q", "--output-format", "parquet"])
    assert r.returncode == 0, r.stderr
    check_parts(out, uri, {k: v for k, v in preds.items() if k in {r["id"] for r in rows}}, set(), parquet=True)


@needs_ray
def test_a_provider_this_machine_lacks_fails_before_ray_starts(tmp_path, job_input):
    src, _, _ = job_input
    r = _pcv(src, "-o", tmp_path / "out", "--engine", "ray", "--actors", "1", "-q", "--provider", "cuda")
    assert r.returncode == 2, r.stderr
    assert "pcv-batch: error:" in r.stderr and "CUDA" in r.stderr.upper() and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # a job that committed nothing leaves no trace


@needs_netns
def test_an_actor_no_node_can_hold_is_refused_not_waited_for(tmp_path, job_input):
    src, _, _ = job_input
    r = in_netns([str(BIN / "pcv-batch"), str(src), "-o", str(tmp_path / "out"), "--engine", "ray", "-q",
                  "--cpus-per-actor", "64"], timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--cpus-per-actor 64: no node of the cluster has that many CPUs" in r.stderr
    assert not (tmp_path / "out").exists()


# -- refusals before Ray starts ----------------------------------------------------------------------------------


def _pcv(*args) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "pcv-batch", *map(str, args)], capture_output=True, text=True)


@needs_ray
@pytest.mark.parametrize("extra,says", [
    (["--errors", "e.jsonl"], "--errors does not apply to --engine ray"),
    (["--threads", "2"], "--threads does not apply"),
    (["--output-format", "csv"], "JSONL or Parquet parts"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, job_input, extra, says):
    r = _pcv(job_input[0], "-o", tmp_path / "out", "--engine", "ray", *extra)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_ray_options_need_the_ray_engine(tmp_path, job_input):
    r = _pcv(job_input[0], "-o", tmp_path / "o.jsonl", "--actors", "2")
    assert r.returncode == 2 and "--actors needs --engine ray" in r.stderr


@needs_ray
@pytest.mark.parametrize("name", ["notes.txt", ".tmp-precious", "part-00000.jsonl"])
def test_a_directory_of_other_files_is_never_written(tmp_path, job_input, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine")
    r = _pcv(job_input[0], "-o", out, "--engine", "ray")
    assert r.returncode == 2 and "not a pcv job" in r.stderr
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == "mine"


@needs_ray
def test_the_lock_holds_through_a_symlinked_output(tmp_path, job_input):
    from pcv.runtime.outputs import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "link").symlink_to(out)
    lock = OutputLock(out, "-o")
    lock.acquire()
    try:
        r = _pcv(job_input[0], "-o", tmp_path / "link", "--engine", "ray")
    finally:
        lock.release()
    assert r.returncode == 2 and "another pcv-batch" in r.stderr, r.stderr


@needs_ray
def test_resume_refuses_a_changed_input(tmp_path, job_input):
    src = tmp_path / "in.jsonl"
    shutil.copy(job_input[0], src)
    out = tmp_path / "out"
    out.mkdir()
    from pcv.runtime.cluster import MANIFEST_FORMAT, MANIFEST_VERSION

    (out / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                   "status": "running", "inputs": [], "shards": [], "parts": {}}))
    r = _pcv(src, "-o", out, "--engine", "ray")
    assert r.returncode == 2 and "add --resume" in r.stderr
    r = _pcv(src, "-o", out, "--engine", "ray", "--resume")
    assert r.returncode == 2 and "cannot resume: the input files differ" in r.stderr, r.stderr


@needs_netns
def test_pcv_bench_ray_reports_each_engine(tmp_path):
    out = tmp_path / "bench"
    r = in_netns([str(BIN / "pcv-bench"), "--ray", "1", "--data", str(Path(__file__).parent / "fixtures" / "reviews.jsonl"),
                  "--limit", "300", "--engine-repeats", "1", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "cluster.json").read_text())
    assert [run["engine"] for run in result["runs"]] == ["local", "ray x1"]
    assert all(run["records_per_s"] > 0 for run in result["runs"]) and isinstance(result["machine"]["cpu_flags"], list)
    assert "| ray x1 |" in (out / "cluster.md").read_text()
