#!/bin/sh
# Install the peer sandboxes that bench_peers.py / attacks.py compare against,
# into bench/.peers/ (gitignored), with npm's ordinary client.
#
#   sh bench/peers.sh            # install (or update) both
#   sh bench/peers.sh --check    # print what is installed, install nothing
#
# Peers:
#   @anthropic-ai/sandbox-runtime  -> bench/.peers/node_modules/.bin/srt
#       needs bubblewrap, socat, ripgrep (apt: bubblewrap socat ripgrep)
#   @openai/codex                  -> bench/.peers/node_modules/.bin/codex
#       `codex sandbox linux ...` runs a command under its Landlock+seccomp sandbox
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix="$here/.peers"
SRT_VERSION=${SRT_VERSION:-latest}
CODEX_VERSION=${CODEX_VERSION:-latest}

if [ "${1:-}" = "--check" ]; then
    for b in srt codex; do
        if [ -x "$prefix/node_modules/.bin/$b" ]; then
            echo "$b: $prefix/node_modules/.bin/$b"
        else
            echo "$b: not installed"
        fi
    done
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "peers.sh: installing nodejs npm" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2 || \
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2; }
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "peers.sh: npm not found (apt-get install nodejs npm)" >&2
        exit 1
    fi
fi

missing=""
for tool in bwrap socat rg; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "peers.sh: installing srt's host tools:$missing" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap socat ripgrep >&2 || \
            echo "peers.sh: apt-get failed; srt may not run" >&2
    else
        echo "peers.sh: srt needs$missing (apt-get install bubblewrap socat ripgrep)" >&2
    fi
fi

mkdir -p "$prefix"
# A package.json of our own keeps npm from walking up into the repo.
[ -f "$prefix/package.json" ] || echo '{"name":"corral-bench-peers","private":true}' > "$prefix/package.json"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/sandbox-runtime@$SRT_VERSION" "@openai/codex@$CODEX_VERSION"

for b in srt codex; do
    if [ -x "$prefix/node_modules/.bin/$b" ]; then
        echo "$b: $prefix/node_modules/.bin/$b"
    else
        echo "peers.sh: $b did not install" >&2
    fi
done
