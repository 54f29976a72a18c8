"""A session's policy from what the caller asked, after the sources are read:
the profile when no policy option was given (the command's own, else `agent`),
then the flags on top of the profile and files, `--open-net`, the agents' base
URLs, the mandatory protections, and "~" written out for every home.

One implementation for both ways a session starts: the Python CLI
(client/cli.py policy_from_args, which also reads policy files, sandbox-runtime
settings and every flag) and corrald preparing a native `corral run`
(server/runprep.py, for the few options the launcher serves)."""
from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from corral.policy import files as policyfile
from corral.policy.paths import expand_homes

BASE_URL_VARS = ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL")


def default_profile(cmd0: str) -> tuple[str, str]:
    """(profile, why) for a session with no policy option: not left open."""
    name = policyfile.PROFILE_FOR_COMMAND.get(os.path.basename(cmd0))
    return (name, "chosen by the command name") if name else ("agent", "the default")


def profile_note(name: str, why: str, open_net: bool) -> str:
    net = "network unrestricted (--open-net)" if open_net else \
        "network: only its domains, --open-net for all"
    return (f"corral: profile {name} ({why}; {net}; --profile NAME or --policy FILE to choose "
            "another, `corral policy show PROFILE` shows it)")


def compose(base: dict, flags: dict, *, open_net: bool, dropped: set[str], loaded: list[str],
            cwd: str, home_list: list[str], environ: dict) -> tuple[dict, list[str]]:
    """(policy, notes): flags over base, then --open-net (no network section at
    all), the base URLs' endpoints, the mandatory protections (`loaded`: the
    policy files read, protected by "policy-files") and "~" for every home."""
    merged = policyfile.merge(base, flags)
    if open_net:
        merged.pop("network", None)
    notes = allow_base_urls(merged, environ)
    out = policyfile.apply_mandatory(merged, dropped, cwd=cwd, files=loaded)
    return expand_homes(out, home_list), notes


def allow_base_urls(policy: dict, environ: dict) -> list[str]:
    """ANTHROPIC_BASE_URL / OPENAI_BASE_URL name where the agent's API is: with a
    network policy, that endpoint is allowed (in place); the notes say so."""
    net = policy.get("network")
    notes: list[str] = []
    if net is None:
        return notes
    for var in BASE_URL_VARS:
        url = environ.get(var)
        if not url:
            continue
        try:
            u = urlsplit(url)
            host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            host = None
        if not host or u.scheme not in ("http", "https"):
            notes.append(f"corral: warning: {var}={url!r} is not an http(s) URL: nothing "
                         "allowed for it")
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            key, rule = "allow_localhost_ports", str(port)
        elif ip is not None:
            key, rule = "allow", f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        else:
            key, rule = "allow_domains", f"{host}:{port}"
        lst = net.setdefault(key, [])
        if rule not in lst:
            lst.append(rule)
            notes.append(f"corral: note: {var} allows {rule}")
    return notes
