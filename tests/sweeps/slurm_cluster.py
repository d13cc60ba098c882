"""A single-node SLURM cluster on this machine for the tests: munged, slurmctld and slurmd on localhost, with their
own key, socket, ports and state directory (nothing of the machine's own configuration is used or changed).

Needs root and Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them). Without them the SLURM
tests are skipped, unless ``MEMDYN_REQUIRE_SLURM=1`` (set by CI), which makes them fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
PARTITION = "debug"


def unavailable() -> str | None:
    """Why a SLURM cluster cannot be started here (None when it can)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: str):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {"SLURM_CONF": self.conf}
        self.pid_files = []

    def start(self) -> None:
        r = self.root
        for name in ("state", "spool", "log", "munge"):
            os.makedirs(os.path.join(r, name), exist_ok=True)
        os.chmod(os.path.join(r, "munge"), 0o700)
        key = os.path.join(r, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        sock = os.path.join(r, "munge", "munge.socket")
        munge_pid = os.path.join(r, "munge", "munged.pid")
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={munge_pid}",
                f"--log-file={os.path.join(r, 'log', 'munged.log')}",
                f"--seed-file={os.path.join(r, 'munge', 'munged.seed')}",
            ],
            check=True,
            capture_output=True,
        )
        self.pid_files.append(munge_pid)
        conf = {
            "ClusterName": "memdyntest",
            "SlurmctldHost": "localhost",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={sock}",
            "CredType": "cred/munge",
            "StateSaveLocation": f"{r}/state",
            "SlurmdSpoolDir": f"{r}/spool",
            "SlurmctldPidFile": f"{r}/slurmctld.pid",
            "SlurmdPidFile": f"{r}/slurmd.pid",
            "SlurmctldLogFile": f"{r}/log/slurmctld.log",
            "SlurmdLogFile": f"{r}/log/slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SwitchType": "switch/none",
            "MpiDefault": "none",
            "SchedulerType": "sched/builtin",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "JobCompType": "jobcomp/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "ReturnToService": 2,
            "KillWait": 10,
        }
        lines = [f"{k}={v}" for k, v in conf.items()]
        lines += [
            f"NodeName=localhost CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ, **self.env)
        subprocess.run(["slurmctld"], env=env, check=True, capture_output=True)
        self.pid_files.append(f"{r}/slurmctld.pid")
        subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True, capture_output=True)
        self.pid_files.append(f"{r}/slurmd.pid")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            if out.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test SLURM node did not come up (sinfo: {out!r}); logs in {r}/log")

    def stop(self) -> None:
        for path in reversed(self.pid_files):
            try:
                with open(path) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; ``SLURM_CONF`` points at it while the module's tests run."""
    why = unavailable()
    if why:
        if os.environ.get("MEMDYN_REQUIRE_SLURM"):
            pytest.fail(f"MEMDYN_REQUIRE_SLURM is set but SLURM cannot run here: {why}")
        pytest.skip(why)
    cluster = Cluster(str(tmp_path_factory.mktemp("slurm")))
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = cluster.conf
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=dict(os.environ, **cluster.env), capture_output=True)
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
