// Validates Kubernetes objects (a JSON array on stdin) against the API
// schemas bundled in kubernetes-models (and the cert-manager and
// prometheus-operator CRDs), offline. Prints one line per object; exit 1
// if any is invalid or of a kind with no schema here.
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

// The packages are ES modules: import their files by path from K8S_TOOLS.
const modules = process.env.K8S_TOOLS + "/node_modules";
const crdPackages = {
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const pkg = crdPackages[group] ?? "kubernetes-models";
  const path = `${modules}/${pkg}/${group ? group + "/" : ""}${version}/${obj.kind}.js`;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  if (!existsSync(path)) {
    console.log(`INVALID ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  const Model = (await import(pathToFileURL(path).href))[obj.kind];
  try {
    new Model(obj).validate();
    console.log(`ok ${name}`);
  } catch (e) {
    console.log(`INVALID ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
