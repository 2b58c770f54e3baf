#!/bin/sh
# Installs stoa — one executable — into $PREFIX/bin.
#
#   From a checkout:  ./install.sh                      builds dist/stoa with the pinned Bun
#                     PREFIX=$HOME/.local ./install.sh
#   Without one:      curl -fsSL "$BASE/install.sh" | STOA_DOWNLOAD_BASE="$BASE" sh
#                     downloads stoa-linux-<arch> and its .sha256 from $BASE, verifies, installs
#
# PREFIX defaults to /usr/local when writable, else ~/.local. STOA_INSTALL_FROM=checkout|download
# overrides the mode, which is otherwise "checkout" when this file sits in a stoa checkout.
set -eu

say() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

if [ -z "${PREFIX:-}" ]; then
  if [ -w /usr/local/bin ] || { [ ! -e /usr/local/bin ] && [ -w /usr/local ]; }; then PREFIX=/usr/local
  else PREFIX="${HOME:?HOME is not set}/.local"; fi
fi

mode="${STOA_INSTALL_FROM:-}"
checkout=""
case "$0" in
  *install.sh)
    dir=$(CDPATH= cd -- "$(dirname -- "$0")" 2>/dev/null && pwd) || dir=""
    if [ -n "$dir" ] && [ -f "$dir/package.json" ] && [ -f "$dir/src/main.ts" ]; then checkout="$dir"; fi ;;
esac
[ -n "$mode" ] || { if [ -n "$checkout" ]; then mode=checkout; else mode=download; fi; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/stoa-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# place FILE: installs FILE as $PREFIX/bin/stoa atomically (a running stoa keeps its old inode).
place() {
  "$1" version >/dev/null 2>&1 || die "$1 does not run on this machine ($(uname -sm))"
  mkdir -p "$PREFIX/bin" || die "cannot create $PREFIX/bin: set PREFIX to a directory you can write"
  cp "$1" "$PREFIX/bin/.stoa.new.$$" || die "cannot write to $PREFIX/bin: set PREFIX or run as root"
  chmod 755 "$PREFIX/bin/.stoa.new.$$"
  mv -f "$PREFIX/bin/.stoa.new.$$" "$PREFIX/bin/stoa"
  say "installed $("$PREFIX/bin/stoa" version | head -n 1) to $PREFIX/bin/stoa"
  # The man page comes from the binary itself (the same command table as --help): stoa(1).
  if mkdir -p "$PREFIX/share/man/man1" 2>/dev/null && "$PREFIX/bin/stoa" man > "$PREFIX/share/man/man1/.stoa.1.$$" 2>/dev/null; then
    mv -f "$PREFIX/share/man/man1/.stoa.1.$$" "$PREFIX/share/man/man1/stoa.1"
    say "installed the man page to $PREFIX/share/man/man1/stoa.1"
  else
    rm -f "$PREFIX/share/man/man1/.stoa.1.$$"
    say "could not install the man page into $PREFIX/share/man/man1 (stoa man prints it)"
  fi
  case ":$PATH:" in
    *":$PREFIX/bin:"*) say "$PREFIX/bin is on PATH: run 'stoa --help'" ;;
    *) say "$PREFIX/bin is NOT on PATH: add it with  export PATH=\"$PREFIX/bin:\$PATH\"" ;;
  esac
}

fetch() { # fetch URL FILE
  if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 2 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else die "neither curl nor wget is installed (apt-get install curl)"; fi
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d ' ' -f 1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d ' ' -f 1
  else openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1; fi
}

case "$mode" in
  checkout)
    [ -n "$checkout" ] || die "STOA_INSTALL_FROM=checkout needs install.sh inside a stoa checkout"
    cd "$checkout"
    bun=$(./scripts/ensure-bun) || die "could not get the pinned Bun (see above)"
    PATH="$(dirname "$bun"):$PATH"; export PATH
    say "using bun $("$bun" --version) at $bun"
    "$bun" install --frozen-lockfile >&2 || die "bun install failed"
    "$bun" run build >&2 || die "build failed"
    place "$checkout/dist/stoa" ;;
  download)
    base="${STOA_DOWNLOAD_BASE:-}"
    [ -n "$base" ] || die "set STOA_DOWNLOAD_BASE to the URL that serves stoa-linux-<arch> (or run ./install.sh from a checkout)"
    [ "$(uname -s)" = Linux ] || die "stoa runs on Linux only, not $(uname -s)"
    case "$(uname -m)" in
      x86_64 | amd64) arch=x64 ;;
      aarch64 | arm64) arch=arm64 ;;
      *) die "no stoa build for $(uname -m)" ;;
    esac
    name="stoa-linux-$arch"
    base="${base%/}"
    say "downloading $base/$name"
    fetch "$base/$name" "$tmp/$name" || die "download of $base/$name failed"
    fetch "$base/$name.sha256" "$tmp/$name.sha256" || die "download of $base/$name.sha256 failed"
    want=$(cut -d ' ' -f 1 < "$tmp/$name.sha256")
    got=$(sha256 "$tmp/$name")
    [ -n "$want" ] && [ "$want" = "$got" ] || die "checksum mismatch for $name (expected $want, got $got): nothing installed"
    say "checksum ok ($got)"
    chmod 755 "$tmp/$name"
    place "$tmp/$name" ;;
  *) die "STOA_INSTALL_FROM must be checkout or download, not '$mode'" ;;
esac
