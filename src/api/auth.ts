// Bearer-token authentication for an API: every request must carry `Authorization: Bearer TOKEN` with
// the API's token (the scheme in any case). The check runs before routing, so without the token every path, known or
// not, is the same 401 and reveals nothing. Tokens are compared as SHA-256 digests in constant time:
// equal lengths for timingSafeEqual, and no timing that depends on how much of the token was right.

import { createHash, timingSafeEqual } from "node:crypto";
import { HavenError } from "../core/errors.js";

/** SHA-256 of a token, the form tokens are compared in. */
export function digest(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/** The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive (RFC 9110 11.1). */
export function bearerToken(authorization: string | undefined): string | undefined {
  return /^bearer +(.+?) *$/i.exec(authorization ?? "")?.[1];
}

/** A check of a request's Authorization header that throws HAVEN_ERR_UNAUTHORIZED (401) unless it holds `token`. */
export function bearerTokenCheck(token: string): (authorization: string | undefined) => void {
  const expected = digest(token);
  return (authorization) => {
    const given = bearerToken(authorization);
    if (given === undefined || !timingSafeEqual(digest(given), expected))
      throw new HavenError("HAVEN_ERR_UNAUTHORIZED", "a valid bearer token is required (the cluster's API token)");
  };
}
