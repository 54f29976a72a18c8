# corral: `make demo` installs everything, starts corrald and runs a sandboxed
# demo; `make test` runs the test suite (both tiers); `make unit` only the unit
# tier (pure logic, any user, seconds); `make lint` runs ruff; `make vmtest` the
# BPF LSM tier in a VM.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the daemon, the native extension and the tests need.
APT_PACKAGES := python3-bpfcc bpftool libseccomp-dev python3-venv python3-dev libffi-dev \
	gcc make git kmod iproute2 dnsutils dnsmasq-base procps util-linux \
	tmux dbus-daemon dbus-bin openssh-client attr \
	python3-cryptography systemd
# (python3-cryptography: the audit log's signed checkpoints; systemd: systemd-analyze
# verify of the unit in tests/test_deb.py, which also installs the .deb: make deb)
# The VM tier: a stock Debian kernel with BPF LSM, booted under qemu.
VM_APT_PACKAGES := qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static
BENCH_APT_PACKAGES := hyperfine bubblewrap socat ripgrep
# The real agent the tests run in a session (tests/agents): Claude Code from npm, pinned,
# into the (gitignored) venv. 2.1.110 is the last release that is plain JavaScript
# for node >= 18 (2.1.120 on ships a native binary; by 2.1.200 it needs node >= 22).
CLAUDE_CODE_VERSION := 2.1.110
CLAUDE := $(VENV)/node/node_modules/.bin/claude
# Codex CLI from npm, pinned (a native binary in @openai/codex-linux-x64, ~420 MB), in
# its own prefix: an `npm install --no-save` into the same one would prune Claude Code.
CODEX_VERSION := 0.171.0
CODEX := $(VENV)/node-codex/node_modules/.bin/codex

.PHONY: install apt venv agent-clis demo start stop test unit lint vmtest bench clean deb

install: apt venv

# Installs only what is missing, so a second `make` is quick and offline.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# bcc lives in Debian's dist-packages: the venv must see system site-packages.
venv: $(VENV)/bin/python
	@if [ ! -f $(VENV)/.installed ] || [ pyproject.toml -nt $(VENV)/.installed ] || [ -n "$$(find native -newer $(VENV)/.installed -type f ! -name 'launcher.c' ! -name 'mpack.*' 2>/dev/null)" ]; then \
		$(VENV)/bin/pip install -q --upgrade pip setuptools wheel && \
		$(VENV)/bin/pip install -q -e '.[test]' && touch $(VENV)/.installed; \
	fi
	@$(MAKE) -s $(VENV)/bin/corral-fast
	@$(PY) -c "import bcc, msgpack, pyroute2, corral.kernel.native as n; n.load()" || \
		{ echo "corral: the install is incomplete (see above)"; exit 1; }

# `corral run` sits on every agent's start-up path. Python's `site` (and the .pth
# files it runs) costs ~40 ms here, so the Python CLI (`corral-py`) skips it (-S)
# and puts the project, the venv and Debian's dist-packages on sys.path itself.
# The installed `corral` is the native launcher (native/launcher.c): it serves
# `corral exec` itself and execs corral-py for everything else; as corral-exec it
# is the shell-command prefix form (CLAUDE_CODE_SHELL_PREFIX, README).
LAUNCHER_SRC := native/launcher.c native/mpack.c native/corral_native.c
$(VENV)/bin/corral-fast: $(VENV)/.installed $(LAUNCHER_SRC) native/mpack.h native/corral_native.h
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	printf '%s\n' "#!$(abspath $(VENV))/bin/python -S" "import sys" \
		"sys.path[1:1] = ['$(abspath daemon)', '$$site', '/usr/lib/python3/dist-packages']" \
		"from corral.client.cli import main" "sys.exit(main())" > $(VENV)/bin/corral-py.tmp && \
	chmod +x $(VENV)/bin/corral-py.tmp && mv $(VENV)/bin/corral-py.tmp $(VENV)/bin/corral-py && \
	gcc -O2 -Wall -Wextra -Werror -Inative -DCORRAL_PY='"$(abspath $(VENV))/bin/corral-py"' \
		-o $(VENV)/bin/corral.tmp $(LAUNCHER_SRC) && \
	mv $(VENV)/bin/corral.tmp $(VENV)/bin/corral && \
	ln -sf corral $(VENV)/bin/corral-exec && \
	touch $@

# Installs only when the pinned version is missing; without npm or a network it says so
# and goes on (tests/agents then skip, naming why).
agent-clis:
	@if [ "$$($(CLAUDE) --version 2>/dev/null | cut -d' ' -f1)" != "$(CLAUDE_CODE_VERSION)" ]; then \
		if ! command -v npm >/dev/null; then \
			echo "corral: npm not found: not installing Claude Code (tests/agents will skip)"; \
		else \
			echo "installing @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) into $(VENV)/node"; \
			npm install --prefix $(VENV)/node --no-audit --no-fund --no-save --loglevel=error \
				@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) || \
				echo "corral: could not install Claude Code (tests/agents will skip)"; \
		fi; \
	fi
	@if [ "$$($(CODEX) --version 2>/dev/null | cut -d' ' -f2)" != "$(CODEX_VERSION)" ] && command -v npm >/dev/null; then \
		echo "installing @openai/codex@$(CODEX_VERSION) into $(VENV)/node-codex"; \
		npm install --prefix $(VENV)/node-codex --no-audit --no-fund --no-save --loglevel=error \
			@openai/codex@$(CODEX_VERSION) || \
			echo "corral: could not install Codex CLI (tests/agents/test_codex.py will skip)"; \
	fi

start: install
	@bash systemd/start-corrald.sh

stop:
	@bash systemd/start-corrald.sh stop

demo: start
	$(PY) -m corral.client.demo

test: install agent-clis
	$(PY) -m pytest -v -p no:cacheprovider tests

# Pure logic only: needs no root, no BPF, no daemon (also runs as nobody).
unit: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# ruff is in the `test` extra, so `make venv` installs it; findings fail the target.
lint: venv
	$(VENV)/bin/ruff check daemon tests bench native

vmtest: install
	@missing=$$(for p in $(VM_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi
	$(PY) tests/vm/run_vm.py

bench: install
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi
	$(PY) bench/run_all.py

# The Debian package (packaging/build-deb.sh): dist/corral_VERSION_ARCH.deb. Its
# program is a venv in /usr/lib/corral (wheel + PyPI deps), the unit runs /usr/sbin/corrald.
deb: venv
	@command -v dpkg-deb >/dev/null || { echo "corral: make deb needs dpkg-deb"; exit 1; }
	bash packaging/build-deb.sh dist

clean:
	rm -rf $(VENV) build *.egg-info dist
