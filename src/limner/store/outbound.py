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
from limner.errors import InvalidRequest


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
        if not ip.is_global or ip.is_multicast:
            raise InvalidRequest(
                f"{what}: {host} is a private or local address ({ip}); limner pulls only "
                "from public addresses unless LIMNER_PULL_PRIVATE=1 allows local registries"
            )
