// The VM network's names and specs: a NIC's MAC and tap are the same on every host and differ
// between NICs; a derived MAC is locally administered unicast under 52:54:00 and never gives the test
// guest the subnet's network or broadcast address; tap names fit Linux's 15 characters; --nic specs
// and the host config's network section are parsed, and bad ones refused with a code and a fix.

import assert from "node:assert/strict";
import fc from "fast-check";
import { hasCode, type ErrorCode } from "../../src/core/errors.js";
import { ipArguments } from "../../src/vm/ip-command.js";
import {
  MAX_NICS_PER_VM,
  checkHostNetworkConfig,
  ipv4FromMac,
  localClusterNetwork,
  macAddress,
  parseNicSpec,
  planNics,
  tapName,
} from "../../src/vm/network.js";
import { qemuCommand, validateVmSpec, type VmSpec } from "../../src/vm/qemu-command.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(20_000);

const vmName = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
const nicIndex = fc.integer({ min: 0, max: MAX_NICS_PER_VM - 1 });

function refusedWith(code: ErrorCode, pattern: RegExp) {
  return (error: unknown): boolean => {
    assert.ok(hasCode(error, code), `expected ${code}, got ${String(error)}`);
    assert.match((error as Error).message, pattern);
    return true;
  };
}

test("a NIC's MAC and tap depend only on the VM's name and the NIC's index, so every host derives the same", () => {
  assert.equal(macAddress("web-1", 0), macAddress("web-1", 0));
  assert.equal(tapName("web-1", 0), tapName("web-1", 0));
  assert.notEqual(macAddress("web-1", 0), macAddress("web-1", 1));
  assert.notEqual(macAddress("web-1", 0), macAddress("web-2", 0));
  assert.notEqual(tapName("web-1", 0), tapName("web-1", 1));
  assert.notEqual(tapName("web-1", 0), tapName("web-2", 0));
  // Pinned: a change to the derivation would move every VM's MAC (and its guest's IP) on upgrade.
  assert.equal(macAddress("web-1", 0), "52:54:00:02:74:b0");
  assert.equal(macAddress("web-1", 1), "52:54:00:f7:60:29");
  assert.equal(tapName("web-1", 0), "hvb1e0ed3b11ab0");
});

test("a derived MAC is 52:54:00:XX:YY:ZZ, locally administered unicast, and its YY.ZZ is never .0.0 or .255.255", () => {
  fc.assert(
    fc.property(vmName, nicIndex, (name, index) => {
      const mac = macAddress(name, index);
      assert.match(mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
      const first = parseInt(mac.slice(0, 2), 16);
      assert.equal(first & 1, 0, "unicast");
      assert.equal(first & 2, 2, "locally administered");
      assert.doesNotMatch(mac, /:00:00$|:ff:ff$/);
      const ip = ipv4FromMac(mac);
      assert.match(ip, /^10\.99\.\d{1,3}\.\d{1,3}$/);
      assert.equal(ip, `10.99.${parseInt(mac.slice(12, 14), 16)}.${parseInt(mac.slice(15, 17), 16)}`);
    }),
    { numRuns: 2000 },
  );
});

test("the test guest's IPv4 comes from the MAC's last two bytes; .0.0 and .255.255 are refused", () => {
  assert.equal(ipv4FromMac("52:54:00:ab:01:02"), "10.99.1.2");
  assert.equal(ipv4FromMac("52:54:00:AB:FF:FE"), "10.99.255.254");
  assert.throws(() => ipv4FromMac("52:54:00:12:00:00"), refusedWith("HAVEN_ERR_CONFIG", /network or broadcast/));
  assert.throws(() => ipv4FromMac("52:54:00:12:ff:ff"), refusedWith("HAVEN_ERR_CONFIG", /network or broadcast/));
  assert.throws(() => ipv4FromMac("52:54:00:12:34"), refusedWith("HAVEN_ERR_CONFIG", /six hex pairs/));
});

test("a tap name is 15 characters or fewer, a valid interface name, the same for every NIC of one VM but its index", () => {
  fc.assert(
    fc.property(vmName, nicIndex, (name, index) => {
      const tap = tapName(name, index);
      assert.ok(tap.length <= 15, tap);
      assert.match(tap, /^hv[0-9a-f]{12}[0-7]$/);
      assert.equal(tap.slice(0, -1), tapName(name, (index + 1) % MAX_NICS_PER_VM).slice(0, -1));
    }),
    { numRuns: 1000 },
  );
});

test("derived MACs and taps of a VM pass the VM spec's own checks", () => {
  const nics = planNics("web-1", [{}, { bridge: "br1" }, { mac: "52:54:00:aa:bb:cc" }], { bridge: "br0" });
  const spec: VmSpec = {
    name: "web-1",
    vcpus: 1,
    memoryMiB: 128,
    accelerator: "tcg",
    disk: { socketPath: "/run/haven/vol.sock", exportName: "vol" },
    nics,
    runtime: {
      pidfile: "/run/haven/web-1/qemu.pid",
      qmpSocket: "/run/haven/web-1/qmp.sock",
      serialSocket: "/run/haven/web-1/serial.sock",
      serialLog: "/run/haven/web-1/serial.log",
      heartbeatSocket: "/run/haven/web-1/heartbeat.sock",
      qemuLog: "/run/haven/web-1/qemu.log",
    },
  };
  validateVmSpec(spec);
  const args = qemuCommand(spec);
  assert.ok(args.includes(`tap,id=net0,ifname=${tapName("web-1", 0)},script=no,downscript=no`));
  assert.ok(args.includes(`virtio-net-pci,id=nic0,netdev=net0,mac=${macAddress("web-1", 0)}`));
  assert.deepEqual(
    nics.map((nic) => nic.bridge),
    ["br0", "br1", "br0"],
  );
  assert.equal(nics[2]?.mac, "52:54:00:aa:bb:cc", "an explicit MAC overrides the derived one");
});

test("planNics refuses more NICs than a tap name can index, and one MAC on two NICs", () => {
  assert.throws(
    () =>
      planNics(
        "web-1",
        Array.from({ length: MAX_NICS_PER_VM + 1 }, () => ({})),
        { bridge: "br0" },
      ),
    refusedWith("HAVEN_ERR_CONFIG", /at most 8/),
  );
  const derived = macAddress("web-1", 0);
  assert.throws(
    () => planNics("web-1", [{}, { mac: derived }], { bridge: "br0" }),
    refusedWith("HAVEN_ERR_CONFIG", /used by two of its NICs/),
  );
});

test("a bad VM name or NIC index is refused before it names anything", () => {
  assert.throws(() => macAddress("", 0), refusedWith("HAVEN_ERR_CONFIG", /VM name/));
  assert.throws(() => tapName("web 1", 0), refusedWith("HAVEN_ERR_CONFIG", /VM name/));
  assert.throws(() => macAddress("web-1", MAX_NICS_PER_VM), refusedWith("HAVEN_ERR_CONFIG", /NIC index/));
  assert.throws(() => tapName("web-1", -1), refusedWith("HAVEN_ERR_CONFIG", /NIC index/));
  assert.throws(() => tapName("web-1", 0.5), refusedWith("HAVEN_ERR_CONFIG", /NIC index/));
});

test("--nic takes default, bridge=NAME, mac=MAC or both; a MAC is kept in lower case", () => {
  assert.deepEqual(parseNicSpec("default"), {});
  assert.deepEqual(parseNicSpec("bridge=br0"), { bridge: "br0" });
  assert.deepEqual(parseNicSpec("mac=52:54:00:AB:CD:EF"), { mac: "52:54:00:ab:cd:ef" });
  assert.deepEqual(parseNicSpec("bridge=vmbr1,mac=52:54:00:01:02:03"), {
    bridge: "vmbr1",
    mac: "52:54:00:01:02:03",
  });
  assert.deepEqual(parseNicSpec(" mac=52:54:00:01:02:03 , bridge=br0 "), {
    bridge: "br0",
    mac: "52:54:00:01:02:03",
  });
});

test("a bad --nic is refused with HAVEN_ERR_USAGE and a message naming the fix", () => {
  const cases: Array<[string, RegExp]> = [
    ["", /needs a value/],
    ["bridge", /bridge needs a value/],
    ["bridge=", /bridge needs a value/],
    ["brige=br0", /unknown key "brige".*did you mean bridge\?/],
    ["model=e1000", /unknown key "model"/],
    ["bridge=br0,bridge=br1", /given twice/],
    ["bridge=a-bridge-name-too-long", /not an interface name/],
    ["bridge=br/0", /not an interface name/],
    ["mac=52:54:00:12:34", /not a MAC address/],
    ["mac=52-54-00-12-34-56", /not a MAC address/],
    ["mac=01:00:5e:00:00:01", /multicast/],
    ["mac=00:00:00:00:00:00", /all-zero/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(() => parseNicSpec(text), refusedWith("HAVEN_ERR_USAGE", pattern), text);
  }
  fc.assert(
    fc.property(fc.string({ maxLength: 60 }), (text) => {
      try {
        parseNicSpec(text);
      } catch (error) {
        assert.ok(hasCode(error, "HAVEN_ERR_USAGE"), String(error));
      }
    }),
  );
});

test("the host config's network section names a bridge and optionally a namespace; anything else is refused with its path", () => {
  assert.deepEqual(checkHostNetworkConfig({ bridge: "br0" }), { bridge: "br0" });
  assert.deepEqual(checkHostNetworkConfig({ bridge: "havenbr0", namespace: "haven-c1" }), {
    bridge: "havenbr0",
    namespace: "haven-c1",
  });
  const cases: Array<[unknown, RegExp]> = [
    [null, /^vms must be an object/],
    [[], /^vms must be an object/],
    [{}, /^vms\.bridge is missing/],
    [{ bridge: 7 }, /^vms\.bridge 7 is not an interface name/],
    [{ bridge: "br0", namespace: "../x" }, /^vms\.namespace "\.\.\/x" is not a namespace name/],
    [{ bridge: "br0", netns: "x" }, /^vms\.netns is not a known key/],
  ];
  for (const [value, pattern] of cases) {
    assert.throws(() => checkHostNetworkConfig(value), refusedWith("HAVEN_ERR_CONFIG", pattern), JSON.stringify(value));
  }
  assert.throws(
    () => checkHostNetworkConfig({}, "agent.json: vms"),
    refusedWith("HAVEN_ERR_CONFIG", /^agent\.json: vms\.bridge is missing/),
  );
});

test("a local cluster's hosts share one namespace named after the cluster, with one bridge", () => {
  assert.deepEqual(localClusterNetwork("c1"), { bridge: "havenbr0", namespace: "haven-c1" });
  assert.throws(() => localClusterNetwork("a/b"), refusedWith("HAVEN_ERR_CONFIG", /not a namespace name/));
});

test("ip runs inside a namespace with -n NAME before its command", () => {
  assert.deepEqual(ipArguments(["link", "show"]), ["link", "show"]);
  assert.deepEqual(ipArguments(["link", "show"], "haven-c1"), ["-n", "haven-c1", "link", "show"]);
});
