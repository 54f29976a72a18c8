"""Credentials in the caller's environment stay outside the session.

A coding agent inherits the environment of the shell it was started from, and
that shell often holds tokens (GITHUB_TOKEN, AWS_*, NPM_TOKEN...) that reach far
beyond the project. `corral run` removes every variable whose name looks like a
credential before exec, unless the policy passes it by name
(`[env] pass = ["ANTHROPIC_API_KEY"]`, `--pass-env NAME`). Names are matched,
never values: a value is not looked at, logged or printed.
"""
from __future__ import annotations

import fnmatch
import re

# Name patterns (case-insensitive, fnmatch) of credential-looking variables.
SECRET_PATTERNS = (
    "*_TOKEN", "*_TOKENS", "TOKEN", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*API_KEY*", "*APIKEY*",
    "*_KEY_ID", "*ACCESS_KEY*", "*PRIVATE_KEY*", "*CREDENTIAL*", "*_AUTH", "*AUTH_TOKEN*",
    "AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS", "GCLOUD_*", "CLOUDSDK_*",
    "GITHUB_TOKEN", "GH_TOKEN", "GITLAB_TOKEN", "NPM_TOKEN", "NODE_AUTH_TOKEN", "PYPI_*",
    "TWINE_*", "DOCKER_PASSWORD", "DOCKER_AUTH_CONFIG", "HEROKU_API_KEY", "SLACK_*TOKEN*",
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "HF_TOKEN", "VAULT_*",
    "KUBECONFIG", "DATABASE_URL", "*_DSN",
)
# Looks like a credential by name but is not one (and tools break without them).
NOT_SECRET = ("SSH_AUTH_SOCK", "GPG_AGENT_INFO", "XAUTHORITY", "KRB5CCNAME_DIR",
              "TOKENIZERS_PARALLELISM")
# Where a tool finds its CA certificates: paths, not secrets, and TLS breaks without them.
NOT_SECRET_PATTERNS = ("*_CA_BUNDLE", "*CA_CERTS*", "*_CERTS_FILE", "*_CERT_FILE", "*_CA_FILE",
                       "*_CA_PATH", "*_CAFILE", "*_CAPATH")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_secret(name: str) -> bool:
    n = name.upper()
    if n in NOT_SECRET or any(fnmatch.fnmatchcase(n, p) for p in NOT_SECRET_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(n, p) for p in SECRET_PATTERNS)


def check_names(names, what: str = "env.pass") -> list[str]:
    """Variable names as given in a policy; raises ValueError naming a bad one."""
    out = []
    for n in names or []:
        if not isinstance(n, str) or not _NAME.match(n):
            raise ValueError(f"{what}: {n!r} is not an environment variable name")
        if n not in out:
            out.append(n)
    return out


def strip(environ: dict, passed=()) -> tuple[dict, list[str]]:
    """(the environment without credential-looking names the policy does not
    pass, the removed names sorted)."""
    keep = set(passed)
    removed = sorted(k for k in environ if k not in keep and looks_secret(k))
    return {k: v for k, v in environ.items() if k not in removed}, removed
