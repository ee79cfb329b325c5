#!/usr/bin/env bash
# The deployment files, validated offline (no Docker engine, no cluster, no
# service of the local stack):
#   1. docker-compose.yml: `docker-compose config -q` (Debian's docker-compose
#      1.29) and composecheck (compose-go, what Docker Compose v2 loads it
#      with), with deploy/compose/example.env; then deploy_check.py: every
#      CATALYST_* variable is a setting of the service's binary, ports and
#      healthchecks match the workers', stop_grace_period covers the shutdown
#      grace, workers wait for topics and migrations.
#   2. Dockerfile: parsed by BuildKit's Dockerfile frontend and its lint rules
#      (dockerfilecheck); deploy_check.py: the build stage has .ci/install's build
#      packages, the runtime stage a package for every library the binaries
#      load (readelf + dpkg), pg_dump of the client's version, every COPY let
#      in by .dockerignore, a numeric non-root USER.
#   3. deploy/k8s: kustomize renders the base and both example overlays (and
#      `kubectl kustomize deploy/k8s` renders the same, where kubectl embeds
#      kustomize v5); kubeconform -strict validates every object against
#      the OpenAPI schemas of Kubernetes 1.27 (the oldest the manifests
#      support) and 1.34, and the KEDA and Prometheus-operator CRDs
#      (deploy/tools/schema-sources), none skipped; deploy_check.py:
#      grace periods, probes, ports, static membership, PDBs, Services,
#      maxReplicas <= partitions, variables known to the binaries; each
#      CronJob's command is accepted by catalyst-publish (a usage error exits
#      2; with no broker it exits 1 after trying to publish).
#   4. Each validator refuses real mistakes made in copies: a misspelled
#      field, a wrong type, an unknown service, a removed API version, a bad
#      quantity, a KEDA threshold given as a number, a missing required field,
#      a kustomization naming a missing file.
# The validators are installed by deploy/tools/install.sh (.ci/install runs
# it), pinned by version and hash; this test installs them if missing.
set -euo pipefail

src=${CATALYST_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
bin=${CATALYST_BIN_DIR:-$src/build/bin}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
	printf 'FAIL: test_deploy: %s\n' "$*" >&2
	exit 1
}
step() {
	printf '== %s\n' "$*"
}
# refused WHAT FILE COMMAND...: COMMAND (given FILE) must fail; prints its first line
refused() {
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then
		fail "$what: accepted [$*]"
	fi
	printf '   refused (%s): %s\n' "$what" "$(printf '%s\n' "$out" | grep -v '^Summary' | head -1 | cut -c1-160)"
}
# mutate IN OUT SED_EXPR: OUT = IN with SED_EXPR applied, which must change it
mutate() {
	sed "$3" "$1" >"$2"
	! cmp -s "$1" "$2" || fail "mutation [$3] changed nothing in $1"
}

python=
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import yaml' 2>/dev/null; then
		python=$p
		break
	fi
done
[[ -n $python ]] || fail "no python3 with PyYAML (Debian: python3-yaml; run .ci/install)"
command -v docker-compose >/dev/null || fail "docker-compose not found (Debian: docker-compose; run .ci/install)"
tools=$("$src/deploy/tools/install.sh") || fail "deploy/tools/install.sh failed"
kustomize=$tools/bin/kustomize
kubeconform=$tools/bin/kubeconform
composecheck=$tools/bin/composecheck
dockerfilecheck=$tools/bin/dockerfilecheck
# one schema set per Kubernetes version of deploy/tools/schema-sources,
# oldest first; mistakes are shown on the newest
mapfile -t k8s_versions < <(ls "$tools/schemas" | sort -V)
((${#k8s_versions[@]} > 0)) || fail "no schemas in $tools/schemas"
newest=${k8s_versions[-1]}
check=("$python" "$src/tests/integration/deploy_check.py")
# validate [-k VERSION] FILE...
validate() {
	local version=$newest
	if [[ $1 == -k ]]; then
		version=$2
		shift 2
	fi
	"$kubeconform" -strict -summary \
		-schema-location "$tools/schemas/$version/{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json" "$@"
}

# --- 1. docker-compose -------------------------------------------------------------
step "docker-compose.yml"
compose=$src/docker-compose.yml
envfile=$src/deploy/compose/example.env
docker-compose --env-file "$envfile" -f "$compose" --project-directory "$src" config -q ||
	fail "docker-compose config refused docker-compose.yml"
"$composecheck" -f "$compose" -env-file "$envfile" >"$work/compose.yml" ||
	fail "composecheck refused docker-compose.yml"
"${check[@]}" compose "$src" "$bin" "$work/compose.yml" || fail "docker-compose.yml is not consistent with the binaries"
# without the env file a required secret is missing: refused, naming it
: >"$work/empty.env"
refused "no .env" env -i PATH="$PATH" HOME="$HOME" \
	docker-compose -f "$compose" --project-directory "$src" --env-file "$work/empty.env" config -q
out=$(env -i PATH="$PATH" HOME="$HOME" \
	docker-compose -f "$compose" --project-directory "$src" --env-file "$work/empty.env" config -q 2>&1) || true
[[ $out == *POSTGRES_PASSWORD* ]] || fail "a missing POSTGRES_PASSWORD is not named: $out"

mutate "$compose" "$work/c1.yml" 's/^    command: \["catalyst-persist"\]/    comand: ["catalyst-persist"]/'
refused "misspelled key, v1.29" docker-compose --env-file "$envfile" -f "$work/c1.yml" --project-directory "$src" config -q
refused "misspelled key, compose-go" "$composecheck" -q -f "$work/c1.yml" -env-file "$envfile" -project-directory "$src"
mutate "$compose" "$work/c2.yml" 's/^      migrate-replica:$/      migrate-replika:/'
refused "unknown service, v1.29" docker-compose --env-file "$envfile" -f "$work/c2.yml" --project-directory "$src" config -q
refused "unknown service, compose-go" "$composecheck" -q -f "$work/c2.yml" -env-file "$envfile" -project-directory "$src"
mutate "$compose" "$work/c3.yml" 's/stop_grace_period: 40s/stop_grace_period: forty/'
refused "bad duration, compose-go" "$composecheck" -q -f "$work/c3.yml" -env-file "$envfile" -project-directory "$src"
mutate "$compose" "$work/c4.yml" 's/stop_grace_period: 40s/stop_grace_period: 20s/'
"$composecheck" -f "$work/c4.yml" -env-file "$envfile" -project-directory "$src" >"$work/c4-config.yml"
refused "grace shorter than the workers'" "${check[@]}" compose "$src" "$bin" "$work/c4-config.yml"
mutate "$compose" "$work/c5.yml" 's/CATALYST_PERSIST_PORT: "5030"/CATALYST_PERSIT_PORT: "5030"/'
"$composecheck" -f "$work/c5.yml" -env-file "$envfile" -project-directory "$src" >"$work/c5-config.yml"
refused "unknown variable" "${check[@]}" compose "$src" "$bin" "$work/c5-config.yml"

# --- 2. Dockerfile -------------------------------------------------------------------
step "Dockerfile"
"$dockerfilecheck" "$src/Dockerfile" || fail "BuildKit's parser refused the Dockerfile"
"${check[@]}" dockerfile "$src" "$bin" || fail "the Dockerfile does not match the build"
mutate "$src/Dockerfile" "$work/Dockerfile.1" 's/^COPY migrations/COPPY migrations/'
refused "unknown instruction" "$dockerfilecheck" "$work/Dockerfile.1"
mutate "$src/Dockerfile" "$work/Dockerfile.2" 's/^COPY --from=build/COPY --from=biuld/'
refused "COPY from no stage" "$dockerfilecheck" "$work/Dockerfile.2"
mutate "$src/Dockerfile" "$work/Dockerfile.3" 's/ AS build$/ as build/'
refused "lint: FROM/AS casing" "$dockerfilecheck" "$work/Dockerfile.3"
mkdir -p "$work/df"
cp -r "$src/.ci" "$src/common" "$src/workers" "$src/migrations" "$src/.dockerignore" "$work/df/"
mkdir -p "$work/df/tests" "$work/df/proto"
cp -r "$src/tests/tools" "$work/df/tests/"
cp "$src/CMakeLists.txt" "$work/df/"
mutate "$src/Dockerfile" "$work/df/Dockerfile" 's/libmicrohttpd12 //'
refused "runtime library missing" "${check[@]}" dockerfile "$work/df" "$bin"

# --- 3. Kubernetes -----------------------------------------------------------------------
step "deploy/k8s"
for k in deploy/k8s deploy/k8s/overlays/example deploy/k8s/overlays/example-hpa; do
	name=$(basename "$k")
	"$kustomize" build "$src/$k" >"$work/$name.yaml" || fail "kustomize build $k failed"
	printf '   %s: %s objects\n' "$k" "$(grep -c '^kind:' "$work/$name.yaml")"
done
# `kubectl kustomize deploy/k8s`, where kubectl embeds kustomize v5 (kubectl
# 1.27+; Debian's kubernetes-client 1.20 embeds v2.0.3, which knows neither
# `labels` nor components)
if command -v kubectl >/dev/null && kver=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p') &&
	[[ -n $kver ]] && ((kver >= 5)); then
	(cd "$src" && kubectl kustomize deploy/k8s) >"$work/kubectl.yaml" || fail "kubectl kustomize deploy/k8s failed"
	cmp -s "$work/kubectl.yaml" "$work/k8s.yaml" || fail "kubectl kustomize renders deploy/k8s differently"
	echo "   kubectl kustomize deploy/k8s: the same (kustomize v$kver)"
else
	echo "   kubectl with kustomize v5 not found: rendered with kustomize $("$kustomize" version) only"
fi
for version in "${k8s_versions[@]}"; do
	for name in k8s example example-hpa; do
		out=$(validate -k "$version" "$work/$name.yaml") || fail "kubeconform ($version) refused $name: $out"
		[[ $out == *"Invalid: 0, Errors: 0, Skipped: 0"* ]] || fail "kubeconform ($version): $out"
		printf '   %s, Kubernetes %s: %s\n' "$name" "$version" "$out"
	done
done
"${check[@]}" k8s "$src" "$bin" "$work/k8s.yaml" "$work/example.yaml" "$work/example-hpa.yaml" ||
	fail "deploy/k8s is not consistent with the binaries"

# each CronJob command is one catalyst-publish accepts: with no broker it
# gets as far as publishing (exit 1), where a usage error would exit 2
"$python" - "$work/k8s.yaml" >"$work/cron-commands" <<'EOF'
import sys, yaml
for o in yaml.safe_load_all(open(sys.argv[1])):
    if o and o["kind"] == "CronJob":
        for c in o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
            print("\t".join(a.replace("$(JOB_NAME)", "catalyst-test-job-29000000") for a in c["command"]))
EOF
n=0
pids=()
while IFS=$'\t' read -r -a cmd; do
	n=$((n + 1))
	printf '%s\n' "${cmd[*]}" >"$work/cron.$n.cmd"
	(
		rc=0
		env -i PATH="$PATH" CATALYST_BROKERS=127.0.0.1:1 CATALYST_PUBLISH_TIMEOUT_MS=1000 \
			"$bin/${cmd[0]}" "${cmd[@]:1}" >"$work/cron.$n.out" 2>&1 || rc=$?
		echo "$rc" >"$work/cron.$n.rc"
	) &
	pids+=($!)
done <"$work/cron-commands"
wait "${pids[@]}"
((n >= 8)) || fail "only $n CronJob commands found"
for ((i = 1; i <= n; i++)); do
	rc=$(cat "$work/cron.$i.rc")
	((rc == 1)) || fail "CronJob command [$(cat "$work/cron.$i.cmd")] exited $rc (1 expected: not delivered): $(head -3 "$work/cron.$i.out")"
done
echo "   $n CronJob commands accepted by catalyst-publish"

# --- 4. mistakes are refused -------------------------------------------------------------
step "mistakes refused"
k8s=$work/k8s.yaml
mutate "$k8s" "$work/m1.yaml" '0,/readinessProbe:/s//readinesProbe:/'
refused "misspelled field" validate "$work/m1.yaml"
mutate "$k8s" "$work/m2.yaml" '0,/terminationGracePeriodSeconds: 40/s//terminationGracePeriodSeconds: "40"/'
refused "string for an integer" validate "$work/m2.yaml"
mutate "$k8s" "$work/m3.yaml" '0,/memory: 64Mi/s//memory: 64MB/'
refused "bad quantity" validate "$work/m3.yaml"
mutate "$k8s" "$work/m4.yaml" '0,/apiVersion: policy\/v1$/s//apiVersion: policy\/v1beta1/'
refused "removed API version" validate "$work/m4.yaml"
mutate "$k8s" "$work/m5.yaml" '0,/lagThreshold: "50000"/s//lagThreshold: 50000/'
refused "KEDA threshold as a number" validate "$work/m5.yaml"
mutate "$k8s" "$work/m6.yaml" '0,/maxReplicaCount: 12/s//maxReplicasCount: 12/'
refused "misspelled KEDA field" validate "$work/m6.yaml"
mutate "$k8s" "$work/m7.yaml" 's/^    port: http$/    prot: http/'
refused "misspelled ServiceMonitor field" validate "$work/m7.yaml"
"$python" - "$k8s" "$work/m8.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
next(d for d in docs if d["kind"] == "StatefulSet")["spec"].pop("selector")
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
refused "missing required field" validate "$work/m8.yaml"
mutate "$k8s" "$work/m9.yaml" '0,/maxReplicaCount: 12/s//maxReplicaCount: 13/'
refused "more replicas than partitions" "${check[@]}" k8s "$src" "$bin" "$work/m9.yaml"
mutate "$k8s" "$work/m10.yaml" '0,/terminationGracePeriodSeconds: 40/s//terminationGracePeriodSeconds: 30/'
refused "grace period shorter than the workers'" "${check[@]}" k8s "$src" "$bin" "$work/m10.yaml"
mutate "$k8s" "$work/m11.yaml" '0,/name: CATALYST_PERSIST_PORT/s//name: CATALYST_PERSIST_PROT/'
refused "unknown variable" "${check[@]}" k8s "$src" "$bin" "$work/m11.yaml"
mkdir -p "$work/kbad"
cp -r "$src/deploy/k8s/base/." "$work/kbad/"
mutate "$src/deploy/k8s/base/kustomization.yaml" "$work/kbad/kustomization.yaml" 's/  - persist.yaml/  - persit.yaml/'
refused "kustomization naming a missing file" "$kustomize" build "$work/kbad"

echo "test_deploy: ok"
