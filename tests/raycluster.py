"""A Ray cluster of this machine started with the `ray` CLI, as README "Running on a cluster" tells a user.

`ray start --head` (and `ray start --address HEAD` for each further node) in a process session of its
own; `stop()` ends every process of those sessions and nothing else. `ray stop` is not used: it
stops every Ray process of the machine by name, including Rays that other runs started.

`ray start` allows a node's raylet 30 s to register (not configurable), and the raylet waits for its
agents, Python processes that a loaded machine can take minutes to start. So the agents' and the
dashboard's time limits are raised here (environment variables Ray reads), and when `ray start`
gives up on a node that is still starting (its processes run on), the node is waited for (`ray
status`); a node that never comes is started again, each try with new ports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 600  # seconds for one `ray start` and its node to register (a few on an idle machine)
TRIES = 3
# no usage reports (also `--disable-usage-stats`); offline models; patience on a loaded machine
ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "FRAMEATLAS_PROGRESS": "off",
    "RAY_agent_register_timeout_ms": "300000",
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
}


class RayStartFailed(RuntimeError):
    """`ray start` failed every time it was tried; the message holds its last output."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent_ports() -> list[str]:
    """Free ports for a node's agents: fixed defaults would collide with another node or Ray of this
    machine, and with ports given the raylet need not wait for its agents to report theirs (which it
    allows only seconds, too few for a loaded machine to start a Python agent)."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]  # fmt: skip


class RayCluster:
    """Nodes of one Ray cluster on the loopback address, each started by `ray start`."""

    def __init__(self) -> None:
        # short: Ray's socket paths under it must stay within 107 characters
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fa-ray-", dir="/tmp"))
        self.address: str | None = None
        self.sessions: list[int] = []  # the session id (= pid) of each `ray start` process
        self.outputs: list[str] = []
        # Token authentication on every node, as the README says (RAY_AUTH_MODE=token, the token in
        # ~/.ray/auth_token): a head started where that file exists turns it on by itself, and then a
        # node started without RAY_AUTH_MODE=token cannot join
        self.environment = {**os.environ, **ENVIRONMENT, "RAY_AUTH_MODE": "token"}
        subprocess.run(
            [RAY, "get-auth-token", "--generate"], env=self.environment, check=True, capture_output=True, timeout=START_TIMEOUT
        )  # fmt: skip  (makes ~/.ray/auth_token only if there is none)

    def start_head(self, num_cpus: int) -> str:
        """`ray start --head`; returns the cluster's address (host:port, as it prints for other nodes)."""

        def head_args() -> tuple[list[str], str]:
            port = free_port()
            # every port Ray would otherwise take at a fixed default is chosen free, so that this cluster
            # does not collide with another Ray on the same machine
            return ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                    "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(self.temp_dir),
                    "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                    *agent_ports()], f"127.0.0.1:{port}"  # fmt: skip

        output, self.address = self._start(head_args, nodes=1)
        port = self.address.rsplit(":", 1)[1]
        if "timed out during startup" not in output and not re.search(rf"ray start --address='[^']+:{port}'", output):
            raise RayStartFailed(f"`ray start --head` printed no address for other nodes:\n{output}")
        return self.address

    def add_node(self, num_cpus: int) -> str:
        """`ray start --address HEAD` with its own CPUs: another node of the cluster (on this machine)."""
        assert self.address, "start the head first"

        def node_args() -> tuple[list[str], str]:
            return ["--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                    "--temp-dir", str(self.temp_dir), *agent_ports()], self.address  # fmt: skip

        return self._start(node_args, nodes=self.nodes(self.address) + 1)[0]

    def nodes(self, address: str | None = None) -> int:
        """How many nodes are alive in the cluster, as `ray status` tells."""
        status = subprocess.run([RAY, "status", "--address", address or self.address], env=self.environment, capture_output=True,
                                text=True, timeout=START_TIMEOUT)  # fmt: skip
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in status.stdout else ""
        return len(re.findall(r"^\s*1 node_[0-9a-f]+", active, flags=re.M))

    def _start(self, arguments, nodes: int) -> tuple[str, str]:
        """(output, address): `ray start` with `arguments()` (a new try, new ports), until `nodes` are alive."""
        for attempt in range(1, TRIES + 1):
            started = time.monotonic()
            args, address = arguments()
            process = subprocess.Popen([RAY, "start", *args], env=self.environment, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
            self.sessions.append(process.pid)
            try:
                output, _ = process.communicate(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                output = process.communicate()[0] + f"\n(no answer in {START_TIMEOUT} s)"
            self.outputs.append(output)
            if process.returncode == 0:
                # `ray start` returns once the node's raylet is up; `ray status` lists it a few seconds
                # later (the cluster's view refreshes), so wait until it does
                while self.nodes(address) < nodes and time.monotonic() - started < START_TIMEOUT:
                    time.sleep(1)
                return output, address
            if "timed out during startup" in output:  # Ray's 30 s: the node may still come, if its raylet runs
                while time.monotonic() - started < START_TIMEOUT and _raylet_runs(process.pid):
                    if self.nodes(address) >= nodes:
                        return output, address
                    time.sleep(5)
            _end_session(process.pid)  # what this try left running
            if attempt == TRIES:
                raise RayStartFailed(f"`ray start` failed {TRIES} times; the last time:\n{output[-4000:]}")
        raise AssertionError("unreachable")

    def processes(self) -> list[psutil.Process]:
        """Every process still running in this cluster's sessions."""
        return [p for sid in self.sessions for p in _session_processes(sid)]

    def stop(self) -> None:
        """Ends the processes of this cluster's sessions (SIGTERM, then SIGKILL after 5 s, as `ray stop --force` would)."""
        for sid in reversed(self.sessions):
            _end_session(sid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return found


def _raylet_runs(sid: int) -> bool:
    """Whether the node `ray start` started in session `sid` still has its raylet (it ends itself when
    its agents miss their start-up time)."""
    for process in _session_processes(sid):
        try:
            if process.name() == "raylet":
                return True
        except psutil.Error:
            pass
    return False


def _end_session(sid: int, grace: float = 5) -> None:
    processes = _session_processes(sid)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive + _session_processes(sid):  # also what was forked meanwhile
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + 10
    while _session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
