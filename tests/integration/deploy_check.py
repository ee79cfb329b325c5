#!/usr/bin/env python3
"""Consistency checks of the deployment files against the code, for
test_deploy.sh (what a schema cannot know):

  deploy_check.py compose SRC BIN COMPOSE_CONFIG_YAML
  deploy_check.py k8s SRC BIN RENDERED_YAML...
  deploy_check.py dockerfile SRC BIN

SRC is the repository, BIN the directory of the built binaries (their --help
lists the CATALYST_* variables each reads, with defaults). Prints one line
per problem and exits 1 if there is any; prints what it checked otherwise.
"""
import ipaddress
import os
import re
import subprocess
import sys

import yaml

problems = []
checked = []


def problem(msg):
    problems.append(msg)


# --- what the code says ---------------------------------------------------------

HELP_VAR = re.compile(r"^  (CATALYST_[A-Z0-9_*]+)\s*$", re.M)
HELP_DEFAULT = re.compile(r"^  (CATALYST_[A-Z0-9_]+)\n      .*?; default (\S+)\s*$", re.M)
_help_cache = {}


def binary_help(bin_dir, name):
    """(set of CATALYST_* names, {name: default}) of a binary's --help."""
    if name not in _help_cache:
        path = os.path.join(bin_dir, name)
        if not os.access(path, os.X_OK):
            problem("%s: no such binary in %s" % (name, bin_dir))
            _help_cache[name] = (set(), {})
        else:
            out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
            text = out.stdout + out.stderr
            names = set(HELP_VAR.findall(text))
            defaults = dict(HELP_DEFAULT.findall(text))
            if not names:
                problem("%s --help lists no CATALYST_ variable" % name)
            _help_cache[name] = (names, defaults)
    return _help_cache[name]


def declared(bin_dir, binary, var):
    names, _ = binary_help(bin_dir, binary)
    if var in names:
        return True
    return var.startswith("CATALYST_KAFKA_") and "CATALYST_KAFKA_*" in names


def all_binaries(src):
    return ["catalyst-" + d for d in sorted(os.listdir(os.path.join(src, "workers")))
            if os.path.isdir(os.path.join(src, "workers", d))] + ["topic-admin"]


def partitions(src):
    """{topic suffix: partitions} from common/cat_kafka.[ch]."""
    h = open(os.path.join(src, "common/cat_kafka.h")).read()
    c = open(os.path.join(src, "common/cat_kafka.c")).read()
    names = dict(re.findall(r'#define (CAT_TOPIC_[A-Z]+) "([a-z.0-9]+)"', h))
    out = {names[m]: int(n) for m, n in re.findall(r"\{\s*(CAT_TOPIC_[A-Z]+),\s*(\d+)\s*\}", c)}
    if len(out) < 7:
        problem("common/cat_kafka.c: found only %d topic partition counts" % len(out))
    return out


def worker_topics(src, worker):
    """Topic suffixes workers/<worker>/main.c consumes."""
    h = open(os.path.join(src, "common/cat_kafka.h")).read()
    names = dict(re.findall(r'#define (CAT_TOPIC_[A-Z]+) "([a-z.0-9]+)"', h))
    main = open(os.path.join(src, "workers", worker, "main.c")).read()
    m = re.search(r"topics\[\]\s*=\s*\{([^}]*)\}", main)
    if not m:
        problem("workers/%s/main.c: no topics[]" % worker)
        return []
    return [names[t] for t in re.findall(r"CAT_TOPIC_[A-Z]+", m.group(1))]


def grace_ms(bin_dir):
    return int(binary_help(bin_dir, "catalyst-persist")[1]["CATALYST_SHUTDOWN_GRACE_MS"])


WORKERS = ("persist", "cache", "sync", "backup")


# --- docker-compose ---------------------------------------------------------------

def duration_s(text):
    total = 0.0
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text)):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose(src, bin_dir, path):
    config = yaml.safe_load(open(path))
    services = config["services"]
    fleet_image = None
    for name, svc in sorted(services.items()):
        cmd = svc.get("command") or []
        if isinstance(cmd, str):
            cmd = cmd.split()
        if not cmd or not (cmd[0].startswith("catalyst-") or cmd[0] == "topic-admin"):
            continue
        fleet_image = fleet_image or svc.get("image")
        if svc.get("image") != fleet_image:
            problem("compose %s: image %s, not the fleet's %s" % (name, svc.get("image"), fleet_image))
        env = svc.get("environment") or {}
        for var in env:
            if var.startswith("CATALYST_") and not declared(bin_dir, cmd[0], var):
                problem("compose %s: %s is not a setting of %s" % (name, var, cmd[0]))
        worker = cmd[0][len("catalyst-"):]
        if worker in WORKERS or cmd[:2] == ["catalyst-migrate", "serve"]:
            port_var = "CATALYST_%s_PORT" % worker.upper()
            default = binary_help(bin_dir, cmd[0])[1].get(port_var)
            port = str(env.get(port_var, default))
            if port != default:
                problem("compose %s: %s=%s, the worker's default is %s" % (name, port_var, port, default))
            test = " ".join(svc.get("healthcheck", {}).get("test", []))
            if "127.0.0.1:%s/readyz" % port not in test:
                problem("compose %s: healthcheck [%s] does not probe :%s/readyz" % (name, test, port))
            published = [str(p.get("target")) for p in svc.get("ports", [])]
            if port not in published:
                problem("compose %s: port %s not published (%s)" % (name, port, published))
        if worker in WORKERS:
            grace = int(env.get("CATALYST_SHUTDOWN_GRACE_MS", grace_ms(bin_dir)))
            stop = duration_s(svc.get("stop_grace_period", "10s"))
            if stop * 1000 < grace + 10000:
                problem("compose %s: stop_grace_period %ss is shorter than CATALYST_SHUTDOWN_GRACE_MS "
                        "%d ms + 10 s" % (name, stop, grace))
            deps = svc.get("depends_on") or {}
            for need in ("topics", "migrate"):
                if (deps.get(need) or {}).get("condition") != "service_completed_successfully":
                    problem("compose %s: does not wait for %s to complete" % (name, need))
        checked.append("compose " + name)
    for name in WORKERS:
        if name not in services:
            problem("compose: no service %s" % name)


# --- Kubernetes ---------------------------------------------------------------------

def containers_of(obj):
    spec = obj.get("spec", {})
    kind = obj["kind"]
    if kind in ("StatefulSet", "Deployment", "Job"):
        pod = spec["template"]["spec"]
    elif kind == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    else:
        return None, []
    return pod, pod.get("initContainers", []) + pod.get("containers", [])


def check_k8s(src, bin_dir, paths):
    parts = partitions(src)
    for path in paths:
        objs = [o for o in yaml.safe_load_all(open(path)) if o]
        by_kind = {}
        for o in objs:
            by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
        configmaps = by_kind.get("ConfigMap", {})
        config = configmaps.get("catalyst-config", {}).get("data", {})
        if not config:
            problem("%s: no ConfigMap catalyst-config" % path)
        for var in config:
            if not any(declared(bin_dir, b, var) for b in all_binaries(src)):
                problem("%s: ConfigMap key %s is no binary's setting" % (path, var))
        grace = int(config.get("CATALYST_SHUTDOWN_GRACE_MS", grace_ms(bin_dir)))
        secret_keys = set()
        for s in by_kind.get("Secret", {}).values():
            secret_keys |= set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
        images = set()

        for kind in ("StatefulSet", "Deployment", "Job", "CronJob"):
            for name, obj in sorted(by_kind.get(kind, {}).items()):
                pod, containers = containers_of(obj)
                for c in containers:
                    images.add(c.get("image"))
                    binary = (c.get("command") or [""])[0]
                    if not (binary.startswith("catalyst-") or binary == "topic-admin"):
                        problem("%s %s/%s: command %s is not a fleet binary" % (kind, name, c["name"], binary))
                        continue
                    env = {e["name"]: e for e in c.get("env", [])}
                    uses_config = any(f.get("configMapRef", {}).get("name") == "catalyst-config"
                                      for f in c.get("envFrom", []))
                    for var in env:
                        if var.startswith("CATALYST_") and not declared(bin_dir, binary, var):
                            problem("%s %s/%s: %s is not a setting of %s" % (kind, name, c["name"], var, binary))
                    for e in env.values():
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                        if ref and secret_keys and not ref.get("optional") and ref["key"] not in secret_keys:
                            problem("%s %s: Secret key %s is not in the Secret template" % (kind, name, ref["key"]))
                    # every required setting of the binary is given
                    for var in ("CATALYST_BROKERS",):
                        if declared(bin_dir, binary, var) and var not in env and not (uses_config and var in config):
                            problem("%s %s/%s: %s not set" % (kind, name, c["name"], var))
                    # (migrate's comes per container; publish needs it for dlq only)
                    if binary not in ("catalyst-migrate", "catalyst-publish") \
                            and declared(bin_dir, binary, "CATALYST_PG_URL") and "CATALYST_PG_URL" not in env:
                        problem("%s %s/%s: CATALYST_PG_URL not set" % (kind, name, c["name"]))
                    if kind == "CronJob":
                        for arg in c.get("command", []) + c.get("args", []):
                            for ref in re.findall(r"\$\(([A-Za-z0-9_]+)\)", arg):
                                if ref not in env:
                                    problem("CronJob %s: $(%s) is not in the container's env" % (name, ref))
                sc = pod.get("securityContext", {})
                if not sc.get("runAsNonRoot"):
                    problem("%s %s: runAsNonRoot is not set" % (kind, name))
                if kind != "StatefulSet":
                    continue
                # a worker
                worker = containers[-1]["command"][0][len("catalyst-"):]
                c = pod["containers"][0]
                env = {e["name"]: e for e in c.get("env", [])}
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                if tgps * 1000 < grace + 10000:
                    problem("StatefulSet %s: terminationGracePeriodSeconds %d < CATALYST_SHUTDOWN_GRACE_MS "
                            "%d ms + 10 s" % (name, tgps, grace))
                gid = (env.get("CATALYST_GROUP_INSTANCE_ID", {}).get("valueFrom") or {}).get("fieldRef", {})
                if gid.get("fieldPath") != "metadata.name":
                    problem("StatefulSet %s: CATALYST_GROUP_INSTANCE_ID is not the pod name" % name)
                port_var = "CATALYST_%s_PORT" % worker.upper()
                default = binary_help(bin_dir, "catalyst-" + worker)[1].get(port_var)
                port = env.get(port_var, {}).get("value", default)
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                if str(ports.get("http")) != str(port) or str(port) != str(default):
                    problem("StatefulSet %s: port http %s, %s %s, default %s"
                            % (name, ports.get("http"), port_var, port, default))
                for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = c.get(probe, {}).get("httpGet", {})
                    if get.get("path") != path_ or get.get("port") not in ("http", ports.get("http")):
                        problem("StatefulSet %s: %s is not GET %s on the http port" % (name, probe, path_))
                if "memory" not in c.get("resources", {}).get("limits", {}) or \
                        "memory" not in c.get("resources", {}).get("requests", {}):
                    problem("StatefulSet %s: no memory request and limit" % name)
                svc = by_kind.get("Service", {}).get(name)
                if not svc or svc["spec"].get("selector") != obj["spec"]["selector"]["matchLabels"] \
                        or obj["spec"].get("serviceName") != name:
                    problem("StatefulSet %s: no headless Service %s selecting its pods" % (name, name))
                elif [p["port"] for p in svc["spec"]["ports"] if p.get("name") == "http"] != [int(port)]:
                    problem("Service %s: port http is not %s" % (name, port))
                pdb = by_kind.get("PodDisruptionBudget", {}).get(name)
                if not pdb or pdb["spec"]["selector"]["matchLabels"] != obj["spec"]["selector"]["matchLabels"]:
                    problem("StatefulSet %s: no PodDisruptionBudget selecting its pods" % name)
                # autoscaling: never more replicas than partitions
                most = max(parts[t] for t in worker_topics(src, worker))
                so = by_kind.get("ScaledObject", {}).get(name)
                hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name)
                if not so and not hpa:
                    problem("StatefulSet %s: neither a ScaledObject nor an HPA" % name)
                for scaler, field in ((so, "maxReplicaCount"), (hpa, "maxReplicas")):
                    if not scaler:
                        continue
                    target = scaler["spec"]["scaleTargetRef"]
                    if (target.get("kind"), target.get("name")) != ("StatefulSet", name):
                        problem("%s %s: scales %s" % (scaler["kind"], name, target))
                    if scaler["spec"].get(field, 10**9) > most:
                        problem("%s %s: %s %s > %d partitions of %s" % (scaler["kind"], name, field,
                                scaler["spec"].get(field), most, worker_topics(src, worker)))
                if so:
                    for trig in so["spec"]["triggers"]:
                        meta = trig.get("metadata", {})
                        for key in ("bootstrapServersFromEnv", "consumerGroupFromEnv"):
                            var = meta.get(key)
                            if var and var not in env and var not in config:
                                problem("ScaledObject %s: %s %s is not in the worker's environment"
                                        % (name, key, var))
                        group_var = meta.get("consumerGroupFromEnv")
                        if group_var and not declared(bin_dir, "catalyst-" + worker, group_var):
                            problem("ScaledObject %s: %s is not the worker's group setting" % (name, group_var))
                checked.append("%s: %s" % (os.path.basename(path), name))
        for o in by_kind.get("NetworkPolicy", {}).values():
            for rule in o["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if p.get("port") != "http":
                        problem("NetworkPolicy %s: ingress to port %s" % (o["metadata"]["name"], p.get("port")))
                # only Prometheus (pods of a namespace) and the kubelet (the nodes' CIDR)
                peers = rule.get("from", [])
                if not peers:
                    problem("NetworkPolicy %s: ingress from anywhere" % o["metadata"]["name"])
                for peer in peers:
                    if "ipBlock" in peer:
                        try:
                            net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                        except ValueError as e:
                            problem("NetworkPolicy %s: ipBlock %s" % (o["metadata"]["name"], e))
                            continue
                        if net.prefixlen == 0:
                            problem("NetworkPolicy %s: ipBlock %s admits everyone" % (o["metadata"]["name"], net))
                    elif not (peer.get("namespaceSelector", {}).get("matchLabels") and
                              peer.get("podSelector", {}).get("matchLabels")):
                        problem("NetworkPolicy %s: ingress from %s: not pods of one namespace"
                                % (o["metadata"]["name"], peer))
        if len(images) != 1:
            problem("%s: containers use %d images: %s" % (path, len(images), sorted(map(str, images))))
        for so_name in by_kind.get("ScaledObject", {}):
            if so_name not in by_kind.get("StatefulSet", {}):
                problem("ScaledObject %s scales no StatefulSet of the render" % so_name)


# --- Dockerfile ------------------------------------------------------------------------

def apt_list(run_line):
    m = re.search(r"apt-get install -y --no-install-recommends(.*?)(&&|$)", run_line, re.S)
    return set(m.group(1).replace("\\", " ").split()) if m else set()


def check_dockerfile(src, bin_dir):
    text = open(os.path.join(src, "Dockerfile")).read()
    joined = re.sub(r"\\\n", " ", text)
    stages = re.split(r"^FROM ", joined, flags=re.M)[1:]
    if len(stages) != 2:
        problem("Dockerfile: %d stages, expected build and runtime" % len(stages))
        return
    build, runtime = stages
    build_pkgs = set()
    runtime_pkgs = set()
    for line in build.splitlines():
        build_pkgs |= apt_list(line)
    for line in runtime.splitlines():
        runtime_pkgs |= apt_list(line)

    # the build stage has what .ci/install installs to build (not the
    # sanitizer build's clang)
    ci = open(os.path.join(src, ".ci/install")).read()
    m = re.search(r"# build\n(.*?)# scripts/stack", ci, re.S)
    ci_build = set(m.group(1).split()) - {"clang", "libclang-rt-14-dev"} if m else set()
    if not ci_build:
        problem(".ci/install: no '# build' package group")
    for pkg in sorted(ci_build - build_pkgs):
        problem("Dockerfile build stage lacks %s (.ci/install builds with it)" % pkg)

    # the binaries the image ships, and the packages of the libraries they load
    m = re.search(r"install -m 0755 -s (.*?) /out/", joined)
    shipped = m.group(1).split() if m else []
    if not shipped:
        problem("Dockerfile: no 'install -m 0755 -s ... /out/' of the binaries")
    for b in all_binaries(src):
        if b not in shipped:
            problem("Dockerfile: the image lacks %s" % b)
    base = {"libc6", "libgcc-s1"}
    for b in shipped:
        path = os.path.join(bin_dir, b)
        out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True)
        for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out.stdout):
            pkg = library_package(soname)
            if pkg is None:
                problem("%s: no Debian package provides %s" % (b, soname))
            elif pkg not in runtime_pkgs | base:
                problem("%s needs %s (package %s), not installed in the runtime stage" % (b, soname, pkg))
    # pg_dump/psql paths match the client package's major version
    client = [p for p in runtime_pkgs if re.fullmatch(r"postgresql-client-\d+", p)]
    if len(client) != 1:
        problem("Dockerfile runtime stage: no postgresql-client-N (catalyst-backup runs pg_dump)")
    else:
        major = client[0].rsplit("-", 1)[1]
        for var in ("CATALYST_BACKUP_PG_DUMP", "CATALYST_BACKUP_PSQL"):
            m = re.search(var + r"=(\S+)", runtime)
            if not m or not m.group(1).startswith("/usr/lib/postgresql/%s/bin/" % major):
                problem("Dockerfile: %s is not under /usr/lib/postgresql/%s/bin" % (var, major))
    m = re.search(r"COPY migrations (\S+)", runtime)
    env = re.search(r"CATALYST_MIGRATIONS_DIR=(\S+)", runtime)
    if not m or not env or m.group(1).rstrip("/") != env.group(1).rstrip("/"):
        problem("Dockerfile: CATALYST_MIGRATIONS_DIR is not where migrations/ is copied")
    user = re.search(r"^USER (\S+)", runtime, re.M)
    if not user or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user.group(1)):
        problem("Dockerfile: the runtime stage's USER is not a numeric non-root user")

    # every COPY from the context is let in by .dockerignore (an allow-list)
    allowed = [l[1:].rstrip("/") for l in open(os.path.join(src, ".dockerignore")).read().splitlines()
               if l.startswith("!")]
    for m in re.finditer(r"^COPY (?!--from)(.+) \S+$", joined, re.M):
        for source in m.group(1).split():
            source = source.rstrip("/")
            if not os.path.exists(os.path.join(src, source)):
                problem("Dockerfile: COPY %s: no such file" % source)
            if not any(source == a or source.startswith(a + "/") for a in allowed):
                problem("Dockerfile: COPY %s is excluded by .dockerignore" % source)
    checked.append("Dockerfile: %d binaries, %d runtime packages" % (len(shipped), len(runtime_pkgs)))


_packages = None


def library_package(soname):
    """The Debian package of the library the dynamic linker finds for soname."""
    global _packages
    if _packages is None:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        paths = {}
        for name, path in re.findall(r"^\s+(\S+) \(libc6,x86-64[^)]*\) => (\S+)$", out, re.M):
            paths.setdefault(name, path)
        # one dpkg -S for every path (it reads every package's file list);
        # /lib and /usr/lib are the same directory (merged /usr), dpkg knows one
        candidates = set()
        for path in paths.values():
            real = os.path.realpath(path)
            for p in (path, real):
                candidates |= {p, p.replace("/usr/lib/", "/lib/", 1), p.replace("/lib/", "/usr/lib/", 1)}
        out = subprocess.run(["dpkg", "-S"] + sorted(candidates), capture_output=True, text=True).stdout
        owner = {}
        for line in out.splitlines():
            pkg, _, path = line.partition(": ")
            owner[path] = pkg.split(":")[0]
        _packages = {}
        for name, path in paths.items():
            real = os.path.realpath(path)
            for p in (path, real):
                for c in (p, p.replace("/usr/lib/", "/lib/", 1), p.replace("/lib/", "/usr/lib/", 1)):
                    if c in owner:
                        _packages.setdefault(name, owner[c])
    return _packages.get(soname)


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    what, src, bin_dir = argv[1], argv[2], argv[3]
    if what == "compose":
        check_compose(src, bin_dir, argv[4])
    elif what == "k8s":
        check_k8s(src, bin_dir, argv[4:])
    elif what == "dockerfile":
        check_dockerfile(src, bin_dir)
    else:
        sys.exit(__doc__)
    for p in problems:
        print("deploy_check: " + p)
    if problems:
        sys.exit(1)
    print("deploy_check %s: %d checked (%s)" % (what, len(checked), ", ".join(checked)))


if __name__ == "__main__":
    main(sys.argv)
