// A strict reader of Prometheus' text exposition format 0.0.4, for tests: it checks the line grammar
// (HELP and TYPE lines, sample lines, label escaping, values) and the rules across lines (one TYPE per
// family, before its samples; a family's samples together; no sample twice; a histogram's buckets
// cumulative with le="+Inf" equal to _count), and returns the families it read, or throws naming the
// line. Written from the format's description (prometheus.io, "Exposition formats").

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);
/** A Go float as ParseFloat reads it, or the special values. */
const VALUE = /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)$/;

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  type: string;
  help: string | undefined;
  readonly samples: Sample[];
}

/** The suffixes a sample of a family of each type may add to the family's name. */
const SUFFIXES: Record<string, readonly string[]> = {
  counter: [""],
  gauge: [""],
  untyped: [""],
  histogram: ["_bucket", "_sum", "_count"],
  summary: ["", "_sum", "_count"],
};

export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seenSamples = new Set<string>();
  /** Families whose samples are over: a later sample of one is out of place. */
  const closed = new Set<string>();
  let open: Family | undefined;
  if (text.length > 0 && !text.endsWith("\n")) throw new Error("the text does not end with a newline");
  const lines = text.split("\n");
  lines.pop();
  lines.forEach((line, index) => {
    const at = `line ${index + 1} (${JSON.stringify(line.slice(0, 120))})`;
    const fail = (why: string): never => {
      throw new Error(`${at}: ${why}`);
    };
    if (line.trim() === "") return;
    if (line.startsWith("#")) {
      const match = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (match === null) return; // another comment
      const [, keyword, name, rest = ""] = match as unknown as [string, string, string, string | undefined];
      if (!METRIC_NAME.test(name)) fail(`${name} is not a metric name`);
      const family = families.get(name) ?? { name, type: "untyped", help: undefined, samples: [] };
      if (keyword === "HELP") {
        if (family.help !== undefined) fail(`a second HELP for ${name}`);
        family.help = unescapeHelp(rest, fail);
      } else {
        if (!TYPES.has(rest)) fail(`${rest} is not a metric type`);
        if (families.has(name) && (family.type !== "untyped" || family.samples.length > 0))
          fail(`TYPE for ${name} after its samples or a second TYPE`);
        family.type = rest;
      }
      if (!families.has(name)) families.set(name, family);
      return;
    }
    const sample = parseSample(line, fail);
    const family = familyOf(sample.name, families);
    if (family === undefined) fail(`sample ${sample.name} of no declared family`);
    if (open !== family) {
      if (open !== undefined) closed.add(open.name);
      if (closed.has(family!.name)) fail(`the samples of ${family!.name} are not together`);
      open = family;
    }
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seenSamples.has(key)) fail(`sample ${key} twice`);
    seenSamples.add(key);
    family!.samples.push(sample);
  });
  for (const family of families.values()) if (family.type === "histogram") checkHistogram(family);
  return families;
}

/** The family a sample belongs to: its own name, or its name without a suffix its family's type allows. */
function familyOf(name: string, families: Map<string, Family>): Family | undefined {
  for (const [base, family] of families) {
    const suffixes = SUFFIXES[family.type] ?? [""];
    if (suffixes.some((suffix) => `${base}${suffix}` === name)) return family;
  }
  return undefined;
}

function parseSample(line: string, fail: (why: string) => never): Sample {
  const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (nameMatch === null) return fail("a sample line must start with a metric name");
  const name = nameMatch[0];
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === "{") {
    i++;
    for (;;) {
      if (line[i] === "}") {
        i++;
        break;
      }
      const labelMatch = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
      if (labelMatch === null) fail(`a label name expected at column ${i + 1}`);
      const label = labelMatch![0];
      if (!LABEL_NAME.test(label) || label.startsWith("__")) fail(`${label} is not a label name`);
      if (Object.hasOwn(labels, label)) fail(`label ${label} twice`);
      i += label.length;
      if (line[i] !== "=" || line[i + 1] !== '"') fail(`="value" expected after label ${label}`);
      i += 2;
      let value = "";
      for (;;) {
        const c = line[i];
        if (c === undefined) fail(`label ${label}'s value is not closed`);
        if (c === '"') break;
        if (c === "\\") {
          const next = line[i + 1];
          if (next === "\\") value += "\\";
          else if (next === '"') value += '"';
          else if (next === "n") value += "\n";
          else fail(`label ${label}'s value has an escape \\${next ?? ""} the format does not know`);
          i += 2;
          continue;
        }
        value += c;
        i++;
      }
      labels[label] = value;
      i++;
      if (line[i] === ",") i++;
      else if (line[i] !== "}") fail(`, or } expected after label ${label}`);
    }
  }
  const rest = line.slice(i);
  const fields = /^ +(\S+)(?: +(-?\d+))?$/.exec(rest);
  if (fields === null) fail("a sample needs a value (and at most a timestamp) after its name and labels");
  const [, valueText] = fields!;
  if (!VALUE.test(valueText!)) fail(`${valueText} is not a sample value`);
  const value =
    valueText === "NaN"
      ? NaN
      : /Inf$/.test(valueText!)
        ? valueText!.startsWith("-")
          ? -Infinity
          : Infinity
        : Number(valueText);
  return { name, labels, value };
}

function unescapeHelp(text: string, fail: (why: string) => never): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const next = text[i + 1];
    if (next === "\\") out += "\\";
    else if (next === "n") out += "\n";
    else fail(`HELP has an escape \\${next ?? ""} the format does not know`);
    i++;
  }
  return out;
}

/** Each label set of a histogram: buckets in increasing le, cumulative, +Inf last and equal to _count. */
function checkHistogram(family: Family): void {
  const series = new Map<string, { buckets: { le: number; value: number }[]; count?: number; sum?: number }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const entry = series.get(key) ?? { buckets: [] };
    series.set(key, entry);
    if (sample.name.endsWith("_bucket")) {
      if (le === undefined) throw new Error(`${family.name}: a bucket without le`);
      entry.buckets.push({ le: le === "+Inf" ? Infinity : Number(le), value: sample.value });
    } else if (sample.name.endsWith("_count")) entry.count = sample.value;
    else entry.sum = sample.value;
  }
  for (const [key, { buckets, count, sum }] of series) {
    const what = `${family.name}${key}`;
    if (count === undefined || sum === undefined) throw new Error(`${what}: _sum or _count missing`);
    if (buckets.at(-1)?.le !== Infinity) throw new Error(`${what}: the last bucket is not le="+Inf"`);
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i]!.le > buckets[i - 1]!.le)) throw new Error(`${what}: buckets not in increasing le`);
      if (buckets[i]!.value < buckets[i - 1]!.value) throw new Error(`${what}: buckets not cumulative`);
    }
    if (buckets.at(-1)!.value !== count) throw new Error(`${what}: le="+Inf" is not _count`);
  }
}

/** The value of the one sample of `name` with exactly these labels (and any others), or undefined. */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number | undefined {
  for (const family of families.values())
    for (const sample of family.samples)
      if (sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value))
        return sample.value;
  return undefined;
}
