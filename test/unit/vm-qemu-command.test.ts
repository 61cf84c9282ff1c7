// qemuCommand: the disk is an NBD unix-socket blockdev with cache.direct that reconnects to its endpoint
// (reconnect-delay, open-timeout) under a raw node on a virtio-blk device that stops on errors; QEMU starts paused with no default devices; QMP, serial,
// heartbeat and pidfile live where the runtime paths say; NICs keep their fixed MAC; and a bad spec
// is refused with HAVEN_ERR_CONFIG naming the field.

import assert from "node:assert/strict";
import { hasCode } from "../../src/core/errors.js";
import {
  DEFAULT_DISK_OPEN_TIMEOUT_S,
  DEFAULT_DISK_RECONNECT_DELAY_S,
  HEARTBEAT_PORT_NAME,
  qemuCommand,
  type VmSpec,
} from "../../src/vm/qemu-command.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(5_000);

function spec(overrides: Partial<VmSpec> = {}): VmSpec {
  return {
    name: "web-1",
    vcpus: 2,
    memoryMiB: 512,
    accelerator: "tcg",
    disk: { socketPath: "/run/haven/volumes/vol-1.sock", exportName: "vol-1" },
    nics: [{ tapName: "hv-web1-0", mac: "52:54:00:12:34:56" }],
    runtime: {
      pidfile: "/run/haven/vms/web-1/qemu.pid",
      qmpSocket: "/run/haven/vms/web-1/qmp.sock",
      serialSocket: "/run/haven/vms/web-1/serial.sock",
      serialLog: "/run/haven/vms/web-1/serial.log",
      heartbeatSocket: "/run/haven/vms/web-1/heartbeat.sock",
      qemuLog: "/run/haven/vms/web-1/qemu.log",
    },
    ...overrides,
  };
}

/** The value following `flag` each time it appears. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((arg, i) => (arg === flag && i + 1 < args.length ? [args[i + 1] as string] : []));
}

test("the disk is an NBD unix-socket blockdev with cache.direct under a raw node, on virtio-blk with werror/rerror=stop", () => {
  const args = qemuCommand(spec());
  const blockdevs = values(args, "-blockdev").map((text) => JSON.parse(text) as Record<string, unknown>);
  assert.equal(blockdevs.length, 2);
  const [nbd, raw] = blockdevs;
  assert.deepEqual(nbd, {
    driver: "nbd",
    "node-name": "disk0-nbd",
    server: { type: "unix", path: "/run/haven/volumes/vol-1.sock" },
    export: "vol-1",
    "reconnect-delay": DEFAULT_DISK_RECONNECT_DELAY_S,
    "open-timeout": DEFAULT_DISK_OPEN_TIMEOUT_S,
    cache: { direct: true },
  });
  assert.deepEqual(raw, { driver: "raw", "node-name": "disk0", file: "disk0-nbd", cache: { direct: true } });
  const disk = values(args, "-device").find((d) => d.startsWith("virtio-blk-pci"));
  assert.ok(disk);
  assert.match(disk, /drive=disk0/);
  assert.match(disk, /werror=stop/);
  assert.match(disk, /rerror=stop/);
  assert.match(disk, /bootindex=1/, "without a kernel, the VM boots from its disk");
  assert.ok(!args.includes("-kernel"));
});

test("the disk's NBD client reconnects to the same endpoint, holding requests for reconnect-delay seconds", () => {
  const nbdNode = (overrides: Partial<VmSpec>): Record<string, unknown> =>
    JSON.parse(values(qemuCommand(spec(overrides)), "-blockdev")[0]!) as Record<string, unknown>;
  assert.ok(DEFAULT_DISK_RECONNECT_DELAY_S > 0, "a zero delay would fail in-flight I/O at the first route change");
  const tuned = nbdNode({
    disk: {
      socketPath: "/run/haven/volumes/vol-1.sock",
      exportName: "vol-1",
      reconnectDelaySeconds: 5,
      openTimeoutSeconds: 0,
    },
  });
  assert.equal(tuned["reconnect-delay"], 5);
  assert.equal(tuned["open-timeout"], 0);
  assert.deepEqual(tuned.server, { type: "unix", path: "/run/haven/volumes/vol-1.sock" });
});

test("QEMU starts paused, without defaults or a display, named after the VM, with its resources", () => {
  const args = qemuCommand(spec());
  assert.ok(args.includes("-S"));
  assert.ok(args.includes("-nodefaults"));
  assert.deepEqual(values(args, "-display"), ["none"]);
  assert.deepEqual(values(args, "-name"), ["guest=web-1,debug-threads=on"]);
  assert.deepEqual(values(args, "-smp"), ["2"]);
  assert.deepEqual(values(args, "-m"), ["512"]);
  assert.deepEqual(values(args, "-accel"), ["tcg"]);
  assert.deepEqual(values(qemuCommand(spec({ accelerator: "kvm" })), "-accel"), ["kvm"]);
  assert.deepEqual(values(qemuCommand(spec({ accelerator: "kvm" })), "-cpu"), ["host"]);
});

test("QMP, serial (socket and log), heartbeat port and pidfile live at the runtime paths", () => {
  const args = qemuCommand(spec());
  assert.deepEqual(values(args, "-pidfile"), ["/run/haven/vms/web-1/qemu.pid"]);
  const chardevs = values(args, "-chardev");
  assert.ok(chardevs.includes("socket,id=qmp,path=/run/haven/vms/web-1/qmp.sock,server=on,wait=off"));
  assert.deepEqual(values(args, "-mon"), ["chardev=qmp,mode=control"]);
  assert.ok(
    chardevs.includes(
      "socket,id=serial0,path=/run/haven/vms/web-1/serial.sock,server=on,wait=off," +
        "logfile=/run/haven/vms/web-1/serial.log,logappend=on",
    ),
  );
  assert.deepEqual(values(args, "-serial"), ["chardev:serial0"]);
  assert.ok(chardevs.includes("socket,id=heartbeat,path=/run/haven/vms/web-1/heartbeat.sock,server=on,wait=off"));
  const devices = values(args, "-device");
  assert.ok(devices.includes("pvpanic"));
  assert.ok(devices.includes(`virtserialport,bus=virtio-serial0.0,chardev=heartbeat,name=${HEARTBEAT_PORT_NAME}`));
});

test("each NIC is a tap device with its fixed MAC", () => {
  const args = qemuCommand(
    spec({
      nics: [
        { tapName: "hv-a", mac: "52:54:00:00:00:01" },
        { tapName: "hv-b", mac: "52:54:00:00:00:02" },
      ],
    }),
  );
  assert.deepEqual(values(args, "-netdev"), [
    "tap,id=net0,ifname=hv-a,script=no,downscript=no",
    "tap,id=net1,ifname=hv-b,script=no,downscript=no",
  ]);
  const nics = values(args, "-device").filter((d) => d.startsWith("virtio-net-pci"));
  assert.deepEqual(nics, [
    "virtio-net-pci,id=nic0,netdev=net0,mac=52:54:00:00:00:01",
    "virtio-net-pci,id=nic1,netdev=net1,mac=52:54:00:00:00:02",
  ]);
  assert.deepEqual(values(qemuCommand(spec({ nics: [] })), "-netdev"), []);
});

test("direct kernel boot passes kernel, initrd and append, and the disk is no boot device", () => {
  const args = qemuCommand(
    spec({ kernelBoot: { kernel: "/guest/vmlinux", initrd: "/guest/initramfs.img", append: "console=ttyS0 quiet" } }),
  );
  assert.deepEqual(values(args, "-kernel"), ["/guest/vmlinux"]);
  assert.deepEqual(values(args, "-initrd"), ["/guest/initramfs.img"]);
  assert.deepEqual(values(args, "-append"), ["console=ttyS0 quiet"]);
  const disk = values(args, "-device").find((d) => d.startsWith("virtio-blk-pci"));
  assert.doesNotMatch(disk ?? "", /bootindex/);
});

test("a bad spec is refused with HAVEN_ERR_CONFIG naming the field", () => {
  const cases: Array<[Partial<VmSpec>, RegExp]> = [
    [{ name: "" }, /the name must be/],
    [{ name: "a,b" }, /the name must be/],
    [{ name: "-leading" }, /the name must be/],
    [{ name: "x".repeat(64) }, /the name must be/],
    [{ vcpus: 0 }, /vcpus must be/],
    [{ vcpus: 1.5 }, /vcpus must be/],
    [{ vcpus: 65 }, /vcpus must be/],
    [{ memoryMiB: 8 }, /memoryMiB must be/],
    [{ memoryMiB: Number.NaN }, /memoryMiB must be/],
    [{ accelerator: "hvf" as never }, /accelerator must be/],
    [{ disk: { socketPath: "relative.sock", exportName: "x" } }, /disk.socketPath must be an absolute path/],
    [{ disk: { socketPath: "/a.sock", exportName: "x".repeat(4097) } }, /exportName/],
    [
      { disk: { socketPath: "/a.sock", exportName: "x", reconnectDelaySeconds: -1 } },
      /disk.reconnectDelaySeconds must be/,
    ],
    [
      { disk: { socketPath: "/a.sock", exportName: "x", reconnectDelaySeconds: 1.5 } },
      /disk.reconnectDelaySeconds must be/,
    ],
    [{ disk: { socketPath: "/a.sock", exportName: "x", openTimeoutSeconds: 3601 } }, /disk.openTimeoutSeconds must be/],
    [{ nics: [{ tapName: "tap0", mac: "52:54:00:12:34" }] }, /nics\[0\]\.mac must be/],
    [{ nics: [{ tapName: "tap0", mac: "52:54:00:12:34:ZZ" }] }, /nics\[0\]\.mac must be/],
    [{ nics: [{ tapName: "tap0", mac: "01:00:5e:00:00:01" }] }, /multicast/],
    [{ nics: [{ tapName: "a-very-long-tap-name", mac: "52:54:00:12:34:56" }] }, /tapName must be/],
    [{ nics: [{ tapName: "tap,0", mac: "52:54:00:12:34:56" }] }, /tapName must be/],
    [
      {
        nics: [
          { tapName: "tap0", mac: "52:54:00:12:34:56" },
          { tapName: "tap1", mac: "52:54:00:12:34:56" },
        ],
      },
      /used twice/,
    ],
    [{ kernelBoot: { kernel: "vmlinux" } }, /kernelBoot.kernel must be an absolute path/],
    [
      {
        runtime: {
          ...spec().runtime,
          qmpSocket: "/run/a,b/qmp.sock",
        },
      },
      /runtime.qmpSocket .* contains a comma/,
    ],
  ];
  for (const [overrides, message] of cases) {
    assert.throws(
      () => qemuCommand(spec(overrides)),
      (error: unknown) => {
        assert.ok(hasCode(error, "HAVEN_ERR_CONFIG"), `${JSON.stringify(overrides)}: ${String(error)}`);
        assert.match((error as Error).message, message);
        return true;
      },
    );
  }
});
