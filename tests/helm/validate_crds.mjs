// Validates ServiceMonitor and PrometheusRule objects (JSON lines on stdin) against the schemas of
// the published prometheus-operator CRDs, as compiled by @kubernetes-models/prometheus-operator.
// Prints "ok <kind>" or "invalid <kind>: <reason>" per object; exits 1 if any is invalid.
// Usage: node validate_crds.mjs NODE_MODULES_DIR < objects.jsonl
import { createInterface } from "node:readline";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const v1 = join(process.argv[2], "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const load = async (kind) => (await import(pathToFileURL(join(v1, `${kind}.js`)).href))[kind];
const models = { ServiceMonitor: await load("ServiceMonitor"), PrometheusRule: await load("PrometheusRule") };
let failed = false;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const object = JSON.parse(line);
  try {
    new models[object.kind](object).validate();
    console.log(`ok ${object.kind}`);
  } catch (error) {
    failed = true;
    console.log(`invalid ${object.kind}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
