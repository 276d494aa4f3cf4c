"""Runs pcv-batch --engine ray against a Ray cluster this script starts, inside a network namespace
of its own (tests/test_cluster.py starts it with `unshare -n`; only loopback exists there).

    python tests/ray_harness.py SCENARIO OUT_DIR INPUT [PCV-BATCH OPTIONS...]

SCENARIO: "cluster" (a head and a second node as separate processes, one job across both),
"remove-node" (the second node removed once a part is committed), "kill-actor" (an actor process
killed with SIGKILL once a part is committed), "kill-driver" (pcv-batch
killed with SIGKILL once a part is committed, then the same command with --resume). Prints one
JSON object: each pcv-batch run's exit status and stderr, and the node ids of the cluster.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

WAIT_S = 240


def _pcv(address: str, out: str, inp: str, extra: list[str]) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "pcv-batch")
    return [exe, inp, "-o", out, "--engine", "ray", "--ray-address", address, "-q", *extra]


def _wait_for_part(out: str, proc: subprocess.Popen, recorded: bool = False) -> bool:
    """Until a part is committed (recorded: and the driver has recorded it in the manifest)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if recorded:
            try:
                with open(os.path.join(out, "manifest.json")) as f:
                    if json.load(f)["parts"]:
                        return True
            except (OSError, ValueError, KeyError):
                pass
        elif glob.glob(os.path.join(out, "part-*")):
            return True
        time.sleep(0.05)
    return False


def _kill_one_actor() -> int:
    """SIGKILL one process of the pool's actors (their title starts with ray::MapWorker); how many were killed."""
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::MapWorker"):
            os.kill(pid, signal.SIGKILL)
            return 1
    return 0


def main(argv: list[str]) -> int:
    scenario, out, inp, *extra = argv
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    runs = []
    report: dict = {"scenario": scenario}
    try:
        cmd = _pcv(cluster.address, out, inp, extra)
        # PCV_HARNESS_CWD: the driver runs there (relative names resolve there, not where the nodes started)
        cwd = os.environ.get("PCV_HARNESS_CWD") or None
        out = os.path.join(cwd or "", out)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        if scenario == "remove-node":
            report["part_seen_before_removal"] = _wait_for_part(out, proc)
            report["running_at_removal"] = proc.poll() is None
            cluster.remove_node(second)
        elif scenario == "kill-actor":
            report["part_seen_before_kill"] = _wait_for_part(out, proc)
            report["killed_actors"] = _kill_one_actor()
            report["running_at_kill"] = proc.poll() is None
        elif scenario == "kill-driver":
            report["part_seen_before_kill"] = _wait_for_part(out, proc, recorded=True)
            report["running_at_kill"] = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
        runs.append({"rc": proc.returncode, "stderr": stderr, "stdout": stdout})
        if scenario == "kill-driver":
            time.sleep(1.0)  # let the cluster clean up the dead driver's actors
            done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=WAIT_S, cwd=cwd)
            runs.append({"rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout})
    finally:
        cluster.shutdown()
    report["runs"] = runs
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
