// The name rules of everything the cluster names: hosts, disks, volumes and VMs. A name becomes a key
// segment in etcd, a file or directory name on a disk, a unix socket and a QEMU process name, so
// every name read back from etcd is checked against these rules before anything acts on it: a forged
// volume named `../../escape` is refused here, never reaches a path (issue 16, item 5).

/** A host, disk or VM name: no "/" (it separates key segments) and no "@" (copy keys use it). */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** A volume name: lower case, as `haven volume create` takes it (it names files of every copy). */
const VOLUME_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** An event kind: kebab-case words (volume-created, failover, replica-out-of-sync). */
const EVENT_KIND_PATTERN = /^[a-z][a-z0-9-]{0,63}$/;

export function isHostName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

export function isDiskName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

export function isVmName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

export function isVolumeName(name: string): boolean {
  return VOLUME_NAME_PATTERN.test(name);
}

export function isEventKind(kind: string): boolean {
  return EVENT_KIND_PATTERN.test(kind);
}

/** At most this much of an untrusted name is quoted in a message. */
const MAX_QUOTED_NAME_CHARS = 64;

/** Control characters (and the line separators JSON leaves raw) as \uXXXX escapes. */
export function escapeControls(text: string): string {
  return text.replace(
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** At most this much of an untrusted key is shown in a message. */
const MAX_SHOWN_KEY_CHARS = 200;

/** An etcd key for a message or a log line: cut short, control characters escaped. */
export function showKey(key: string): string {
  return escapeControls(key.length > MAX_SHOWN_KEY_CHARS ? `${key.slice(0, MAX_SHOWN_KEY_CHARS)}...` : key);
}

/**
 * An untrusted name for a message or a log line: cut to MAX_QUOTED_NAME_CHARS (then "..."), and quoted
 * as a JSON string would be, with every control character as a \uXXXX escape and "<", ">" and "&"
 * escaped too, so a name can neither forge a log line nor carry markup into a page that shows it.
 */
export function quoteName(name: string): string {
  const cut = name.length > MAX_QUOTED_NAME_CHARS ? `${name.slice(0, MAX_QUOTED_NAME_CHARS)}...` : name;
  const escaped = escapeControls(cut.replace(/["\\]/g, (c) => `\\${c}`)).replace(
    /[<>&]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  return `"${escaped}"`;
}
