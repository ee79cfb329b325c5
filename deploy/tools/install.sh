#!/usr/bin/env bash
# Installs the offline validators of docker-compose.yml and deploy/k8s, once
# per version, into a cache directory outside the work tree:
#   kustomize      sigs.k8s.io/kustomize/kustomize/v5  } pinned in go.mod,
#   kubeconform    github.com/yannh/kubeconform        } hashes in go.sum
#   composecheck   ./composecheck (compose-spec/compose-go, as Docker Compose v2)
#   dockerfilecheck ./dockerfilecheck (BuildKit's Dockerfile parser and lint rules)
#   schemas/V/     JSON schemas of Kubernetes V and the CRDs, from
#                  schema-sources (k8s_schemas.py)
# Everything comes from the Go module proxy (Go >= 1.25 needed). Quick when
# the cache holds this version already.
#
#   deploy/tools/install.sh              install (if needed), print the directory
#   deploy/tools/install.sh --check      print the directory if installed, else exit 1
#
# The directory is $CATALYST_DEPLOY_TOOLS_DIR (default
# ~/.cache/catalyst-deploy-tools)/<hash of this directory's pinned inputs>.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
cache=${CATALYST_DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/catalyst-deploy-tools}

log() {
	printf 'deploy tools: %s\n' "$*" >&2
}
die() {
	printf 'deploy tools: %s\n' "$*" >&2
	exit 1
}

key=$(cd "$here" && cat go.mod go.sum schema-sources k8s_schemas.py install.sh composecheck/*.go dockerfilecheck/*.go |
	sha256sum | cut -c1-16)
dir=$cache/$key

if [[ -f $dir/ok ]]; then
	touch "$dir" 2>/dev/null || true # in use: not pruned below
	echo "$dir"
	exit 0
fi
[[ ${1:-} == --check ]] && exit 1

# the machine's Go may be installed outside the PATH of a non-login shell
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=/usr/local/go/bin:$PATH
fi
# go_ok: the go on PATH is 1.25 or newer (the schema modules need 1.24.7)
go_ok() {
	local v major minor
	command -v go >/dev/null 2>&1 || return 1
	v=$(go env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	IFS=. read -r major minor _ <<<"$v"
	((major > 1 || (major == 1 && minor >= 25)))
}
# Without a recent enough Go (Debian 12's is 1.19), the Go toolchain itself
# comes from the module proxy (golang.org/toolchain, the module Go's own
# toolchain switching downloads), pinned by version and checksum.
readonly GO_TOOLCHAIN=v0.0.1-go1.25.5.linux-amd64
readonly GO_TOOLCHAIN_SHA256=8cea6783dab64d68b38f5b81ecd38d45155a3c06638991acc6af19e0fca80edb
if ! go_ok; then
	[[ $(uname -m) == x86_64 ]] || die "needs Go >= 1.25 (none found, and no pinned toolchain for $(uname -m))"
	tc=$cache/go-$GO_TOOLCHAIN
	if [[ ! -x $tc/bin/go ]]; then
		log "no Go >= 1.25 here: fetching the Go toolchain $GO_TOOLCHAIN from the module proxy"
		mkdir -p "$cache"
		curl -fsSL --retry 3 -o "$cache/go.zip.part" \
			"https://proxy.golang.org/golang.org/toolchain/@v/$GO_TOOLCHAIN.zip" ||
			die "could not download the Go toolchain $GO_TOOLCHAIN"
		echo "$GO_TOOLCHAIN_SHA256  $cache/go.zip.part" | sha256sum -c --quiet ||
			die "the Go toolchain download does not match its pinned checksum"
		rm -rf "$tc.part" && mkdir -p "$tc.part"
		unzip -q "$cache/go.zip.part" -d "$tc.part"
		mv "$tc.part/golang.org/toolchain@$GO_TOOLCHAIN" "$tc"
		rm -rf "$tc.part" "$cache/go.zip.part"
		chmod +x "$tc"/bin/* "$tc"/pkg/tool/*/* 2>/dev/null || true
	fi
	PATH=$tc/bin:$PATH
	export GOTOOLCHAIN=local
	go_ok || die "needs Go >= 1.25 (the fetched toolchain does not run)"
fi
python=
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import yaml' 2>/dev/null; then
		python=$p
		break
	fi
done
[[ -n $python ]] || die "needs python3 with PyYAML (Debian: python3-yaml)"

t0=$SECONDS
tmp=$cache/tmp.$$
rm -rf "$tmp"
mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT

log "building kustomize, kubeconform, composecheck, dockerfilecheck ($(go env GOVERSION))"
(
	cd "$here"
	GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath -buildvcs=false" go build -o "$tmp/bin/" \
		sigs.k8s.io/kustomize/kustomize/v5 github.com/yannh/kubeconform/cmd/kubeconform \
		./composecheck ./dockerfilecheck
)
# `go build -o DIR/ .../kustomize/v5` names the binary after the last element
# that is not a major version
[[ -x $tmp/bin/kustomize && -x $tmp/bin/kubeconform && -x $tmp/bin/composecheck && -x $tmp/bin/dockerfilecheck ]] ||
	die "build produced $(ls "$tmp/bin")"

log "fetching the schema sources"
k8s_versions=() k8s_files=() crd_files=()
while read -r use module version sum file; do
	[[ -z $use || $use == \#* ]] && continue
	json=$(cd "$tmp" && GOFLAGS="${GOFLAGS:-} -modcacherw" go mod download -json "$module@$version") ||
		die "go mod download $module@$version failed"
	got=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",*$/\1/p' <<<"$json")
	moddir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' <<<"$json")
	[[ $got == "$sum" ]] || die "$module@$version: hash $got, pinned $sum"
	[[ -f $moddir/$file ]] || die "$module@$version has no $file"
	case $use in
	kubernetes)
		k8s_versions+=("$version")
		k8s_files+=("$moddir/$file")
		;;
	crd) crd_files+=("$moddir/$file") ;;
	*) die "schema-sources: unknown use $use" ;;
	esac
done <"$here/schema-sources"
((${#k8s_versions[@]} > 0)) || die "schema-sources names no Kubernetes version"
for i in "${!k8s_versions[@]}"; do
	"$python" "$here/k8s_schemas.py" "$tmp/schemas/${k8s_versions[$i]}" "${k8s_files[$i]}" "${crd_files[@]}" >&2
done

"$tmp/bin/kustomize" version >"$tmp/versions"
"$tmp/bin/kubeconform" -v >>"$tmp/versions"
rm -rf "$dir"
touch "$tmp/ok"
mv "$tmp" "$dir"
trap - EXIT
log "installed in $dir ($((SECONDS - t0)) s)"
# other versions' directories unused for a week
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name "go-$GO_TOOLCHAIN" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
echo "$dir"
