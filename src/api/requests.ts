// Request bodies of Haven's HTTP APIs, parsed from untrusted JSON into typed values. Each refusal is a
// HAVEN_ERR_INVALID_REQUEST (400) that names the field and what was expected; unknown fields are
// refused rather than ignored, so a misspelt option is never silently dropped.

import { invalidRequest } from "./errors.js";

/** A location is a path or HOST:PORT; anything longer is not one. */
const MAX_SURVIVOR_BYTES = 4096;

/** The body as a JSON object with only `known` fields; `example` shows a good one in the message. */
export function expectObject(body: unknown, known: readonly string[], example: string): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw invalidRequest(`the request body must be a JSON object such as ${example}`);
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) throw invalidRequest(`unknown field "${key}" (known: ${known.join(", ")})`);
  }
  return body as Record<string, unknown>;
}

function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
}

/**
 * `{"repair": boolean}`: whether an online verify resyncs the regions that differ. The engine API reads
 * a missing "repair" as false; the agent API requires it (`repairRequired`).
 */
export function parseVerifyRequest(body: unknown, options: { repairRequired?: boolean } = {}): { repair: boolean } {
  const example = `{"repair": false}`;
  const fields = expectObject(body, ["repair"], example);
  if (!Object.hasOwn(fields, "repair") && options.repairRequired === true)
    throw invalidRequest(`field "repair" is required, as in ${example}`);
  const repair = Object.hasOwn(fields, "repair") ? fields.repair : false;
  if (typeof repair !== "boolean") throw invalidRequest(`field "repair" must be a boolean, got ${typeName(repair)}`);
  return { repair };
}

/** `{"survivor": string}`: the location (from the status) whose data survives a split brain. */
export function parseResolveSplitBrainRequest(body: unknown): { survivor: string } {
  const example = `{"survivor": "node2:7400"}`;
  const fields = expectObject(body, ["survivor"], example);
  const survivor = fields.survivor;
  if (survivor === undefined) throw invalidRequest(`field "survivor" is required, as in ${example}`);
  if (typeof survivor !== "string")
    throw invalidRequest(`field "survivor" must be a string, got ${typeName(survivor)}`);
  if (survivor === "" || Buffer.byteLength(survivor) > MAX_SURVIVOR_BYTES)
    throw invalidRequest(`field "survivor" must be a copy's location, 1 to ${MAX_SURVIVOR_BYTES} bytes`);
  return { survivor };
}
