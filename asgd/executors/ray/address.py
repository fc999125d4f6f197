"""Probe a Ray address before anything starts: fail in seconds, not Ray's minutes of retries."""

from __future__ import annotations

import importlib.util
import socket

from asgd.executors.ray import RayBackendError

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check(address: str, timeout_s: float) -> None:
    """Ray is installed and ``address`` answers like a Ray cluster; else RayBackendError."""
    if importlib.util.find_spec("ray") is None:
        raise RayBackendError("backend 'ray' needs Ray, which is not installed: pip install -e '.[ray]'")
    check_address(address, timeout_s)


def check_address(address: str, timeout_s: float) -> None:
    """Probe a Ray address: TCP connect, then the gRPC (HTTP/2) handshake.

    ``ray.init`` retries an unreachable or silent GCS for minutes; this fails
    within about ``timeout_s``: a closed port, a black hole, or a listener
    that does not answer an HTTP/2 preface with a SETTINGS frame (Ray's GCS
    and Ray Client servers are gRPC). "" (local) and "auto" (Ray finds the
    local cluster, or fails at once) need no probe.
    """
    if address in ("", "auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(HTTP2_PREFACE)
            head = conn.recv(9)
    except OSError as e:
        raise RayBackendError(f"cannot reach the Ray cluster at ray_address={address!r} "
                              f"({type(e).__name__}: {e or 'timed out'}, within {timeout_s:g} s); "
                              f"is 'ray start --head' running there?") from None
    if len(head) < 4 or head[3] != 4:  # frame type 4: SETTINGS
        raise RayBackendError(f"cannot reach the Ray cluster at ray_address={address!r}: "
                              f"{host}:{port} answers, but not as a Ray (gRPC) server")
