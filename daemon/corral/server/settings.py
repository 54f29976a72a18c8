"""corrald's settings file, /etc/corral/corral.toml (config.CONFIG_FILE; corrald
--config FILE). A missing file means the defaults below. Command-line options win
over the file. An unknown section or key, or a value of the wrong type, is an error
naming file:line, the key and what it takes: corrald does not start on a settings
file it cannot read fully (an export or a key the operator asked for must not be
silently off). Read at start; change it and restart corrald."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from corral import config


class SettingsError(ValueError):
    pass


# section -> key -> (type(s), default, what it takes)
SCHEMA: dict[str, dict[str, tuple]] = {
    "dns": {
        "enabled": (bool, True, "true or false"),
        "upstream": (str, "", 'a "HOST[:PORT]" string ("" = first nameserver in /etc/resolv.conf)'),
        "min_ttl": ((int, float), 30, "seconds"),
        "max_ttl": ((int, float), 86400, "seconds"),
    },
    "audit": {
        "erofs": (bool, False, "true or false (see corrald --audit-erofs)"),
    },
    "sessions": {
        "end_on_exit": (bool, False, "true or false (see corrald --end-sessions-on-exit)"),
    },
    "log": {
        "checkpoint_every": (int, 1000, "a number of records (>= 1)"),
        "checkpoint_key": (str, "", 'a path ("" = CONFIG_DIR/checkpoint.key)'),
    },
    "export": {
        "jsonl": (str, "", 'a file path ("" = no JSON-lines export)'),
        "journald": (str, "auto", '"auto" (when /run/systemd/journal/socket exists), "on" or "off"'),
        "otlp_endpoint": (str, "", 'an OTLP/HTTP logs URL ("" = off; needs corral[otlp])'),
        "queue": (int, 10000, "records each export may hold before it drops (>= 16)"),
    },
    "policies": {
        "dir": (str, "", 'a directory ("" = CONFIG_DIR/policies.d)'),
    },
}


@dataclass
class Settings:
    path: str = ""
    found: bool = False
    values: dict = field(default_factory=dict)

    def get(self, section: str, key: str):
        return self.values.get(section, {}).get(key, SCHEMA[section][key][1])


def _line(text: str, section: str, key: str | None) -> int:
    from corral.policy.files import _locate
    return _locate(text, section, key)


def parse(text: str, path: str) -> Settings:
    def err(section, key, msg):
        line = _line(text, section, key) if section else 0
        where = f"{path}:{line}" if line else path
        what = ".".join(x for x in (section, key) if x)
        return SettingsError(f"{where}: {what + ': ' if what else ''}{msg}")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        import re
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        if m:
            raise SettingsError(f"{path}:{m.group(1)}: TOML syntax error: {str(e)[:m.start()].strip()} "
                                f"(column {m.group(2)})") from None
        raise SettingsError(f"{path}: TOML syntax error: {e}") from None
    values: dict = {}
    for section, table in data.items():
        if section not in SCHEMA:
            raise err(section, None, f"unknown section [{section}]; sections are "
                                     + ", ".join(f"[{s}]" for s in SCHEMA))
        if not isinstance(table, dict):
            raise err(section, None, f"must be a table ([{section}])")
        for key, v in table.items():
            if key not in SCHEMA[section]:
                raise err(section, key, f"unknown key; [{section}] takes "
                                        + ", ".join(SCHEMA[section]))
            types, _, what = SCHEMA[section][key]
            if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)) \
                    or not isinstance(v, types):
                raise err(section, key, f"{v!r} is not {what}")
            values.setdefault(section, {})[key] = v
    s = Settings(path=path, found=True, values=values)
    if s.get("log", "checkpoint_every") < 1:
        raise err("log", "checkpoint_every", "must be at least 1")
    if s.get("export", "queue") < 16:
        raise err("export", "queue", "must be at least 16")
    for sec, key in (("export", "jsonl"), ("log", "checkpoint_key"), ("policies", "dir")):
        v = s.get(sec, key)
        if v and not v.startswith("/"):
            raise err(sec, key, f"{v!r} is not an absolute path (corrald's working directory is "
                                "not a place to keep it): write the full path")
    if s.get("export", "journald") not in ("auto", "on", "off"):
        raise err("export", "journald", f"{s.get('export', 'journald')!r}: use \"auto\", \"on\" or \"off\"")
    return s


def load(path: Path | str | None = None) -> Settings:
    path = str(path or config.CONFIG_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return Settings(path=path, found=False)
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path}: not UTF-8 text ({e})") from None
    return parse(text, path)


def policies_dir(s: Settings) -> Path:
    if "CORRAL_POLICIES_DIR" in os.environ or not s.get("policies", "dir"):
        return config.POLICIES_DIR
    return Path(s.get("policies", "dir"))


def checkpoint_key(s: Settings) -> Path:
    if "CORRAL_CHECKPOINT_KEY" in os.environ or not s.get("log", "checkpoint_key"):
        return config.CHECKPOINT_KEY
    return Path(s.get("log", "checkpoint_key"))


def apply(s: Settings, args) -> None:
    """Fill corrald's options from the file where the command line left the default."""
    if not args.no_dns and not s.get("dns", "enabled"):
        args.no_dns = True
    if not args.dns_upstream and s.get("dns", "upstream"):
        args.dns_upstream = s.get("dns", "upstream")
    for opt, key, default in (("dns_min_ttl", "min_ttl", 30), ("dns_max_ttl", "max_ttl", 86400)):
        if getattr(args, opt) == default and key in s.values.get("dns", {}):
            setattr(args, opt, float(s.get("dns", key)))
    if not args.audit_erofs and s.get("audit", "erofs"):
        args.audit_erofs = True
    if not args.end_sessions_on_exit and s.get("sessions", "end_on_exit"):
        args.end_sessions_on_exit = True
