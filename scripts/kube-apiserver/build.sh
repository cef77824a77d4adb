#!/usr/bin/env bash
# Builds kube-apiserver from Debian's `kubernetes` source package (bookworm:
# upstream v1.20.2) for the tests that need a real API server, and prints the
# binary's path as the last line of standard output. Progress and errors go
# to standard error.
#
# Runs as root because it installs Debian packages and adds the deb-src
# entries in /etc/apt/sources.list.d/monoskope-deb-src.sources (debian.sources
# stays unchanged). Everything else lives under ~/.cache/monoskope-ci/: the
# binary is cached as kube-apiserver-<Debian source version>/kube-apiserver,
# so a run that finds it only reads the apt package lists and exits. The long
# steps log to ~/.cache/monoskope-ci/logs/.
set -Eeuo pipefail
# Names the command when one that is not checked explicitly fails.
trap 'printf "build.sh: error: line %s: %s failed with exit status %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

cache="${HOME}/.cache/monoskope-ci"
logs="$cache/logs"
mirror_sources=/etc/apt/sources.list.d/debian.sources
deb_src_sources=/etc/apt/sources.list.d/monoskope-deb-src.sources
go_bin=/usr/lib/go-1.19/bin
# reflect2 1.0.1, which Kubernetes 1.20 vendors, corrupts memory when built
# with Go 1.18 or newer, so Debian's reflect2 1.0.2 sources replace it.
reflect2_fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
packages=(golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server rsync dpkg-dev)

log() { printf '==> %s\n' "$*" >&2; }

die() {
  printf 'build.sh: error: %s\n' "$*" >&2
  exit 1
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 needs root, so run this script as root (as CI does)"
}

# Runs a command with its output in $logs/<name>.log. On failure, prints the
# log's last 40 lines and exits.
run_logged() {
  local name=$1
  shift
  local log_file="$logs/$name.log"
  if ! "$@" >"$log_file" 2>&1; then
    printf 'build.sh: error: %s failed. Last 40 lines of %s:\n' "$*" "$log_file" >&2
    tail -n 40 "$log_file" >&2
    exit 1
  fi
}

# Writes one deb-src stanza for each stanza of debian.sources, with the same
# URIs, suites, components and keyring.
write_deb_src_entry() {
  [ -f "$mirror_sources" ] || die "$mirror_sources not found: this script expects Debian's deb822 mirror configuration"
  if grep -Eq '^Types:.*deb-src' "$mirror_sources"; then
    return 1
  fi
  local wanted
  wanted=$(
    printf '# Source entries for scripts/kube-apiserver/build.sh (Monoskope): the\n'
    printf '# mirrors of %s, with Types: deb-src.\n' "$mirror_sources"
    awk '/^#/ { next } /^Types:/ { print "Types: deb-src"; next } { print }' "$mirror_sources"
  )
  if [ -f "$deb_src_sources" ] && [ "$(cat "$deb_src_sources")" = "$wanted" ]; then
    return 1
  fi
  require_root "writing $deb_src_sources"
  log "Adding deb-src entries in $deb_src_sources"
  printf '%s\n' "$wanted" >"$deb_src_sources"
  return 0
}

# Prints the newest version of the `kubernetes` source package in apt's
# package lists, or nothing.
kubernetes_source_version() {
  apt-cache showsrc --only-source kubernetes 2>/dev/null |
    awk '/^Version:/ { print $2 }' |
    sort -V |
    tail -n 1
}

install_packages() {
  local missing=() package
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  require_root "installing ${missing[*]}"
  log "Installing ${missing[*]}"
  run_logged apt-install env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Downloads and unpacks the source package into $work unless an earlier run
# finished that. Prints the path of the unpacked tree.
unpack_source() {
  local work=$1 version=$2
  if [ ! -f "$work/unpacked" ]; then
    log "Downloading and unpacking kubernetes $version source (log: $logs/apt-source.log)"
    rm -rf "$work"
    mkdir -p "$work/download"
    (cd "$work/download" && run_logged apt-source apt-get source --only-source "kubernetes=$version")
    touch "$work/unpacked"
  fi
  local trees=("$work"/download/kubernetes-*/)
  [ "${#trees[@]}" -eq 1 ] && [ -d "${trees[0]}" ] ||
    die "expected one unpacked kubernetes-* folder in $work/download: remove $work and run again"
  printf '%s\n' "${trees[0]%/}"
}

main() {
  mkdir -p "$logs"

  local lists_stale=false
  if write_deb_src_entry; then
    lists_stale=true
  fi

  local version=""
  if [ "$lists_stale" = false ]; then
    version=$(kubernetes_source_version)
  fi
  if [ -z "$version" ]; then
    require_root "apt-get update"
    log "Updating apt package lists (log: $logs/apt-update.log)"
    run_logged apt-update apt-get update
    version=$(kubernetes_source_version)
  fi
  [ -n "$version" ] ||
    die "no 'kubernetes' source package found after apt-get update: check the deb-src entries in $deb_src_sources"

  local binary_dir="$cache/kube-apiserver-$version"
  local binary="$binary_dir/kube-apiserver"
  if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    log "Using the cached $binary"
    printf '%s\n' "$binary"
    return
  fi

  install_packages
  [ -x "$go_bin/go" ] || die "$go_bin/go not found after installing golang-1.19-go"
  [ -d "$reflect2_fixed" ] || die "$reflect2_fixed not found after installing golang-github-modern-go-reflect2-dev"

  local work="$cache/kubernetes-src/$version"
  local tree
  tree=$(unpack_source "$work" "$version")

  local vendored_reflect2="$tree/vendor/github.com/modern-go/reflect2"
  [ -d "$vendored_reflect2" ] || die "$vendored_reflect2 not found: the source package has no vendored reflect2 to replace"
  log "Replacing the vendored reflect2 with $reflect2_fixed"
  rsync -a --delete "$reflect2_fixed/" "$vendored_reflect2/"

  local gopath="$work/gopath"
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"

  # Kubernetes' hack/lib/golang.sh keeps its Go build cache under _output/,
  # so a rebuild in the same tree is faster than the first build.
  log "Building kube-apiserver (a first build takes several minutes; log: $logs/build.log)"
  local started=$SECONDS
  (
    cd "$gopath/src/k8s.io/kubernetes"
    run_logged build env \
      PATH="$go_bin:$PATH" \
      GOPATH="$gopath" \
      GO111MODULE=off \
      CGO_ENABLED=0 \
      GOPROXY=off \
      GOFLAGS=-p=2 \
      make WHAT=cmd/kube-apiserver
  )
  log "Build finished in $((SECONDS - started)) s"

  local built="$tree/_output/local/bin/linux/amd64/kube-apiserver"
  [ -x "$built" ] || die "make succeeded but $built is missing: see $logs/build.log"
  "$built" --version >&2 || die "$built --version failed"

  mkdir -p "$binary_dir"
  cp "$built" "$binary.tmp"
  mv -f "$binary.tmp" "$binary"
  printf '%s\n' "$binary"
}

main "$@"
