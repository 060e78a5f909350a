"""The Kubernetes manifests in deploy/kubernetes/, checked without a
cluster: yamllint, every object read into python3-kubernetes' models and
written back unchanged (a misspelt or misplaced field would be dropped on
the way), and the pieces that must fit together: fsGroup and the key's
defaultMode, the state path, the stop timings, the selectors.  The relay
itself checks the ConfigMap's configuration (--check-config)."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import CERTS, RELAY_BIN, TESTS_SRCDIR, done, eq, ok, require, tempdir  # noqa: E402

TOP = os.path.dirname(TESTS_SRCDIR)
KDIR = os.path.join(TOP, "deploy", "kubernetes")
try:
    import yaml
    import kubernetes.client
    missing = None if shutil.which("yamllint") else "no yamllint"
except ImportError as e:
    missing = "%s (apt-get install python3-yaml python3-kubernetes yamllint)" % e
require(missing, "Kubernetes manifest check")

YAMLLINT = ("{extends: default, rules: {line-length: {max: 100}, document-start: disable, "
            "comments: {min-spaces-from-content: 1}}}")
files = sorted(os.path.join(KDIR, f) for f in os.listdir(KDIR) if f.endswith(".yaml"))
p = subprocess.run(["yamllint", "-f", "parsable", "-d", YAMLLINT] + files,
                   capture_output=True, text=True, timeout=60)
eq((p.returncode, p.stdout), (0, ""), "yamllint finds nothing in %d files" % len(files))

docs = []
for f in files:
    with open(f) as fh:
        docs += [d for d in yaml.safe_load_all(fh) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)


def model_name(doc):
    group_version = doc["apiVersion"].split("/")
    version = group_version[-1]
    return "V1" + doc["kind"] if version == "v1" else None


def drop_empty(x):
    if isinstance(x, dict):
        return {k: drop_empty(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [drop_empty(v) for v in x]
    return x


class Resp:   # what ApiClient.deserialize reads from
    def __init__(self, data):
        import json
        self.data = json.dumps(data)


api = kubernetes.client.ApiClient()
for d in docs:
    name = "%s/%s" % (d["kind"], d["metadata"]["name"])
    if d["apiVersion"].startswith("monitoring.coreos.com/"):
        continue   # a CRD: checked by hand below
    model = model_name(d)
    if not ok(model and hasattr(kubernetes.client, model), "%s has a model in python3-kubernetes" % name):
        continue
    try:
        obj = api.deserialize(Resp(d), model)
        back = drop_empty(api.sanitize_for_serialization(obj))
    except (ValueError, TypeError) as e:
        ok(False, "%s is a valid %s" % (name, model), e)
        continue
    eq(back, d, "%s reads into %s and back unchanged (no unknown field)" % (name, model))

sts = by_kind["StatefulSet"][0]
pod = sts["spec"]["template"]["spec"]
ctr = pod["containers"][0]
labels = sts["spec"]["template"]["metadata"]["labels"]
sc = pod["securityContext"]
secret = [v for v in pod["volumes"] if "secret" in v][0]["secret"]
mode = secret["defaultMode"]
ok(sc.get("fsGroup") and sc.get("runAsNonRoot") and sc.get("runAsUser", 0) != 0,
   "the pod runs as a non-root user with an fsGroup", sc)
ok(mode & 0o040 and not mode & 0o007,
   "the key's defaultMode (%o) lets the fsGroup read it and others not" % mode)

conf_text = by_kind["ConfigMap"][0]["data"]["watchrtc-relay.conf"]
conf = dict(re.findall(r"^([a-z0-9-]+) = (.*)$", conf_text, re.M))
mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
ok(conf.get("state-dir") in mounts and mounts[conf["state-dir"]]["name"] in
   [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]],
   "the config's state-dir is the queue volume's mount", conf)
ok(any(a == "--config=" + p and mounts.get(p, {}).get("subPath") for a in ctr["args"]
       for p in mounts), "the relay reads the mounted config file", ctr["args"])
ok(os.path.dirname(conf["tls-key"]) in mounts, "the key is on the Secret's mount")

pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
eq(pre_stop[0], "sleep", "preStop waits for the endpoints to drop the pod")
need_s = int(pre_stop[1]) + int(conf["shutdown-deadline-ms"]) / 1000 + 5
ok(pod["terminationGracePeriodSeconds"] >= need_s,
   "terminationGracePeriodSeconds (%d) covers preStop + shutdown-deadline-ms + 5 s (%g)"
   % (pod["terminationGracePeriodSeconds"], need_s))

pdb = by_kind["PodDisruptionBudget"][0]
eq(pdb["spec"]["selector"]["matchLabels"], labels, "the PodDisruptionBudget selects the relays")
for svc in by_kind["Service"]:
    eq(svc["spec"]["selector"], labels, "Service %s selects the relays" % svc["metadata"]["name"])
smon = by_kind["ServiceMonitor"][0]
sel = smon["spec"]["selector"]["matchLabels"]
chosen = [s for s in by_kind["Service"] if all(s["metadata"].get("labels", {}).get(k) == v
                                               for k, v in sel.items())]
ok(len(chosen) == 1 and {e["port"] for e in smon["spec"]["endpoints"]} <=
   {pt["name"] for pt in chosen[0]["spec"]["ports"]},
   "the ServiceMonitor selects one Service and scrapes a port it names")
admin_port = int(conf["admin-listen"].rsplit(":", 1)[1])
ok(any(pt["containerPort"] == admin_port and pt["name"] == "metrics" for pt in ctr["ports"]),
   "the metrics port is admin-listen's")

# The relay accepts the ConfigMap's configuration, paths moved to a temp dir.
d = tempdir("relay-k8s-")
shutil.copy(os.path.join(CERTS, "server.pem"), os.path.join(d, "tls.crt"))
shutil.copy(os.path.join(CERTS, "server-key.pem"), os.path.join(d, "tls.key"))
os.chmod(os.path.join(d, "tls.key"), mode)
text = (conf_text.replace(conf["state-dir"], os.path.join(d, "state"))
        .replace(os.path.dirname(conf["tls-key"]), d))
with open(os.path.join(d, "relay.conf"), "w") as f:
    f.write(text)
p = subprocess.run([RELAY_BIN, "--config", os.path.join(d, "relay.conf"), "--check-config"],
                   capture_output=True, text=True, timeout=30)
eq((p.returncode, p.stdout.strip()), (0, "configuration ok"),
   "the relay accepts the ConfigMap's settings, key mode %o included" % mode)
done()
