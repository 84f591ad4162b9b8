"""A real, single-node Slurm on this machine, for the tests and the Slurm-vs-queue measurement.

    with SingleNodeSlurm(folder, cpus=3, memory_mb=6000) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env)

It writes a minimal ``slurm.conf`` (this machine as the only node and the controller, on free ports, every file
under ``folder``), starts ``munged`` with a key of its own, then ``slurmctld`` and ``slurmd`` (Debian's
``slurm-wlm`` and ``munge``), waits until the node is idle, and on leaving cancels every job and stops the three
daemons. Clients find it through ``SLURM_CONF`` (``env``, or :meth:`activate` for this process).

The node may claim more CPUs and memory than the machine has (``SlurmdParameters=config_overrides``), so that
three small tasks can run side by side on two cores. Processes are tracked by their parent chain
(``proctrack/linuxproc``): no cgroups needed, so it runs in a container too.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this machine lacks (daemons are looked for in the sbin folders too)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=path) is None]


def _which(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install Debian's slurm-wlm and munge "
                                "(apt-get install slurm-wlm munge)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SingleNodeSlurm:
    """A single-node Slurm cluster whose every file lives under ``folder``; a context manager."""

    def __init__(self, folder: str | Path, cpus: int = 3, memory_mb: int = 6000, start_timeout: float = 60.0):
        self.folder = Path(folder).resolve()
        self.cpus, self.memory_mb, self.start_timeout = cpus, memory_mb, start_timeout
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._saved_conf: str | None = None

    # ------------------------------------------------------------------------------------------
    def __enter__(self) -> "SingleNodeSlurm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def activate(self) -> None:
        """Point this process's Slurm clients at this cluster (until :meth:`stop`)."""
        self._saved_conf = os.environ.get("SLURM_CONF", "")
        os.environ["SLURM_CONF"] = str(self.conf)

    def client(self, *args: str, check: bool = True) -> str:
        """Run a Slurm client (``squeue``, ``scancel``, ...) against this cluster; its stdout."""
        result = subprocess.run([_which(args[0]), *args[1:]], env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # ------------------------------------------------------------------------------------------
    def start(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        socket_path = self.folder / "munge" / "munge.socket"
        if len(str(socket_path)) > 100:
            raise ValueError(f"{socket_path}: too long for a unix socket; use a shorter folder")
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o600)
        # --force: the folder may sit under a private (0700) temp folder, which munged otherwise refuses
        self._daemon("munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
                     f"--pid-file={self.folder / 'munged.pid'}", f"--log-file={self.folder / 'munged.log'}",
                     f"--seed-file={self.folder / 'munge' / 'munged.seed'}")
        self.conf.write_text(self._slurm_conf(socket_path))
        self._daemon("slurmctld", "-f", str(self.conf))
        self._daemon("slurmd", "-f", str(self.conf), "-N", self.node)
        self._wait_idle()

    def _slurm_conf(self, munge_socket: Path) -> str:
        f = self.folder
        return "\n".join([
            "ClusterName=single",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root" if os.geteuid() == 0 else f"SlurmUser={os.environ.get('USER', 'root')}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "SchedulerType=sched/backfill",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MpiDefault=none",
            "KillWait=5",
            "SchedulerParameters=sched_interval=1",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _daemon(self, name: str, *args: str) -> None:
        result = subprocess.run([_which(name), *args], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{name} did not start: {result.stderr.strip()}\n{self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        log = self.folder / f"{name}.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else f"(no {log.name})"

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%t"], env=self.env, capture_output=True,
                                    text=True)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Slurm node did not become idle in {self.start_timeout:.0f} s (state {state!r})\n"
                           f"{self._log_tail('slurmctld')}\n{self._log_tail('slurmd')}")

    # ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (by their pid files)."""
        if self.conf.exists():
            subprocess.run([_which("scancel"), "--full", "--user", str(os.geteuid())], env=self.env,
                           capture_output=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                result = subprocess.run([_which("squeue"), "-h"], env=self.env, capture_output=True, text=True)
                if result.returncode != 0 or not result.stdout.strip():
                    break
                time.sleep(0.5)
            subprocess.run([_which("scontrol"), "shutdown"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            self._terminate(self.folder / f"{name}.pid", name)
        if self._saved_conf is not None:
            if self._saved_conf:
                os.environ["SLURM_CONF"] = self._saved_conf
            else:
                os.environ.pop("SLURM_CONF", None)
            self._saved_conf = None

    @staticmethod
    def _terminate(pid_file: Path, name: str, timeout: float = 10.0) -> None:
        """Stop the daemon of ``pid_file`` if that process is still ``name`` (a pid may have been reused)."""
        try:
            pid = int(pid_file.read_text().split()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                return
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + timeout
        sent = False
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0 if sent else signal.SIGTERM)
            except ProcessLookupError:
                return
            sent = True
            time.sleep(0.2)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
