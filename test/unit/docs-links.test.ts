// The README and the documents it points to must stand alone in a clone: every relative link names a
// file that exists, every #anchor a heading of its file, and nothing points outside the repository.

import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { packageRoot } from "../../src/util/repo-root.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);

const root = packageRoot();

function documents(): string[] {
  const docs = readdirSync(join(root, "docs"))
    .filter((name) => name.endsWith(".md"))
    .map((name) => join(root, "docs", name));
  return [join(root, "README.md"), join(root, "bench", "README.md"), ...docs];
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, "")
    .replace(/ /g, "-");
}

function anchors(file: string): Set<string> {
  const text = readFileSync(file, "utf8").replace(/```[\s\S]*?```/g, "");
  return new Set([...text.matchAll(/^#{1,6} (.+)$/gm)].map((match) => slug(match[1]!)));
}

/** Markdown links outside code: [text](target). */
function links(file: string): string[] {
  const text = readFileSync(file, "utf8")
    .replace(/```[\s\S]*?```/g, "")
    .replace(/`[^`\n]*`/g, "");
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((match) => match[1]!);
}

test("every relative link in the README and docs names a file of the repository, and every anchor a heading", () => {
  const broken: string[] = [];
  let checked = 0;
  for (const file of documents()) {
    for (const target of links(file)) {
      if (/^[a-z]+:/i.test(target)) continue; // https:, mailto:
      checked += 1;
      const [path, anchor] = target.split("#", 2) as [string, string | undefined];
      const resolved = path === "" ? file : resolve(dirname(file), path);
      const where = `${relative(root, file)}: (${target})`;
      if (!resolved.startsWith(`${root}/`)) broken.push(`${where} points outside the repository`);
      else if (!existsSync(resolved)) broken.push(`${where} names a missing file`);
      else if (anchor !== undefined && resolved.endsWith(".md") && !anchors(resolved).has(anchor))
        broken.push(`${where} names no heading of ${relative(root, resolved)}`);
    }
  }
  assert.ok(checked > 10, `only ${checked} links found: the link pattern no longer matches`);
  assert.deepEqual(broken, []);
});

test("the README names no file outside the clone and no internal issue numbers", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  assert.doesNotMatch(readme, /\.\.\/shared|DESIGN\.md/);
  assert.doesNotMatch(readme, /\bissue #?\d+/i);
});
