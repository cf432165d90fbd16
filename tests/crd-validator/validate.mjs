// Reads a JSON array of Kubernetes objects on stdin and validates each custom resource whose apiVersion/kind
// has a model in the installed @kubernetes-models packages (their schemas are generated from the operators'
// CRDs). Prints a JSON array of {kind, name, status: "valid"|"invalid"|"unknown", error}.
import { readFileSync } from "node:fs";

const MODELS = {
  "monitoring.coreos.com/v1": () => import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"),
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const row = { kind: obj.kind, name: obj.metadata?.name, apiVersion: obj.apiVersion };
  const load = MODELS[obj.apiVersion];
  const module = load ? await load() : null;
  const Model = module?.[obj.kind];
  if (!Model) {
    results.push({ ...row, status: "unknown" });
    continue;
  }
  try {
    new Model(obj).validate();
    results.push({ ...row, status: "valid" });
  } catch (error) {
    results.push({ ...row, status: "invalid", error: String(error.message) });
  }
}
process.stdout.write(JSON.stringify(results));
