"""A real 2-node Slurm cluster on this machine, for the launcher's tests (Debian's Slurm 22.05).

One ``munged`` (as user munge), one ``slurmctld`` and one ``slurmd`` per emulated node, each slurmd in
its own ``unshare --uts --mount`` namespace with its own host name, its own ``Port=`` and a loopback
alias as ``NodeAddr`` (127.0.0.2, 127.0.0.3). An ``/etc/hosts`` bind-mounted into each namespace maps
the node names to those addresses, as a real cluster's DNS would. State, spool and logs live in a
temp dir; every client command gets ``SLURM_CONF``. :meth:`Cluster.stop` ends every daemon by its pid.

    python tests/slurm/cluster.py up DIR     # start, print the SLURM_CONF to export, wait for Enter, stop
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = (("n1", "127.0.0.2"), ("n2", "127.0.0.3"))
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    return [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged", "unshare")
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]


@dataclass
class Cluster:
    root: Path
    cpus_per_node: int = 2
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "log", *(f"spool-{n}" for n, _ in NODES)):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self.ctld_port = free_port()
        lines = [
            "ClusterName=ci",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none",
            "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "SlurmdParameters=config_overrides",
            "MinJobAge=600", "KillWait=10", "InactiveLimit=0", "SlurmdTimeout=60", "MessageTimeout=20",
            "JobRequeue=1", "MaxArraySize=100",
        ]
        for name, addr in NODES:
            lines.append(f"NodeName={name} NodeAddr={addr} NodeHostName={name} Port={free_port()} "
                         f"CPUs={self.cpus_per_node} State=UNKNOWN")
        lines.append(f"PartitionName=ci Nodes={','.join(n for n, _ in NODES)} Default=YES MaxTime=INFINITE "
                     "State=UP OverSubscribe=NO")
        self.conf.write_text("\n".join(lines) + "\n")
        hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        (r / "hosts").write_text(hosts + "".join(f"{addr} {name}\n" for name, addr in NODES))

    def start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        os.chown(run, munge.pw_uid, munge.pw_gid)
        run.chmod(0o755)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["/usr/sbin/mungekey", "--create", "--keyfile", str(key)], check=True)
            os.chown(key, munge.pw_uid, munge.pw_gid)
            key.chmod(0o600)
        state = Path(self.munge_dir)  # socket, seed, pid and log: pytest's temp dirs are closed to user munge
        state.mkdir(mode=0o755)
        os.chown(state, munge.pw_uid, munge.pw_gid)
        self.procs["munged"] = subprocess.Popen(
            ["/usr/sbin/munged", "--foreground", f"--socket={self.munge_socket}",
             f"--pid-file={state}/munged.pid", f"--log-file={state}/munged.log", f"--seed-file={state}/seed"],
            user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], stdout=subprocess.DEVNULL, stderr=open(self.root / "log" / "munged.err", "w"), start_new_session=True)
        self._wait(lambda: Path(self.munge_socket).exists(), "munged socket", 20)

    @property
    def munge_dir(self) -> str:
        return f"/run/munge/ci-{os.getpid()}-{abs(hash(str(self.root))) % 10**8}"

    @property
    def munge_socket(self) -> str:
        return f"{self.munge_dir}/munge.socket"

    def start(self) -> "Cluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.start_munge()
        log = self.root / "log"
        self.procs["slurmctld"] = subprocess.Popen(
            ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env, start_new_session=True,
            stdout=open(log / "slurmctld.out", "w"), stderr=subprocess.STDOUT)
        for name, _ in NODES:
            # own host name and /etc/hosts in private UTS and mount namespaces
            inner = (f"hostname {name} && mount --bind {self.root}/hosts /etc/hosts && "
                     f"exec /usr/sbin/slurmd -D -N {name} -f {self.conf}")
            self.procs[f"slurmd-{name}"] = subprocess.Popen(
                ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", inner],
                env=self.env, start_new_session=True, stdout=open(log / f"slurmd-{name}.out", "w"),
                stderr=subprocess.STDOUT)
        self._wait(self._nodes_idle, "both nodes idle in sinfo", 60)
        return self

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n, _ in NODES)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                       + self.logs())
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.logs())

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def stop(self) -> None:
        """Cancel all jobs, then end every daemon by pid: TERM, then KILL after a grace period."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user=root", check=False, timeout=20)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            # the session (unshare -> slurmd -> slurmstepd -> job processes) goes with its leader
            with_session(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with_session(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for name in order:  # job processes left in a daemon's session after it exited
            if name in self.procs:
                with_session(self.procs[name].pid, signal.SIGKILL)
        shutil.rmtree(self.munge_dir, ignore_errors=True)
        self.procs.clear()


def with_session(sid: int, sig: int) -> None:
    """Send ``sig`` to every process of session ``sid`` (a daemon started with start_new_session)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            try:
                os.kill(int(entry.name), sig)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    cluster = Cluster(Path(sys.argv[2])).start()
    print(f"export SLURM_CONF={cluster.conf}")
    try:
        input("cluster up; Enter stops it\n")
    finally:
        cluster.stop()
