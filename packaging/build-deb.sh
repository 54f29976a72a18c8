#!/usr/bin/env bash
# `make deb`: a plain dpkg-deb package of corral (no debhelper), into DIR (default dist/).
#
#   /usr/lib/corral/venv    a venv (--system-site-packages: bcc is python3-bpfcc, in
#                           Debian's dist-packages) holding the corral wheel (BPF sources
#                           and the native extension inside) and its PyPI dependencies
#   /usr/sbin/corrald       -> the venv's corrald
#   /usr/bin/corral         the native launcher (native/launcher.c), which execs
#   /usr/lib/corral/corral-py   the Python CLI, started with python -S (as in the checkout)
#   /lib/systemd/system/corrald.service   systemd/corrald.service (ExecStart=/usr/sbin/corrald)
#   /etc/corral/corral.toml (conffile), /etc/corral/policies.d/
#   postinst: the corral-audit group, /var/log/corral (root:corral-audit 0750)
#
# The wheel is built from a copy of the checkout (tracked files and new ones git does not
# ignore) with the dev venv's setuptools and cffi, so the checkout gets no build/ or egg-info.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
prefix=/usr/lib/corral
venv=$prefix/venv
pyver=$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
work=$(mktemp -d /tmp/corral-deb-XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

mkdir -p "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$work/src"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/corral-*.whl)

/usr/bin/python3 -m venv --system-site-packages --without-pip "$root$venv"
# CORRAL_DEB_EXTRAS=otlp make deb: the OTLP export's OpenTelemetry SDK in the package too.
spec=$wheel${CORRAL_DEB_EXTRAS:+[$CORRAL_DEB_EXTRAS]}
"$py" -m pip --python "$root$venv/bin/python" install -q --no-compile --no-warn-script-location \
    --disable-pip-version-check "$spec"
# The venv was made at $root$venv: it must name $venv (scripts' #!, pyvenv.cfg, activate).
grep -rlI --null "$root" "$root$venv" | xargs -0 -r sed -i "s|$root||g"
rm -f "$root$venv"/lib/python*/site-packages/corral-*.dist-info/direct_url.json
/usr/bin/python3 -m compileall -q -j0 -s "$root" -p / "$root$venv/lib" >/dev/null

install -d "$root/usr/sbin" "$root/usr/bin"
ln -s "../lib/corral/venv/bin/corrald" "$root/usr/sbin/corrald"
site=$venv/lib/python$pyver/site-packages
cat > "$root$prefix/corral-py" <<PY
#!$venv/bin/python -S
# corral's Python CLI. -S: Python's site (and its .pth files) costs ~40 ms on every
# agent's start-up; the venv's packages and Debian's dist-packages are put on sys.path here.
import sys
sys.path[1:1] = ['$site', '/usr/lib/python3/dist-packages']
from corral.client.cli import main
sys.exit(main())
PY
chmod 0755 "$root$prefix/corral-py"
# /usr/bin/corral: the native launcher (native/launcher.c, as the Makefile builds it for
# the checkout) that serves `corral exec` and execs corral-py for the rest.
if [ -f "$repo/native/launcher.c" ]; then
    gcc -O2 -Wall -Wextra -Werror -I"$repo/native" -DCORRAL_PY="\"$prefix/corral-py\"" \
        -o "$root/usr/bin/corral" "$repo/native/launcher.c" "$repo/native/mpack.c" \
        "$repo/native/corral_native.c"
else
    ln -s "../lib/corral/corral-py" "$root/usr/bin/corral"
fi

install -D -m 0644 "$repo/systemd/corrald.service" "$root/lib/systemd/system/corrald.service"
install -D -m 0644 "$repo/packaging/corral.toml" "$root/etc/corral/corral.toml"
install -D -m 0644 "$repo/packaging/policies.d-README" "$root/etc/corral/policies.d/README"
install -D -m 0644 "$repo/packaging/logrotate" "$root/etc/logrotate.d/corral"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/corral/README.md"
[ -f "$repo/docs/log-schema.md" ] && install -D -m 0644 "$repo/docs/log-schema.md" \
    "$root/usr/share/doc/corral/log-schema.md"

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@PYVER@/$pyver/g" \
    "$repo/packaging/deb/control" > "$root/DEBIAN/control"
printf '%s\n' /etc/corral/corral.toml /etc/logrotate.d/corral > "$root/DEBIAN/conffiles"
for f in postinst prerm postrm; do install -m 0755 "$repo/packaging/deb/$f" "$root/DEBIAN/$f"; done

deb=$out/corral_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
