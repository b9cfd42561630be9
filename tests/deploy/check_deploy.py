#!/usr/bin/env python3
"""Checks the files of deploy/ that cannot be run on a machine without a container engine.

Run by tests/suites/deploy.sh inside the test venv (pyyaml, check-jsonschema,
kubernetes-validate, dockerfile). Schema validation is done by real validators:

* compose.yaml against the official compose-spec JSON schema (vendored in the
  check-jsonschema package, `--builtin-schema vendor.compose-spec`);
* the Kubernetes manifests against the Kubernetes OpenAPI-derived JSON schemas shipped by
  kubernetes-validate, in strict mode (unknown fields are errors), for the oldest and the
  newest Kubernetes version we support;
* the Dockerfile with the `dockerfile` package (BuildKit's own Go parser).

On top of the schemas it checks that the files agree with each other and with relais
(names, ports, probes, secrets only as placeholders), the mistakes a schema cannot see.
Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import dockerfile
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VENV_BIN = Path(sys.executable).parent
# Oldest Kubernetes minor we claim to support, and the newest the validator knows.
K8S_VERSIONS = ["1.29.0", None]
ENV_KEY = re.compile(r"^RELAIS_[A-Z0-9_]+__[A-Z0-9_]+(__[A-Z0-9_]+)*$")
SECRET_WORDS = ("SECRET", "TOKEN", "AUTHORIZATION", "PASSWORD")
DOCKERFILE_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def run_validator(args: list[str], where: str) -> None:
    """Runs a validator CLI; its non-zero exit is a problem, reported with its output."""
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        problem(where, f"{Path(args[0]).name} failed:\n{output}")


def load_yaml_docs(path: Path) -> list[dict]:
    try:
        with path.open() as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        problem(rel(path), f"not valid YAML: {e}")
        return []


def url_host_port(url: str) -> tuple[str, int] | None:
    m = re.match(r"^redis://(?:[^@/]*@)?([^:/]+):(\d+)", url)
    return (m.group(1), int(m.group(2))) if m else None


# ---------------------------------------------------------------- Dockerfile
def check_dockerfile() -> None:
    path = DEPLOY / "Dockerfile"
    where = rel(path)
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        problem(where, f"does not parse: {e}")
        return
    stages: list[dict] = []
    args: dict[str, str] = {}
    for c in commands:
        if c.cmd not in DOCKERFILE_INSTRUCTIONS:
            problem(where, f"line {c.start_line}: unknown instruction {c.cmd}")
        if c.cmd == "ARG" and not stages:
            for v in c.value:
                k, _, d = v.partition("=")
                args[k] = d
        if c.cmd == "FROM":
            value = list(c.value)
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
            stages.append({"image": value[0], "name": name, "commands": []})
        elif stages:
            stages[-1]["commands"].append(c)
        elif c.cmd != "ARG":
            problem(where, f"line {c.start_line}: {c.cmd} before the first FROM")
    if len(stages) < 2:
        problem(where, "expected a multi-stage build (builder + runtime)")
        return

    for st in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), st["image"])
        if ":" not in image or image.endswith(":latest") or image.endswith(":"):
            problem(where, f"base image {st['image']!r} is not pinned to a tag")

    rust_version = args.get("RUST_VERSION")
    declared = re.search(r'^rust-version\s*=\s*"([\d.]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    if rust_version and declared:
        as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
        if as_tuple(rust_version) < as_tuple(declared.group(1)):
            problem(where, f"RUST_VERSION {rust_version} is older than Cargo.toml rust-version {declared.group(1)}")

    builder, runtime = stages[0], stages[-1]
    runs = [" ".join(c.value) for c in builder["commands"] if c.cmd == "RUN"]
    builds = [r for r in runs if "cargo build --release --locked" in r]
    if len(builds) < 2:
        problem(where, "builder: expected a dependency layer and a source layer, both `cargo build --release --locked`")
    # C libraries a dependency links against must be in the (slim) builder image.
    lock = (ROOT / "Cargo.lock").read_text()
    builder_runs = " ".join(runs)
    for crate, packages in (("openssl-sys", ("libssl-dev", "pkg-config")),):
        if f'name = "{crate}"' in lock and not all(p in builder_runs for p in packages):
            problem(where, f"builder: Cargo.lock has {crate}; install {' '.join(packages)} first")
    ignore = dockerignore_patterns()
    for c in builder["commands"]:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if src == ".":
                    continue
                if not (ROOT / src).exists():
                    problem(where, f"line {c.start_line}: COPY source {src} does not exist")
                elif is_ignored(src, ignore):
                    problem(where, f"line {c.start_line}: COPY source {src} is excluded by .dockerignore")

    rc = {c.cmd: c for c in runtime["commands"]}
    copies = [c for c in runtime["commands"] if c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags)]
    if not copies or not any(f == f"--from={builder['name']}" for c in copies for f in c.flags):
        problem(where, "runtime: the binary must be copied from the builder stage")
    elif not any(c.value[-1] == "/usr/local/bin/relais" for c in copies):
        problem(where, "runtime: relais must be installed as /usr/local/bin/relais")
    user = rc.get("USER")
    if user is None or user.value[0].split(":")[0] in ("0", "root"):
        problem(where, "runtime: must run as a non-root USER")
    elif not user.value[0].split(":")[0].isdigit():
        problem(where, "runtime: USER should be numeric (Kubernetes runAsNonRoot checks it)")
    env = {}
    for c in runtime["commands"]:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2]))
    for k in env:
        if k.startswith("RELAIS_") and not ENV_KEY.match(k):
            problem(where, f"ENV {k} is not a RELAIS_<SECTION>__<KEY> variable")
    listen = env.get("RELAIS_SERVER__LISTEN", "")
    if not listen.startswith("0.0.0.0:"):
        problem(where, "runtime: RELAIS_SERVER__LISTEN must be 0.0.0.0:<port> in a container")
    port = listen.rpartition(":")[2]
    if "EXPOSE" not in rc or port not in [p.split("/")[0] for p in rc["EXPOSE"].value]:
        problem(where, f"runtime: EXPOSE {port or '?'} (the listen port) is missing")
    state = env.get("RELAIS_SERVER__STATE_DIR")
    if not state or "VOLUME" not in rc or state not in rc["VOLUME"].value:
        problem(where, "runtime: RELAIS_SERVER__STATE_DIR must be set and be a VOLUME")
    hc = rc.get("HEALTHCHECK")
    if hc is None or not any(f"127.0.0.1:{port}/healthz" in v for v in hc.value):
        problem(where, f"runtime: HEALTHCHECK must probe http://127.0.0.1:{port}/healthz")
    elif hc.value[0] == "CMD" and hc.value[1] not in " ".join(
        " ".join(c.value) for c in runtime["commands"] if c.cmd == "RUN"
    ):
        problem(where, f"runtime: HEALTHCHECK tool {hc.value[1]} is not installed in the runtime stage")
    if "ENTRYPOINT" not in rc or not rc["ENTRYPOINT"].json or list(rc["ENTRYPOINT"].value) != ["relais"]:
        problem(where, 'runtime: ENTRYPOINT ["relais"] expected')
    if "CMD" not in rc or not rc["CMD"].json or list(rc["CMD"].value) != ["serve"]:
        problem(where, 'runtime: CMD ["serve"] expected')


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        problem(".dockerignore", "missing at the repository root")
        return []
    pats = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    for must in ("target", ".git"):
        if must not in pats:
            problem(".dockerignore", f"must exclude {must}")
    return pats


def is_ignored(src: str, patterns: list[str]) -> bool:
    src = src.strip("/")
    return any(
        fnmatch.fnmatch(src, p.strip("/")) or fnmatch.fnmatch(src, p.strip("/").replace("**/", ""))
        or src.startswith(p.strip("/") + "/")
        for p in patterns if not p.startswith("!")
    )


# ---------------------------------------------------------------- nginx
def nginx_blocks(text: str) -> dict[str, list[str]]:
    """Directives of an nginx file by block: '' for the top level, else the block header
    (e.g. 'location = /.well-known/mercure'). Enough for our own flat files."""
    text = re.sub(r"#[^\n]*", "", text)
    blocks: dict[str, list[str]] = {"": []}
    stack = [""]
    for token in re.findall(r"[^;{}]+[;{]|}", text):
        token = " ".join(token.split())
        if token == "}":
            if len(stack) == 1:
                raise ValueError("unbalanced }")
            stack.pop()
        elif token.endswith("{"):
            header = token[:-1].strip()
            stack.append(header)
            blocks.setdefault(header, [])
        else:
            blocks[stack[-1]].append(token[:-1].strip())
    if len(stack) != 1:
        raise ValueError("unclosed block")
    return blocks


def seconds(value: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    if not m:
        return -1
    return int(m.group(1)) * {"ms": 0, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def check_nginx() -> None:
    path = DEPLOY / "nginx" / "relais.conf"
    where = rel(path)
    try:
        blocks = nginx_blocks(path.read_text())
        main = nginx_blocks((DEPLOY / "nginx" / "nginx.conf").read_text())
    except ValueError as e:
        problem(where, str(e))
        return
    top = blocks[""]
    for need in ("proxy_http_version 1.1", 'proxy_set_header Connection ""', "client_max_body_size 1m",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
                 "proxy_set_header X-Forwarded-Proto $scheme", "proxy_set_header Host $host"):
        if need not in top:
            problem(where, f"server level: `{need};` expected")
    sse = blocks.get("location = /.well-known/mercure")
    if sse is None:
        problem(where, "no `location = /.well-known/mercure` block")
        return
    for need in ("proxy_pass http://relais", "proxy_buffering off", "proxy_cache off", "gzip off",
                 "chunked_transfer_encoding on"):
        if need not in sse:
            problem(where, f"event streams: `{need};` expected")
    timeouts = [seconds(d.split()[1]) for d in sse if d.startswith("proxy_read_timeout ")]
    # Heartbeats come every 15 s: the timeout must be well above that.
    if not timeouts or timeouts[0] < 300:
        problem(where, "event streams: proxy_read_timeout of at least 5m expected (heartbeat is 15 s)")
    for header, directives in blocks.items():
        if header.startswith("location") and not any(d.startswith("proxy_pass http://relais") or d == "deny all" for d in directives):
            problem(where, f"{header}: neither proxied to relais nor denied")
    server = [h for h in main if h == "server"]
    if not server or "include relais.conf" not in main["server"]:
        problem("deploy/nginx/nginx.conf", "a server block must include relais.conf")
    if "include relais-upstream.conf" not in main.get("http", []):
        problem("deploy/nginx/nginx.conf", "the http block must include relais-upstream.conf")
    upstream = nginx_blocks((DEPLOY / "nginx" / "relais-upstream.conf").read_text())
    if "upstream relais" not in upstream or not any(d.startswith("keepalive ") for d in upstream["upstream relais"]):
        problem("deploy/nginx/relais-upstream.conf", "upstream relais with keepalive expected")


# ---------------------------------------------------------------- compose
def check_compose() -> None:
    path = DEPLOY / "compose.yaml"
    where = rel(path)
    run_validator([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)], where)
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        problem(where, "expected exactly one YAML document")
        return
    services = docs[0].get("services") or {}
    relais = {n: s for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"}
    if len(relais) < 2:
        problem(where, "expected at least two relais services built from deploy/Dockerfile")
    for name in ("redis", "nginx"):
        if name not in services:
            problem(where, f"service {name} is missing")
    secrets = set()
    listen_ports = set()
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.partition("=")[::2] for e in env)
        for key, value in env.items():
            value = "" if value is None else str(value)
            if key.startswith("RELAIS_") and not ENV_KEY.match(key):
                problem(where, f"{name}: {key} is not a RELAIS_<SECTION>__<KEY> variable")
            if any(w in key for w in SECRET_WORDS) and not re.fullmatch(r"\$\{\w+:\?[^}]*\}", value):
                problem(where, f"{name}: {key} must come from the environment as ${{VAR:?message}}, never a literal")
        if name in relais:
            if "RELAIS_JWT__SECRET" not in env:
                problem(where, f"{name}: RELAIS_JWT__SECRET (shared by every instance) is missing")
            secrets.add(env.get("RELAIS_JWT__SECRET"))
            hp = url_host_port(str(env.get("RELAIS_REDIS__URL", "")))
            if hp is None or hp[0] not in services:
                problem(where, f"{name}: RELAIS_REDIS__URL must point at the redis service")
            listen = str(env.get("RELAIS_SERVER__LISTEN", ""))
            if not listen.startswith("0.0.0.0:"):
                problem(where, f"{name}: RELAIS_SERVER__LISTEN must be 0.0.0.0:<port>")
            listen_ports.add(listen.rpartition(":")[2])
            test = " ".join((svc.get("healthcheck") or {}).get("test") or [])
            if "/readyz" not in test and "/healthz" not in test:
                problem(where, f"{name}: healthcheck must probe /readyz or /healthz")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problem(where, f"{name}: depends_on unknown service {dep}")
            elif (cond or {}).get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problem(where, f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (DEPLOY / src).exists():
                    problem(where, f"{name}: bind-mounted {src} does not exist")
            elif src and src not in (docs[0].get("volumes") or {}):
                problem(where, f"{name}: volume {src} is not declared")
    if len(secrets) > 1:
        problem(where, "all relais instances must share one RELAIS_JWT__SECRET")
    redis = services.get("redis") or {}
    if "appendonly" not in " ".join(map(str, redis.get("command") or [])):
        problem(where, "redis: --appendonly yes expected")
    # nginx's upstreams are exactly the relais services, on their listen port.
    upstream = (DEPLOY / "nginx" / "relais-upstream.conf").read_text()
    servers = set(re.findall(r"^\s*server\s+([^\s;]+)", upstream, re.M))
    expected = {f"{n}:{p}" for n in relais for p in listen_ports}
    if servers != expected:
        problem("deploy/nginx/relais-upstream.conf", f"upstream servers {sorted(servers)} != relais services {sorted(expected)}")
    example = DEPLOY / ".env.example"
    if not example.exists() or not re.search(r"^RELAIS_JWT__SECRET=$", example.read_text(), re.M):
        problem(rel(example), "must exist and leave RELAIS_JWT__SECRET empty")


# ---------------------------------------------------------------- Kubernetes
def check_kubernetes() -> None:
    kust_path = K8S / "kustomization.yaml"
    kust = (load_yaml_docs(kust_path) or [{}])[0]
    if kust.get("kind") != "Kustomization" or not str(kust.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        problem(rel(kust_path), "not a Kustomization")
    allowed = {"apiVersion", "kind", "namespace", "labels", "commonLabels", "resources", "images",
               "configMapGenerator", "secretGenerator", "patches", "replicas", "namePrefix", "nameSuffix"}
    for key in set(kust) - allowed:
        problem(rel(kust_path), f"unexpected key {key}")
    listed = kust.get("resources") or []
    manifests = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    optional = {"secret.example.yaml", "ingress.yaml"}
    for r in listed:
        if not (K8S / r).is_file():
            problem(rel(kust_path), f"resource {r} does not exist")
    for p in manifests:
        if p.name not in listed and p.name not in optional:
            problem(rel(kust_path), f"{p.name} is not listed in resources")
        if p.name in listed and p.name in optional:
            problem(rel(kust_path), f"{p.name} must not be applied by default")

    for version in K8S_VERSIONS:
        args = [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", "--no-warn"]
        if version:
            args += ["-k", version]
        run_validator(args + [str(p) for p in manifests], f"deploy/kubernetes (Kubernetes {version or 'latest'})")

    objects = []
    for p in manifests:
        for d in load_yaml_docs(p):
            objects.append((p, d))
    by_kind: dict[str, list[dict]] = {}
    for p, d in objects:
        by_kind.setdefault(d.get("kind"), []).append(d)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    service_names = {s["metadata"]["name"] for s in by_kind.get("Service", [])}

    def matches(selector: dict, labels: dict) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    for svc in by_kind.get("Service", []):
        name = svc["metadata"]["name"]
        targets = [w for w in workloads if matches(svc["spec"].get("selector", {}), w["spec"]["template"]["metadata"].get("labels", {}))]
        if not targets:
            problem("deploy/kubernetes", f"Service {name} selects no pod template")
        for port in svc["spec"].get("ports", []):
            tp = port.get("targetPort", port.get("port"))
            for w in targets:
                cports = [cp for c in w["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])]
                if not any(tp in (cp.get("name"), cp.get("containerPort")) for cp in cports):
                    problem("deploy/kubernetes", f"Service {name}: targetPort {tp} is not a port of {w['metadata']['name']}")
    for w in workloads:
        sel = w["spec"]["selector"]["matchLabels"]
        if not matches(sel, w["spec"]["template"]["metadata"].get("labels", {})):
            problem("deploy/kubernetes", f"{w['kind']} {w['metadata']['name']}: selector does not match its template labels")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(matches(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]) for w in workloads):
            problem("deploy/kubernetes", f"PodDisruptionBudget {pdb['metadata']['name']} selects nothing")

    # The Ingress routes only public paths: never /metrics (nor a catch-all prefix).
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"].get("rules", []):
            for p in (rule.get("http") or {}).get("paths", []):
                path = p.get("path", "/")
                if path in ("/", "") or path.startswith("/metrics") or p.get("pathType") == "ImplementationSpecific":
                    problem("deploy/kubernetes", f"Ingress {ing['metadata']['name']}: path {path!r} would expose /metrics")

    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    for name, s in secrets.items():
        for key, value in (s.get("stringData") or {}).items():
            if any(w in key for w in SECRET_WORDS) and "REPLACE-ME" not in str(value):
                problem("deploy/kubernetes", f"Secret {name}: {key} must be a REPLACE-ME placeholder")
        if s.get("data"):
            problem("deploy/kubernetes", f"Secret {name}: use stringData placeholders, not data")
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "relais"]
    if not deployments:
        problem("deploy/kubernetes", "Deployment relais is missing")
        return
    dep = deployments[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas", 1) < 2:
        problem("deploy/kubernetes", "Deployment relais: several replicas expected")
    container = next((c for c in pod["containers"] if c["name"] == "relais"), None)
    if container is None:
        problem("deploy/kubernetes", "Deployment relais: no container named relais")
        return
    port_names = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in port_names:
            problem("deploy/kubernetes", f"Deployment relais: {probe} must GET {path} on a container port")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    for key in env:
        if key.startswith("RELAIS_") and not ENV_KEY.match(key):
            problem("deploy/kubernetes", f"Deployment relais: {key} is not a RELAIS_<SECTION>__<KEY> variable")
        if any(w in key for w in SECRET_WORDS) and env[key] is not None:
            problem("deploy/kubernetes", f"Deployment relais: {key} must come from a Secret")
    listen = env.get("RELAIS_SERVER__LISTEN") or ""
    if not listen.startswith("0.0.0.0:") or int(listen.rpartition(":")[2]) not in port_names:
        problem("deploy/kubernetes", "Deployment relais: RELAIS_SERVER__LISTEN must be 0.0.0.0:<containerPort>")
    hp = url_host_port(env.get("RELAIS_REDIS__URL") or "")
    if hp is None or hp[0] not in service_names:
        problem("deploy/kubernetes", "Deployment relais: RELAIS_REDIS__URL must name the redis Service")
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})]
    for ref in refs:
        if ref not in secrets:
            problem("deploy/kubernetes", f"Deployment relais: Secret {ref} has no example in secret.example.yaml")
        elif "RELAIS_JWT__SECRET" not in (secrets[ref].get("stringData") or {}):
            problem("deploy/kubernetes", f"Secret {ref}: RELAIS_JWT__SECRET (shared by every replica) is missing")
    if not refs:
        problem("deploy/kubernetes", "Deployment relais: the JWT secret must come from a Secret")
    sc = container.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) or not sc.get("readOnlyRootFilesystem"):
        problem("deploy/kubernetes", "Deployment relais: runAsNonRoot and readOnlyRootFilesystem expected")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if env.get("RELAIS_SERVER__STATE_DIR") not in mounts:
        problem("deploy/kubernetes", "Deployment relais: the state dir must be a mounted volume (read-only root)")
    if not (container.get("resources") or {}).get("requests"):
        problem("deploy/kubernetes", "Deployment relais: resource requests expected")
    pre = (((container.get("lifecycle") or {}).get("preStop")) or {})
    cmd = (pre.get("exec") or {}).get("command") or []
    sleep = pre.get("sleep", {}).get("seconds") if "sleep" in pre else (int(cmd[1]) if cmd[:1] == ["sleep"] else None)
    if sleep is None:
        problem("deploy/kubernetes", "Deployment relais: a preStop sleep is expected (endpoint removal)")
    elif pod.get("terminationGracePeriodSeconds", 30) <= sleep + 10:
        problem("deploy/kubernetes", "Deployment relais: terminationGracePeriodSeconds must leave time after preStop")
    image = container["image"].split(":")[0]
    if not any(i.get("name") == image for i in kust.get("images") or []):
        problem(rel(kust_path), f"images: no entry for the container image {image}")


def main() -> int:
    os.chdir(ROOT)
    for check in (check_dockerfile, check_nginx, check_compose, check_kubernetes):
        before = len(problems)
        try:
            check()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            problem(check.__name__, f"unexpected structure: {type(e).__name__}: {e}")
        status = "ok" if len(problems) == before else "FAILED"
        print(f"  {check.__name__.removeprefix('check_')}: {status}")
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
