// Mutual challenge-response authentication with a shared secret. Each side sends a random 32-byte
// challenge and proves knowledge of the secret with HMAC-SHA256(secret, role || challenge); the role
// label stops a proof from being reflected back to its sender. The secret never crosses the wire.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export const CHALLENGE_BYTES = 32;
export type Role = "engine" | "replica-server";

export function newChallenge(): Buffer {
  return randomBytes(CHALLENGE_BYTES);
}

export function proof(secret: Buffer, role: Role, challenge: Buffer): Buffer {
  return createHmac("sha256", secret).update(role).update(challenge).digest();
}

/** Constant-time check that `received` proves `role` knows the secret for `challenge`. */
export function verifyProof(secret: Buffer, role: Role, challenge: Buffer, received: Buffer): boolean {
  const expected = proof(secret, role, challenge);
  return received.length === expected.length && timingSafeEqual(received, expected);
}
