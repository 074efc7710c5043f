"""Which TCP addresses a process listens on, from ``/proc`` (Linux), and whether they are
loopback: the check behind "every server the stack starts binds to loopback".

A process's listening sockets are the ``LISTEN`` rows of ``/proc/<pid>/net/tcp`` and ``tcp6``
whose inode is one of the process's ``socket:[inode]`` file descriptors.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

_LISTEN = "0A"


class Listener(NamedTuple):
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def decode_address(hex_addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` → (127.0.0.1, 8080): the kernel prints the address as 32-bit words
    in host (little-endian) byte order, the port big-endian."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return address, int(port, 16)


def parse_proc_net(text: str) -> list[Listener]:
    """The ``LISTEN`` sockets of a ``/proc/net/tcp`` or ``tcp6`` table (pure)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        address, port = decode_address(fields[1])
        found.append(Listener(address, port, int(fields[9])))
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; never a wildcard (0.0.0.0, ::) or any other
    address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners(pid: int) -> list[Listener]:
    """The TCP sockets ``pid`` listens on (empty when it is gone)."""
    mine = socket_inodes(pid)
    found: list[Listener] = []
    for table in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/{pid}/net/{table}").read_text()
        except OSError:
            continue
        found += [entry for entry in parse_proc_net(text) if entry.inode in mine]
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree
