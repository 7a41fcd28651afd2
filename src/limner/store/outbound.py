"""Where pulls may connect: public addresses only, unless LIMNER_PULL_PRIVATE=1 (SSRF).

A model name picks the host a pull talks to, and a registry picks where it redirects; without
this check a request could make the server fetch from its own loopback services, the LAN or
a cloud metadata address (169.254.169.254). Every hop is checked: the registry, each
redirect, the token realm. The check resolves the name itself; a name that resolves
differently a moment later (DNS rebinding between the check and the connection) is not caught.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from limner import config
from limner.errors import InvalidRequest, LimnerError

# What the resolver says when there is no network, or the name does not exist (glibc, macOS).
_NOT_RESOLVED = ("Name or service not known", "nodename nor servname", "Temporary failure in name "
                 "resolution", "No address associated", "getaddrinfo failed")  # fmt: skip


def check_public(url: httpx.URL | str, what: str) -> None:
    """Refuse `url` unless every address its host resolves to is public."""
    if config.pull_private():
        return
    url = httpx.URL(url)
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return  # unresolvable: the request itself fails and says so
    for *_, address in found:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
        if not all(_public(each) for each in _with_embedded(ip)):
            raise InvalidRequest(
                f"{what}: {host} is a private or local address ({ip}); limner pulls only "
                "from public addresses unless LIMNER_PULL_PRIVATE=1 allows local registries"
            )


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated but still routed


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _with_embedded(ip: Address) -> list[Address]:
    """The address and every IPv4 address an IPv6 one carries (mapped, IPv4-compatible, 6to4,
    Teredo, NAT64): `[64:ff9b::a9fe:a9fe]` reaches 169.254.169.254 as surely as it does."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    found: list[Address] = [ip]
    last32 = ipaddress.IPv4Address(ip.packed[12:])
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    if ip in IPV4_COMPATIBLE or any(ip in net for net in NAT64):
        found.append(last32)
    return found


def _public(ip: Address) -> bool:
    local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # fec0::/10, old
    return ip.is_global and not ip.is_multicast and not local


def network_failure(what: str, exc: httpx.HTTPError) -> LimnerError:
    """A request that never got an answer, as a 502 that names the host and says why in
    words: offline, unreachable, refused, or too slow."""
    try:
        host = exc.request.url.host
    except RuntimeError:  # an error raised before any request was made
        host = "the server"
    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        why = f"{host} did not answer in time"
    elif any(words in text for words in _NOT_RESOLVED):
        why = f"cannot look up {host}: this machine seems to be offline (or the name is wrong)"
    elif "unreachable" in text.lower():
        why = f"cannot reach {host}: the network is unreachable"
    elif "refused" in text.lower():
        why = f"{host} refused the connection: nothing listens at that address"
    else:
        why = f"the connection to {host} failed: {text or type(exc).__name__}"
    return LimnerError(f"{what}: {why}", 502)
