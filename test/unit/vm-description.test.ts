// vm.json, the description `vm export` writes and `vm import --from` reads on another cluster: what is
// written reads back the same and becomes the same VM's create arguments; a file that is malformed, of
// another kind or version, out of range, or that names a disk outside its directory is refused with the
// key and the fix before anything is made. Also the pure parts of image copies: telling text from a
// disk, and reading qemu-img's progress.

import assert from "node:assert/strict";
import fc from "fast-check";
import { lastPercent, progressLine, ConvertProgress } from "../../src/cli/convert-progress.js";
import { formatOfFileName, looksLikeText } from "../../src/cli/image-copy.js";
import {
  createArguments,
  describeVm,
  parseVmDescription,
  VM_DESCRIPTION_VERSION,
  type VmDescription,
} from "../../src/cli/vm-description.js";
import type { VmRecord } from "../../src/cluster/vm-schema.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);

const VM: VmRecord = {
  name: "web",
  vcpus: 2,
  memoryMiB: 384,
  volume: "web",
  image: "/images/web.qcow2",
  boot: "disk",
  cpus: [2, 3],
  nics: [{ mac: "52:54:00:12:34:56", bridge: "br0" }, { mac: "52:54:00:ab:cd:ef" }],
  heartbeat: true,
  tcpCheck: { address: "10.99.1.2", port: 80 },
  desired: "started",
  startRequest: 3,
  policy: { maxRestart: 2, maxRelocate: 0 },
  createdAt: "2026-12-01T00:00:00.000Z",
};
const DISK = { file: "disk.qcow2", format: "qcow2", virtualSizeBytes: 128 * 1024 * 1024 } as const;

function written(): VmDescription {
  return describeVm(VM, DISK, new Date("2026-12-05T18:00:00.000Z"));
}

/** The written description as JSON with `change` applied to the parsed object. */
function edited(change: (o: Record<string, unknown>) => void): string {
  const o = JSON.parse(JSON.stringify(written())) as Record<string, unknown>;
  change(o);
  return JSON.stringify(o);
}

test("what vm export writes reads back the same, without the cluster's own fields", () => {
  const description = written();
  assert.deepEqual(parseVmDescription(JSON.stringify(description, null, 2), "vm.json"), description);
  const keys = Object.keys(description);
  for (const local of ["cpus", "volume", "desired", "startRequest", "createdAt", "image"])
    assert.ok(!keys.includes(local), `${local} is this cluster's, not the VM's`);
  assert.deepEqual(description.nics, VM.nics);
});

test("the description becomes vm create's arguments: the same CPUs, memory, NICs with their MACs, checks and policy", () => {
  assert.deepEqual(createArguments(written(), "web2", "/exports/web"), [
    "web2",
    ...["--vcpus", "2", "--memory", "384M"],
    ...["--image", "/exports/web/disk.qcow2", "--format", "qcow2", "--boot", "disk"],
    ...["--nic", "bridge=br0,mac=52:54:00:12:34:56", "--nic", "mac=52:54:00:ab:cd:ef"],
    "--heartbeat",
    ...["--tcp-check", "10.99.1.2:80", "--max-restart", "2", "--max-relocate", "0"],
  ]);
  const plain = parseVmDescription(
    edited((o) => {
      o.heartbeat = false;
      delete o.tcpCheck;
      o.nics = [];
    }),
    "vm.json",
  );
  const args = createArguments(plain, "x", "/d");
  assert.ok(args.includes("--no-heartbeat") && !args.includes("--tcp-check") && !args.includes("--nic"));
});

test("a malformed vm.json is refused with the file and the key", () => {
  const cases: [string, RegExp][] = [
    ["{", /vm\.json: is not valid JSON/],
    ["[]", /is not a JSON object/],
    [edited((o) => (o.kind = "ovf")), /"kind" must be "haven-vm"/],
    [edited((o) => (o.vcpus = 0)), /"vcpus" must be a whole number from 1 to 64/],
    [edited((o) => (o.memoryMiB = 1.5)), /"memoryMiB" must be a whole number/],
    [edited((o) => (o.boot = "pxe")), /"boot" must be disk or haven-test-kernel/],
    [edited((o) => (o.nics = [{ mac: "52:54:00:ZZ:00:00" }])), /"nics\[0\]\.mac" .* is not a lower-case MAC/],
    [edited((o) => (o.nics = [{ mac: "52:54:00:00:00:01", bridge: "br0; rm" }])), /"nics\[0\]\.bridge"/],
    [edited((o) => (o.nics = [{ mac: "52:54:00:00:00:01", vlan: 3 }])), /unknown key "vlan"/],
    [edited((o) => (o.heartbeat = "yes")), /"heartbeat" must be true or false/],
    [edited((o) => (o.tcpCheck = { address: "web.local", port: 80 })), /"tcpCheck\.address" .* is not an IP/],
    [edited((o) => (o.policy = { maxRestart: -1, maxRelocate: 0 })), /"policy\.maxRestart"/],
    [edited((o) => (o.disk = { ...DISK, file: "../../etc/shadow" })), /"disk\.file" .* in the export's directory/],
    [edited((o) => (o.disk = { ...DISK, file: "/etc/shadow" })), /"disk\.file"/],
    [edited((o) => (o.disk = { ...DISK, file: ".hidden" })), /"disk\.file"/],
    [edited((o) => (o.disk = { ...DISK, format: "vpc" })), /"disk\.format" must be one of raw, qcow2/],
    [edited((o) => (o.disk = { ...DISK, virtualSizeBytes: 0 })), /"disk\.virtualSizeBytes"/],
    [edited((o) => (o.extra = 1)), /unknown key "extra"/],
    [edited((o) => (o.name = "bad name")), /"name" "bad name" is not a VM name/],
    [edited((o) => (o.exportedAt = "yesterday")), /"exportedAt"/],
    [" ".repeat(70_000), /more than a vm\.json's/],
  ];
  for (const [text, message] of cases)
    assert.throws(
      () => parseVmDescription(text, "/x/vm.json"),
      failsWith("HAVEN_ERR_CONFIG", message),
      text.slice(0, 80),
    );
});

test("a vm.json of another version is refused for its version, even with keys this Haven does not know", () => {
  for (const version of [2, 0, "1", undefined])
    assert.throws(
      () =>
        parseVmDescription(
          edited((o) => {
            o.version = version;
            o.storagePolicy = "gold";
          }),
          "vm.json",
        ),
      failsWith("HAVEN_ERR_CONFIG", /is of version .*; this Haven reads version 1: import it with the Haven/),
    );
  assert.equal(VM_DESCRIPTION_VERSION, 1);
});

test("any description that parses gives arguments naming its disk inside the export's directory", () => {
  const mac = fc
    .array(fc.integer({ min: 0, max: 255 }), { minLength: 3, maxLength: 3 })
    .map((b) => `52:54:00:${b.map((x) => x.toString(16).padStart(2, "0")).join(":")}`);
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 64 }),
      fc.integer({ min: 16, max: 65536 }),
      fc.array(mac, { maxLength: 8 }),
      fc.stringMatching(/^[a-z][a-z0-9.]{0,20}$/),
      (vcpus, memoryMiB, macs, file) => {
        const text = edited((o) => {
          Object.assign(o, { vcpus, memoryMiB, nics: macs.map((m) => ({ mac: m })) });
          o.disk = { ...DISK, file };
        });
        let description: VmDescription;
        try {
          description = parseVmDescription(text, "vm.json");
        } catch {
          return file.includes(".."); // the only refusal these inputs may meet
        }
        const args = createArguments(description, "n", "/exports/d");
        return (
          args[args.indexOf("--image") + 1] === `/exports/d/${file}` &&
          args.filter((a) => a === "--nic").length === macs.length
        );
      },
    ),
  );
});

test("text is told from a disk: a disk's first sectors hold NUL bytes, text none", () => {
  assert.equal(looksLikeText(Buffer.from("1\n2\n3\nhello world, this is a text file\n")), true);
  assert.equal(looksLikeText(Buffer.from("grüße aus köln\n", "utf8")), true);
  const bootSector = Buffer.alloc(512);
  bootSector.write("\xeb\x63\x90SYSLINUX", "latin1");
  bootSector[510] = 0x55;
  bootSector[511] = 0xaa;
  assert.equal(looksLikeText(bootSector), false);
  assert.equal(looksLikeText(Buffer.alloc(4096)), false, "a blank disk is a disk");
  assert.equal(looksLikeText(Buffer.alloc(0)), false);
  assert.equal(
    looksLikeText(Buffer.from([0xff, 0x01, 0x02, 0x03, 0x7f, 0x1b, 0x05, 0x06].concat(Array(56).fill(0x41)))),
    false,
  );
});

test("a file name's extension names its format; others are no format", () => {
  assert.equal(formatOfFileName("/x/disk.qcow2"), "qcow2");
  assert.equal(formatOfFileName("d.VMDK"), "vmdk");
  assert.equal(formatOfFileName("d.img"), "raw");
  assert.equal(formatOfFileName("d.vhd"), undefined);
  assert.equal(formatOfFileName("disk"), undefined);
});

test("qemu-img's -p output gives the last percent, also when a report is split across chunks", () => {
  assert.equal(lastPercent("    (0.00/100%)\r    (12.50/100%)\r"), 12.5);
  assert.equal(lastPercent("nothing here"), undefined);
  assert.match(
    progressLine("importing", 50, 100 * 1024 * 1024, 1000),
    /^importing {2}50% \[#{10}\.{10}\] 50\.0 MiB\/s, 1 s left$/,
  );
  const lines: string[] = [];
  const progress = new ConvertProgress("importing", 1024, false, (text) => lines.push(text));
  for (const chunk of ["    (0.00/100%)\r    (21.", "00/100%)\r    (22.00/100%)\r", "    (100.00/100%)\r"])
    progress.feed(chunk);
  assert.equal(progress.reported, 100);
  // Not a terminal: one line per 20 percent reached, not one per report.
  assert.deepEqual(
    lines.map((line) => /(\d+)%/.exec(line)![1]),
    ["0", "22", "100"],
  );
});
