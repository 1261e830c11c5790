#!/bin/sh
# install.sh: installs diskvault, its mount(8) helpers and its systemd units, in the
# manner of `make install`; `install.sh --uninstall` removes exactly those files.
#
#   mount-helpers/install.sh [--uninstall] [VAR=VALUE...]
#
# Variables (from the environment or as VAR=VALUE arguments):
#   PREFIX   /usr/local            installation prefix
#   BINDIR   $PREFIX/bin           where the diskvault binary goes
#   SBINDIR  /sbin                 the mount helpers; mount(8) looks for them only in
#                                  /sbin, /sbin/fs.d and /sbin/fs
#   UNITDIR  /etc/systemd/system   the systemd units
#   DESTDIR  (empty)               staging root prepended to every path above
#   DISKVAULT_BIN  target/release/diskvault (from the repository root): the binary
#                  to install; build it first with `cargo build --release`
#
# The units and the helper are installed with @BINDIR@ replaced by $BINDIR (without
# DESTDIR: it is where the binary will be at run time). Running it again overwrites
# the same files; it never touches /etc/diskvault or enabled units.
set -eu

me=${0##*/}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

uninstall=0
for a in "$@"; do
    case $a in
        --uninstall) uninstall=1 ;;
        PREFIX=*) PREFIX=${a#*=} ;;
        BINDIR=*) BINDIR=${a#*=} ;;
        SBINDIR=*) SBINDIR=${a#*=} ;;
        UNITDIR=*) UNITDIR=${a#*=} ;;
        DESTDIR=*) DESTDIR=${a#*=} ;;
        DISKVAULT_BIN=*) DISKVAULT_BIN=${a#*=} ;;
        -h|--help) sed -n '2,21s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) printf '%s: unknown argument %s; see %s --help\n' "$me" "'$a'" "$me" >&2
           exit 1 ;;
    esac
done

PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
SBINDIR=${SBINDIR:-/sbin}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DESTDIR=${DESTDIR:-}
DISKVAULT_BIN=${DISKVAULT_BIN:-$repo/target/release/diskvault}

need_absolute() {
    case $2 in
        /*) ;;
        *) printf '%s: %s=%s is not an absolute path\n' "$me" "$1" "$2" >&2; exit 1 ;;
    esac
}
need_absolute BINDIR "$BINDIR"
need_absolute SBINDIR "$SBINDIR"
need_absolute UNITDIR "$UNITDIR"

bin_dst=$DESTDIR$BINDIR/diskvault
helper_dst=$DESTDIR$SBINDIR/mount.fuse.diskvault
alias_dst=$DESTDIR$SBINDIR/mount.diskvault
units="diskvault@.service diskvault-vm@.service"

if [ "$uninstall" = 1 ]; then
    # Only the files install.sh puts there; directories stay (they may be shared).
    for f in "$bin_dst" "$helper_dst" "$alias_dst"; do
        if [ -e "$f" ] || [ -L "$f" ]; then rm -f "$f" && echo "removed $f"; fi
    done
    for u in $units; do
        f=$DESTDIR$UNITDIR/$u
        if [ -e "$f" ] || [ -L "$f" ]; then rm -f "$f" && echo "removed $f"; fi
    done
    exit 0
fi

if [ ! -x "$DISKVAULT_BIN" ]; then
    echo "$me: no diskvault binary at $DISKVAULT_BIN; build it with 'cargo build --release' or set DISKVAULT_BIN" >&2
    exit 1
fi

# sed replacement text: escape \, & and the | delimiter.
bindir_sed=$(printf '%s\n' "$BINDIR" | sed 's/[\\&|]/\\&/g')

# Writes SRC to DST with @BINDIR@ replaced, through a temporary file and a rename so a
# running mount never sees a half-written helper.
subst() {
    mkdir -p "$(dirname "$2")"
    sed "s|@BINDIR@|$bindir_sed|g" "$1" > "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
    echo "installed $2"
}

mkdir -p "$(dirname "$bin_dst")"
# Copy and rename: replacing a running binary in place would fail (ETXTBSY).
if [ "$(cd "$(dirname "$DISKVAULT_BIN")" && pwd -P)/$(basename "$DISKVAULT_BIN")" != \
     "$(cd "$(dirname "$bin_dst")" && pwd -P)/diskvault" ]; then
    cp "$DISKVAULT_BIN" "$bin_dst.tmp.$$"
    chmod 755 "$bin_dst.tmp.$$"
    mv -f "$bin_dst.tmp.$$" "$bin_dst"
    echo "installed $bin_dst"
fi
subst "$here/mount.fuse.diskvault" "$helper_dst" 755
ln -sfn mount.fuse.diskvault "$alias_dst"
echo "installed $alias_dst -> mount.fuse.diskvault"
for u in $units; do
    subst "$here/systemd/$u" "$DESTDIR$UNITDIR/$u" 644
done
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    echo "run 'systemctl daemon-reload' to load the units"
fi
