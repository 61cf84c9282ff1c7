// The layer rules of DESIGN.md ("Code layout"), checked by dependency-cruiser in `npm run lint`.
// Folders under src/ are layers, listed here bottom-up; a folder may import its own files and any
// layer of a lower rank, never one of its own rank (peers) or above. Type-only imports count too: a
// type from a higher layer couples the lower one to it just the same. test/ and bench/ may import
// any layer, but nothing in src/ may be part of an import cycle, or import test/ or bench/.
//
// Violations that are known and being fixed elsewhere are listed, one by one, in
// .dependency-cruiser-known-violations.json (regenerate it with `npm run lint:layers:baseline` once
// they are gone): any violation not in that list fails the lint.

/** Rank of each layer folder under src/; equal ranks are peers. */
const LAYERS = {
  core: 0,
  util: 1,
  security: 1,
  block: 2,
  cluster: 2,
  replica: 3,
  nbd: 3,
  engine: 4,
  vm: 5,
  disk: 5,
  agent: 6,
  api: 7,
  cli: 8,
};

const names = Object.keys(LAYERS);

const layerRules = names
  .map((layer) => {
    const notBelow = names.filter((other) => other !== layer && LAYERS[other] >= LAYERS[layer]);
    return {
      name: `layer-${layer}`,
      comment:
        `src/${layer}/ may import only the layers below it (` +
        (names.filter((other) => LAYERS[other] < LAYERS[layer]).join(", ") || "none") +
        "): see DESIGN.md, Code layout",
      severity: "error",
      from: { path: `^src/${layer}/` },
      to: { path: `^src/(${notBelow.join("|")})/` },
    };
  })
  .filter((rule) => rule.to.path !== "^src/()/");

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-cycles",
      comment: "an import cycle in src/ means no module owns the state between them (STYLE.md)",
      severity: "error",
      from: { path: "^src/" },
      to: { circular: true },
    },
    ...layerRules,
    {
      name: "not-in-a-layer",
      comment: `every file under src/ lives in a layer folder (${names.join(", ")})`,
      severity: "error",
      from: { path: "^src/", pathNot: `^src/(${names.join("|")})/` },
      to: {},
    },
    {
      name: "no-tests-from-src",
      comment: "src/ does not import test/ or bench/",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "^(test|bench)/" },
    },
    {
      name: "resolvable",
      comment: "an import dependency-cruiser cannot resolve would escape every rule above",
      severity: "error",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|build|node_modules)/" },
    // Type-only imports (`import type`, `import { type X }`) are dependencies too.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
  },
};
