"""Checks of a podman network from the inside, with throwaway containers on it.

`name_resolution_problem`: before any workload starts, can a container resolve another by its network alias
(what every Service name is in this harness) and connect to it? If not, say which Debian package the
network backend lacks. `reachability`: after a wait failed, a DNS + TCP check of the endpoints a workload
needs, printed line by line.
"""

from __future__ import annotations

import json
import subprocess
import uuid

from tests.containers.podman import PODMAN_OVERHEAD_S, podman

# Network checks: a TCP connect gets this long; a failed name lookup costs at most glibc's resolver default
# (timeout 5 s x attempts 2) per target.
CONNECT_TIMEOUT_S = 5.0
RESOLVER_TIMEOUT_S = 10.0
# The pre-flight check retries this long: a new alias is registered with the network's DNS server, and the
# listening container starts, in well under a second, but not necessarily before the client looks.
NETWORK_SETTLE_S = 10.0
# Each network backend resolves container names with its own Debian package (podman 4.3 in bookworm).
DNS_PACKAGES = {
    "cni": ("golang-github-containernetworking-plugin-dnsname", "the dnsname CNI plugin"),
    "netavark": ("aardvark-dns", "aardvark-dns, netavark's DNS server"),
}

# Runs in a fresh container on the network: resolve and connect to each (host, port).
_NET_CHECK = """
import json, socket, sys
targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
servers = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
print(f"  (from a new container on the network; its nameservers: {', '.join(servers) or 'none'})")
for host, port in targets:
    try:
        found = sorted({a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except OSError as e:
        print(f"  {host}:{port}  DNS FAILED ({type(e).__name__}: {e}); TCP not tried")
        continue
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        tcp = "TCP connect ok"
    except OSError as e:
        tcp = f"TCP connect FAILED ({type(e).__name__}: {e})"
    print(f"  {host}:{port}  resolves to {', '.join(found)}; {tcp}")
"""

# The pre-flight client: resolve the alias of another container and connect to it, retrying while it settles.
_NET_PREFLIGHT = """
import json, socket, sys, time
host, port, settle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
servers = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
report = {"nameservers": servers, "stage": "dns", "error": "not tried"}
deadline = time.monotonic() + settle
while True:
    report["stage"] = "dns"
    try:
        found = sorted({a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        report.update(stage="tcp", addresses=found)
        socket.create_connection((host, port), timeout=settle).close()
        report.update(stage="ok", error="")
        break
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(report))
"""


def _on(network: str, label: str) -> list[str]:
    """`podman run` options of a helper container: on `network`, labelled for the release's teardown."""
    return ["--network", network, "--label", f"modelops-e2e={label}"]


def name_resolution_problem(network: str, label: str, image: str) -> str | None:
    """None when a container on `network` resolves another by its network alias and connects to it; else what
    failed and what to install. `image` needs python3."""
    target, alias, port = f"{label}-netcheck-target", f"{label}-netcheck", 8080
    listen = [
        "python3",
        "-c",
        f"import socket, signal; s = socket.create_server(('', {port})); signal.pause()",
    ]
    podman("run", "-d", "--name", target, *_on(network, label), "--network-alias", alias, image, *listen)
    try:
        result = podman(
            "run",
            "--rm",
            *_on(network, label),
            image,
            *["python3", "-c", _NET_PREFLIGHT, alias, str(port), str(NETWORK_SETTLE_S)],
            timeout=NETWORK_SETTLE_S + RESOLVER_TIMEOUT_S + PODMAN_OVERHEAD_S,
        )
    finally:
        podman("rm", "-f", "-t", "0", target, check=False)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["stage"] == "ok":
        return None
    if report["stage"] == "dns":
        servers = ", ".join(report["nameservers"]) or "none"
        return (
            f"containers on podman network {network} cannot resolve each other by name: a container could not "
            f"resolve the network alias {alias!r} of another ({report['error']}; its nameservers: {servers}). "
            "Every Service of the release is such an alias, so no workload could reach another (the db-migrate "
            "Job would wait out its deadline for PostgreSQL).\n" + dns_advice(network)
        )
    return (
        f"containers on podman network {network} resolve each other ({alias} -> "
        f"{', '.join(report['addresses'])}) but cannot connect: TCP to {alias}:{port} failed ({report['error']}). "
        f"Check the host's firewall rules for the podman network (podman network inspect {network}; iptables -S)."
    )


def dns_advice(network: str) -> str:
    """Which Debian package gives this machine's podman network backend its name resolution, and whether it is
    installed."""
    backend = podman("info", "--format", "{{.Host.NetworkBackend}}", check=False).stdout.strip()
    dnsname = DNS_PACKAGES["cni"][0]
    if backend not in DNS_PACKAGES:
        return (
            f"podman's network backend here is {backend or 'unknown'!r}; install its DNS component "
            f"(Debian: {dnsname} for CNI, {DNS_PACKAGES['netavark'][0]} for netavark)."
        )
    package, what = DNS_PACKAGES[backend]
    enabled = podman("network", "inspect", "--format", "{{.DNSEnabled}}", network, check=False).stdout.strip()
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    installed = status.returncode == 0 and status.stdout.endswith(" installed")
    advice = f"podman's network backend here is {backend}; it resolves container names only with {what}"
    if not installed:
        fix = f"apt-get install {package}"
        if backend == "netavark":
            # with dnsname installed the harness switches to CNI (podman.network_backend)
            fix = f"apt-get install {dnsname} (the harness then uses CNI, see podman.network_backend), or {package}"
        return (
            f"{advice}, and Debian's package {package} is not installed: {fix}. .ci/run installs {dnsname}; "
            "`apt-get install --no-install-recommends podman` leaves every DNS package out."
        )
    if enabled == "false":
        return (
            f"{advice} (Debian's package {package}, installed), but network {network} has DNS disabled (podman "
            f"network inspect: DNSEnabled=false): was it created with --disable-dns, or before {package} was "
            "installed?"
        )
    return (
        f"{advice} (Debian's package {package}, installed), and DNS is enabled on network {network}: the "
        "resolver itself did not answer; look at the nameservers above and at the network's DNS server process "
        "on the host."
    )


def reachability(network: str, label: str, image: str, targets: list[tuple[str, int]]) -> str:
    """A DNS + TCP check of each (host, port) from a new container on `network`, one line each; never raises
    (it explains another failure)."""
    if not targets:
        return "  (its spec names no Service or URL to check)"
    name = f"{label}-netcheck-{uuid.uuid4().hex[:6]}"
    check = ["python3", "-c", _NET_CHECK, json.dumps(targets), str(CONNECT_TIMEOUT_S)]
    try:
        result = podman(
            "run",
            "--rm",
            "--name",
            name,
            *_on(network, label),
            image,
            *check,
            check=False,
            timeout=PODMAN_OVERHEAD_S + len(targets) * (RESOLVER_TIMEOUT_S + CONNECT_TIMEOUT_S),
        )
    except subprocess.TimeoutExpired:
        podman("rm", "-f", "-t", "0", name, check=False)
        return f"  (the network check of {targets} did not finish in time)"
    return (result.stdout + result.stderr).rstrip() or f"  (the network check printed nothing: {result})"
