// One identity's TLS material (its directory from pki.ts) as node's tls module takes it, and what a
// peer's certificate says once the handshake is done. Every Haven link is mutual: the server asks for
// the client's certificate and both sides refuse one the cluster CA did not sign.

import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { ConnectionOptions, TLSSocket, TlsOptions } from "node:tls";
import { HavenError } from "../core/errors.js";
import { CA_CERT, CERT, KEY, certificateInfo, type CertificateInfo } from "./pki.js";

export interface TlsIdentity {
  /** The directory it was read from (QEMU, nbdkit and libnbd can read it too). */
  readonly dir: string;
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly info: CertificateInfo;
}

/** Reads an identity's directory; a missing or unreadable file is a config error naming it. */
export async function loadTlsIdentity(dir: string): Promise<TlsIdentity> {
  const read = async (name: string): Promise<Buffer> => {
    try {
      return await readFile(join(dir, name));
    } catch (error) {
      throw unreadable(dir, name, error);
    }
  };
  return checkedIdentity(dir, await read(CA_CERT), await read(CERT), await read(KEY));
}

/** loadTlsIdentity for a constructor that cannot wait (a command's etcd client is made synchronously). */
export function loadTlsIdentitySync(dir: string): TlsIdentity {
  const read = (name: string): Buffer => {
    try {
      return readFileSync(join(dir, name));
    } catch (error) {
      throw unreadable(dir, name, error);
    }
  };
  return checkedIdentity(dir, read(CA_CERT), read(CERT), read(KEY));
}

function unreadable(dir: string, name: string, error: unknown): HavenError {
  return new HavenError(
    "HAVEN_ERR_CONFIG",
    `cannot read ${join(dir, name)} (a TLS identity directory holds ${CA_CERT}, ${CERT} and ${KEY}; ` +
      `'haven cert issue' makes one): ${(error as Error).message}`,
  );
}

function checkedIdentity(dir: string, ca: Buffer, cert: Buffer, key: Buffer): TlsIdentity {
  let info: CertificateInfo;
  try {
    info = certificateInfo(cert);
    if (!new X509Certificate(cert).verify(new X509Certificate(ca).publicKey))
      throw new Error(`it was not signed by the CA in ${CA_CERT}`);
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `${join(dir, CERT)} is not usable: ${(error as Error).message}`);
  }
  return { dir, ca, cert, key, info };
}

/** A server's options: its certificate, and a client's signed by the cluster CA required. */
export function serverTlsOptions(identity: TlsIdentity): TlsOptions {
  return {
    ca: identity.ca,
    cert: identity.cert,
    key: identity.key,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3",
  };
}

/**
 * A client's options to reach host `serverName`: its own certificate, and the server's checked against
 * the cluster CA and for that host's name (a host's certificate is refused for another host's name).
 */
export function clientTlsOptions(identity: TlsIdentity, serverName: string): ConnectionOptions {
  return {
    ca: identity.ca,
    cert: identity.cert,
    key: identity.key,
    minVersion: "TLSv1.3",
    servername: /^[\d.]+$|:/.test(serverName) ? undefined : serverName,
    rejectUnauthorized: true,
    checkServerIdentity: (_host, certificate) => {
      const info = certificateInfo(certificate.raw);
      if (info.kind !== "host" || info.name !== serverName)
        return new Error(`the server's certificate names ${info.kind} ${info.name}, not host ${serverName}`);
      return undefined;
    },
  };
}

/** What the peer's certificate says, once the handshake verified it; undefined without one. */
export function peerIdentity(socket: TLSSocket): CertificateInfo | undefined {
  if (!socket.authorized) return undefined;
  const certificate = socket.getPeerX509Certificate();
  return certificate === undefined ? undefined : certificateInfo(certificate.raw);
}
