# Shared shell functions of scripts/dev, scripts/test and scripts/build-site. Source it; do not run it.
# Every tool pin of the project is here or in a lock file (Cargo.lock, end2end/package-lock.json).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# wasm-bindgen's CLI must equal the wasm-bindgen crate in Cargo.lock (pinned with "=" in Cargo.toml).
WASM_BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/Cargo.lock")"
# wasm-opt for release builds: npm's binaryen. Debian's binaryen 108 emits a wasm that silently fails to hydrate.
BINARYEN_VERSION="132.0.0"
# Optional, for `cargo leptos watch` only (0.3.11 needs rustc 1.96): cargo install cargo-leptos --locked --version 0.3.10
export CARGO_LEPTOS_VERSION="0.3.10"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly, or through sudo), for apt-get.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (install it by hand, or run as root)"; fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "missing $*; this is not a Debian-like system, install it by hand"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_wasm_target() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown || {
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  }
}

ensure_wasm_bindgen() {
  [ -n "$WASM_BINDGEN_VERSION" ] || die "could not read the wasm-bindgen version from Cargo.lock"
  if ! wasm-bindgen --version 2>/dev/null | grep -qw "$WASM_BINDGEN_VERSION"; then
    log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 10 minutes, once)"
    # Not --locked: its lock file names a webpki-roots release that crates.io no longer serves.
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
}

ensure_node() {
  command -v npm >/dev/null || apt_install nodejs npm
}

# npm's binaryen provides wasm-opt (a node program); installed into the project's own node_modules.
ensure_wasm_opt() {
  ensure_node
  if [ ! -x "$ROOT/node_modules/.bin/wasm-opt" ]; then
    log "installing npm binaryen@$BINARYEN_VERSION (wasm-opt)"
    (cd "$ROOT" && npm install --no-save --no-audit --no-fund "binaryen@$BINARYEN_VERSION" >/dev/null)
  fi
}

ensure_chromium() {
  command -v chromium >/dev/null || apt_install chromium
  # Japanese glyphs for the ja pages and screenshots (Chromium draws boxes without a CJK font).
  [ -d /usr/share/fonts/opentype/ipafont-gothic ] || apt_install fonts-ipafont-gothic
}

ensure_e2e_packages() {
  ensure_node
  if [ ! -d "$ROOT/end2end/node_modules/@playwright/test" ] || [ "$ROOT/end2end/package-lock.json" -nt "$ROOT/end2end/node_modules" ]; then
    log "installing end2end npm packages (no browser download: the tests use Debian's Chromium)"
    (cd "$ROOT/end2end" && npm ci --no-audit --no-fund >/dev/null)
  fi
}

# ---- PostgreSQL -------------------------------------------------------------------------------------------------

pg_bindir() {
  local dir
  for dir in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

ensure_postgres_binaries() {
  if ! pg_bindir >/dev/null; then
    apt_install postgresql
    pg_bindir >/dev/null || die "PostgreSQL binaries not found after installing 'postgresql'; install initdb and pg_ctl"
  fi
  command -v psql >/dev/null || apt_install postgresql-client
}

# PostgreSQL refuses to run as root: as root, run its binaries as the 'postgres' user.
pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || as_root useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pg_start DIR PORT [extra postgres options]: initialises DIR/data if needed and starts the server on 127.0.0.1:PORT
# with its socket in DIR (never the shared /var/run/postgresql).
pg_start() {
  local dir="$1" port="$2" opts="${3:-}" bin
  bin="$(pg_bindir)"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    local initdb_args=(-D "$dir/data" -U postgres -E UTF8 --no-locale)
    if [ -f "$dir/password" ]; then
      initdb_args+=(--auth-local=scram-sha-256 --auth-host=scram-sha-256 --pwfile="$dir/password")
    else
      initdb_args+=(--auth=trust)
    fi
    pg_as_owner "$bin/initdb" "${initdb_args[@]}" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi
  pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $opts" start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "PostgreSQL did not start (log: $dir/postgres.log)"; }
}

pg_stop() {
  local dir="$1"
  [ -f "$dir/data/postmaster.pid" ] || return 0
  pg_as_owner "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

pg_is_running() {
  local dir="$1"
  [ -f "$dir/data/postmaster.pid" ] && pg_as_owner "$(pg_bindir)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}
