// The fixed-newstyle handshake: greeting, client flags, then option haggling until GO or EXPORT_NAME
// picks an export (or the client aborts). Every option payload is length-checked before it is parsed;
// anything the spec says cannot be answered (bad magic, unknown client flags, oversized payloads)
// ends the connection with a reason for the log.
//
// TLS (NBD_OPT_STARTTLS, the spec's "TLS" section): with TLS configured the client may upgrade the
// connection in the middle of haggling; the server ACKs, runs a mutual X.509 handshake on the same TCP
// connection (the client's certificate must be signed by the cluster CA) and haggling starts again on
// the encrypted stream, forgetting what was agreed in clear (structured replies, meta contexts). With
// TLS required, every option but STARTTLS and ABORT gets ERR_TLS_REQD before the upgrade and
// EXPORT_NAME (which cannot be refused) drops the connection: nothing is served in clear. Bytes that a
// client sends after STARTTLS but before our ACK would be plaintext smuggled into the encrypted
// session, so they end the connection.

import type { Socket } from "node:net";
import { TLSSocket, type TlsOptions } from "node:tls";
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_CONTEXT_ID,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBD_MAGIC,
  Option,
  OPTION_REPLY_MAGIC,
  OptionReply,
  Size,
  TransmissionFlag,
} from "./constants.js";
import { ByteReader } from "./byte-reader.js";
import type { NbdExport, NbdLimits } from "./export.js";

/** Largest option payload accepted; enough for any valid option (names are at most 4096 bytes). */
const MAX_OPTION_PAYLOAD_BYTES = 64 * 1024;

export class ProtocolViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolViolation";
  }
}

export interface Negotiated {
  readonly export: NbdExport;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** base:allocation was selected for this export (BLOCK_STATUS allowed). */
  readonly baseAllocation: boolean;
  /** The client asked for block sizes, so it promised to honour them (misaligned requests get EINVAL). */
  readonly blockSizesAgreed: boolean;
  /** Bytes that arrived after the handshake ended: the first transmission requests. */
  readonly leftover: Buffer[];
  /** The stream transmission runs on: the accepted socket, or the TLS socket wrapped around it. */
  readonly socket: Socket;
  /** The client's certificate subject after STARTTLS, e.g. "operator alice"; undefined in clear. */
  readonly tlsPeer: string | undefined;
}

/** How a server offers TLS: node's server options (see security/tls-identity.ts) and whether it insists. */
export interface HandshakeTls {
  readonly options: TlsOptions;
  readonly required: boolean;
  /** Names the verified client certificate for the log. */
  readonly describePeer: (socket: TLSSocket) => string;
}

export interface ExportCatalog {
  /** The export for a name; "" means the default export. */
  find(name: string): NbdExport | undefined;
  list(): readonly NbdExport[];
}

/** DF only means something with structured replies; the spec says leave it clear otherwise. */
export function transmissionFlagsFor(exported: NbdExport, structuredReplies: boolean): number {
  const caps = exported.device.capabilities;
  let flags =
    TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_CACHE;
  if (structuredReplies) flags |= TransmissionFlag.SEND_DF;
  if (caps.readOnly) flags |= TransmissionFlag.READ_ONLY;
  if (!caps.readOnly && caps.canTrim) flags |= TransmissionFlag.SEND_TRIM;
  if (!caps.readOnly && caps.canWriteZeroes)
    flags |= TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FAST_ZERO;
  if (caps.canMultiConn) flags |= TransmissionFlag.CAN_MULTI_CONN;
  if (caps.rotational) flags |= TransmissionFlag.ROTATIONAL;
  return flags;
}

export async function negotiate(
  socket: Socket,
  catalog: ExportCatalog,
  limits: NbdLimits,
  log: (line: string) => void,
  tls?: HandshakeTls,
): Promise<Negotiated | undefined> {
  const stream = { socket, reader: new ByteReader(socket, MAX_OPTION_PAYLOAD_BYTES + Size.OPTION_HEADER) };
  // One deadline for the whole handshake, TLS included: a client that stalls anywhere is cut off.
  const timer = setTimeout(() => {
    stream.reader.close(`handshake not finished within ${limits.handshakeTimeoutMs} ms`);
    stream.socket.destroy();
  }, limits.handshakeTimeoutMs);
  try {
    return await haggle(stream, catalog, limits, log, tls);
  } finally {
    clearTimeout(timer);
  }
}

interface Stream {
  socket: Socket;
  reader: ByteReader;
}

/**
 * Replaces the stream's socket by a TLS server socket over it and waits for the TLS handshake; the
 * client certificate must verify against the CA. Throws ProtocolViolation when TLS fails.
 */
async function upgradeToTls(stream: Stream, tls: HandshakeTls): Promise<string> {
  const plain = stream.socket;
  const secure = new TLSSocket(plain, { ...tls.options, isServer: true });
  secure.on("error", () => undefined); // reported through the reader or the handshake below
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => reject(new ProtocolViolation(`TLS handshake failed: ${error.message}`));
    secure.once("error", onError);
    secure.once("close", () => reject(new ProtocolViolation("connection closed during the TLS handshake")));
    secure.once("secure", () => {
      secure.off("error", onError);
      resolve();
    });
  });
  // A bare TLSSocket (no tls.Server) does not act on the verification result itself: check it here.
  const verifyError = (secure as unknown as { _handle?: { verifyError(): Error | null } })._handle?.verifyError();
  const certificate = secure.getPeerX509Certificate();
  if (verifyError || certificate === undefined) {
    secure.destroy();
    throw new ProtocolViolation(
      `TLS client certificate refused: ${verifyError ? verifyError.message : "the client sent none"}`,
    );
  }
  secure.authorized = true;
  stream.socket = secure;
  stream.reader = new ByteReader(secure, MAX_OPTION_PAYLOAD_BYTES + Size.OPTION_HEADER);
  return `${tls.describePeer(secure)}, ${secure.getProtocol() ?? "TLS"} ${secure.getCipher().name}`;
}

async function haggle(
  stream: Stream,
  catalog: ExportCatalog,
  limits: NbdLimits,
  log: (line: string) => void,
  tls: HandshakeTls | undefined,
): Promise<Negotiated | undefined> {
  const socket = (): Socket => stream.socket;
  const reader = (): ByteReader => stream.reader;
  let tlsPeer: string | undefined;
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(NBD_MAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  socket().write(greeting);

  const clientFlags = (await reader().read(4)).readUInt32BE(0);
  const knownClientFlags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;
  if ((clientFlags & ~knownClientFlags) !== 0) {
    throw new ProtocolViolation(`client sent unknown handshake flags 0x${clientFlags.toString(16)}`);
  }
  const fixedNewstyle = (clientFlags & HandshakeFlag.FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & HandshakeFlag.NO_ZEROES) !== 0;

  let structuredReplies = false;
  let metaContext: { export: NbdExport; baseAllocation: boolean } | undefined;

  const reply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): void => {
    const header = Buffer.alloc(Size.OPTION_REPLY_HEADER);
    header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type >>> 0, 12);
    header.writeUInt32BE(data.length, 16);
    socket().write(data.length > 0 ? Buffer.concat([header, data]) : header);
  };
  const fail = (option: number, type: number, message: string): void => {
    log(`option ${optionName(option)} refused: ${message}`);
    reply(option, type, Buffer.from(message, "utf8"));
  };

  for (let count = 0; ; count++) {
    if (count >= limits.maxOptionsPerHandshake) {
      throw new ProtocolViolation(`more than ${limits.maxOptionsPerHandshake} options in one handshake`);
    }
    const header = await reader().read(Size.OPTION_HEADER);
    if (header.readBigUInt64BE(0) !== IHAVEOPT) {
      throw new ProtocolViolation(`bad option magic 0x${header.readBigUInt64BE(0).toString(16)}`);
    }
    const option = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > MAX_OPTION_PAYLOAD_BYTES) {
      throw new ProtocolViolation(
        `option ${optionName(option)} payload of ${length} bytes exceeds ${MAX_OPTION_PAYLOAD_BYTES}`,
      );
    }
    const payload = length > 0 ? await reader().read(length) : Buffer.alloc(0);

    const inClear = tlsPeer === undefined;
    if (inClear && tls?.required && option !== Option.STARTTLS && option !== Option.ABORT) {
      if (option === Option.EXPORT_NAME) throw new ProtocolViolation("EXPORT_NAME before STARTTLS; TLS is required");
      fail(option, OptionReply.ERR_TLS_REQD, "this server requires TLS: send STARTTLS first");
      continue;
    }

    switch (option) {
      case Option.EXPORT_NAME: {
        const exported = catalog.find(payload.toString("utf8"));
        if (!exported)
          throw new ProtocolViolation(`EXPORT_NAME asked for unknown export "${payload.toString("utf8")}"`);
        const flags = transmissionFlagsFor(exported, structuredReplies);
        const answer = Buffer.alloc(noZeroes ? 10 : 10 + 124);
        answer.writeBigUInt64BE(BigInt(exported.device.size), 0);
        answer.writeUInt16BE(flags, 8);
        socket().write(answer);
        return finish(exported, flags, false);
      }
      case Option.ABORT:
        reply(option, OptionReply.ACK);
        socket().end();
        return undefined;
      case Option.LIST: {
        if (length !== 0) {
          fail(option, OptionReply.ERR_INVALID, "LIST takes no payload");
          break;
        }
        for (const exported of catalog.list()) {
          const name = Buffer.from(exported.name, "utf8");
          const description = Buffer.from(exported.description, "utf8");
          const data = Buffer.alloc(4 + name.length + description.length);
          data.writeUInt32BE(name.length, 0);
          name.copy(data, 4);
          description.copy(data, 4 + name.length);
          reply(option, OptionReply.SERVER, data);
        }
        reply(option, OptionReply.ACK);
        break;
      }
      case Option.STARTTLS: {
        if (length !== 0) fail(option, OptionReply.ERR_INVALID, "STARTTLS takes no payload");
        else if (tls === undefined) fail(option, OptionReply.ERR_POLICY, "this server does not offer TLS");
        else if (!inClear) fail(option, OptionReply.ERR_INVALID, "TLS is already in use on this connection");
        else {
          const early = reader().detach();
          if (early.length > 0) {
            throw new ProtocolViolation("client sent data after STARTTLS before the server's reply");
          }
          reply(option, OptionReply.ACK);
          tlsPeer = await upgradeToTls(stream, tls);
          log(`TLS established with ${tlsPeer}`);
          // The spec: what was negotiated in clear does not carry over into the TLS session.
          structuredReplies = false;
          metaContext = undefined;
        }
        break;
      }
      case Option.INFO:
      case Option.GO: {
        const request = parseInfoRequest(payload);
        if (typeof request === "string") {
          fail(option, OptionReply.ERR_INVALID, request);
          break;
        }
        const exported = catalog.find(request.name);
        if (!exported) {
          fail(option, OptionReply.ERR_UNKNOWN, `no export named "${request.name}"`);
          break;
        }
        const flags = transmissionFlagsFor(exported, structuredReplies);
        const exportInfo = Buffer.alloc(12);
        exportInfo.writeUInt16BE(Info.EXPORT, 0);
        exportInfo.writeBigUInt64BE(BigInt(exported.device.size), 2);
        exportInfo.writeUInt16BE(flags, 10);
        reply(option, OptionReply.INFO, exportInfo);
        const wantsBlockSize = request.infos.includes(Info.BLOCK_SIZE);
        if (request.infos.includes(Info.NAME)) {
          reply(option, OptionReply.INFO, infoString(Info.NAME, exported.name));
        }
        if (request.infos.includes(Info.DESCRIPTION) && exported.description !== "") {
          reply(option, OptionReply.INFO, infoString(Info.DESCRIPTION, exported.description));
        }
        if (wantsBlockSize) {
          const sizes = Buffer.alloc(14);
          sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
          sizes.writeUInt32BE(limits.minBlockBytes, 2);
          sizes.writeUInt32BE(limits.preferredBlockBytes, 6);
          sizes.writeUInt32BE(limits.maxPayloadBytes, 10);
          reply(option, OptionReply.INFO, sizes);
        }
        reply(option, OptionReply.ACK);
        if (option === Option.GO) return finish(exported, flags, wantsBlockSize);
        break;
      }
      case Option.STRUCTURED_REPLY:
        if (length !== 0) fail(option, OptionReply.ERR_INVALID, "STRUCTURED_REPLY takes no payload");
        else {
          structuredReplies = true;
          reply(option, OptionReply.ACK);
        }
        break;
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT: {
        if (!structuredReplies) {
          fail(option, OptionReply.ERR_INVALID, "meta contexts need STRUCTURED_REPLY first");
          break;
        }
        const request = parseMetaContextRequest(payload);
        if (typeof request === "string") {
          fail(option, OptionReply.ERR_INVALID, request);
          break;
        }
        const exported = catalog.find(request.exportName);
        if (!exported) {
          fail(option, OptionReply.ERR_UNKNOWN, `no export named "${request.exportName}"`);
          break;
        }
        const listing = option === Option.LIST_META_CONTEXT;
        const matches =
          listing && request.queries.length === 0
            ? true
            : request.queries.some((query) => query === BASE_ALLOCATION || (listing && query === "base:"));
        if (matches) {
          const name = Buffer.from(BASE_ALLOCATION, "utf8");
          const data = Buffer.alloc(4 + name.length);
          data.writeUInt32BE(listing ? 0 : BASE_ALLOCATION_CONTEXT_ID, 0);
          name.copy(data, 4);
          reply(option, OptionReply.META_CONTEXT, data);
        }
        if (!listing) metaContext = { export: exported, baseAllocation: matches };
        reply(option, OptionReply.ACK);
        break;
      }
      default:
        if (!fixedNewstyle)
          throw new ProtocolViolation(`unsupported option ${option} from a non-fixed-newstyle client`);
        fail(option, OptionReply.ERR_UNSUP, `option ${optionName(option)} is not supported`);
    }
  }

  function finish(exported: NbdExport, transmissionFlags: number, blockSizesAgreed: boolean): Negotiated {
    return {
      export: exported,
      transmissionFlags,
      structuredReplies,
      baseAllocation: metaContext?.export === exported && metaContext.baseAllocation,
      blockSizesAgreed,
      leftover: reader().detach(),
      socket: socket(),
      tlsPeer,
    };
  }
}

function infoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text, "utf8");
  const data = Buffer.alloc(2 + bytes.length);
  data.writeUInt16BE(type, 0);
  bytes.copy(data, 2);
  return data;
}

/** GO/INFO payload: u32 name length, name, u16 count, count x u16 info types. */
export function parseInfoRequest(payload: Buffer): { name: string; infos: number[] } | string {
  if (payload.length < 6) return `payload of ${payload.length} bytes is too short`;
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > Size.MAX_STRING) return `export name of ${nameLength} bytes exceeds ${Size.MAX_STRING}`;
  if (4 + nameLength + 2 > payload.length) return "export name runs past the end of the payload";
  const name = payload.toString("utf8", 4, 4 + nameLength);
  const count = payload.readUInt16BE(4 + nameLength);
  if (payload.length !== 4 + nameLength + 2 + 2 * count) {
    return `payload length ${payload.length} does not match ${count} info requests`;
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(payload.readUInt16BE(4 + nameLength + 2 + 2 * i));
  return { name, infos };
}

/** LIST/SET_META_CONTEXT payload: u32 name length, name, u32 count, count x (u32 length, query). */
export function parseMetaContextRequest(payload: Buffer): { exportName: string; queries: string[] } | string {
  if (payload.length < 8) return `payload of ${payload.length} bytes is too short`;
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > Size.MAX_STRING) return `export name of ${nameLength} bytes exceeds ${Size.MAX_STRING}`;
  if (4 + nameLength + 4 > payload.length) return "export name runs past the end of the payload";
  const exportName = payload.toString("utf8", 4, 4 + nameLength);
  const count = payload.readUInt32BE(4 + nameLength);
  let position = 8 + nameLength;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (position + 4 > payload.length) return `query ${i} of ${count} runs past the end of the payload`;
    const queryLength = payload.readUInt32BE(position);
    if (queryLength > Size.MAX_STRING) return `query of ${queryLength} bytes exceeds ${Size.MAX_STRING}`;
    if (position + 4 + queryLength > payload.length) return `query ${i} runs past the end of the payload`;
    queries.push(payload.toString("utf8", position + 4, position + 4 + queryLength));
    position += 4 + queryLength;
  }
  if (position !== payload.length) return `${payload.length - position} stray bytes after the queries`;
  return { exportName, queries };
}

const OPTION_NAMES = Object.fromEntries(Object.entries(Option).map(([name, value]) => [value, name]));

export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? `#${option}`;
}
