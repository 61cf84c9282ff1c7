// The engine's HTTP API (`haven volume serve --api-listen --api-token-file`): a thin JSON shell over
// EngineControl, for `haven volume status|verify|resolve-split-brain` and, later, the control plane.
// Every request must carry the API's token as a bearer token (auth.ts), as on the agent API: whoever
// reaches the port could otherwise start a repair or pick a split-brain survivor (issue 16). A bad request gets
// a 4xx with a coded error naming what is wrong before anything reaches the engine (server.ts,
// requests.ts).
//
//   GET  /v1/status                                      200 VolumeStatus
//   POST /v1/verify               {"repair"?: boolean}   202 VerifyStatus (409 if one is running)
//   POST /v1/resolve-split-brain  {"survivor": string}   200 VolumeStatus
//
// Errors are {"error": {"code": "HAVEN_ERR_...", "message": "..."}} with the HTTP status that the
// error registry gives the code.

import type { EngineControl } from "../engine/status.js";
import { parseResolveSplitBrainRequest, parseVerifyRequest } from "./requests.js";
import { bearerTokenCheck } from "./auth.js";
import { ApiServer, type ApiLimits } from "./server.js";

export { MAX_REQUEST_BODY_BYTES } from "./server.js";

export interface EngineApiServerOptions {
  /** One line per request that changes something (every non-GET), and per listener error; stderr by default. */
  readonly log?: (line: string) => void;
  /** The server's bounds, when not DEFAULT_API_LIMITS (tests). */
  readonly limits?: Partial<ApiLimits>;
}

export class EngineApiServer {
  private readonly server: ApiServer;

  constructor(control: EngineControl, token: string, options: EngineApiServerOptions = {}) {
    const check = bearerTokenCheck(token);
    this.server = new ApiServer({
      what: "engine API",
      failure: "the engine failed",
      authenticate: (request) => check(request.headers.authorization),
      ...(options.limits !== undefined && { limits: options.limits }),
      log: options.log ?? ((line) => process.stderr.write(`${line}\n`)),
    });
    this.server.route("/v1/status", { GET: () => control.status() });
    this.server.route("/v1/verify", {
      POST: (request, reply) => {
        const verify = control.startVerify(parseVerifyRequest(request.body));
        reply.code(202).header("location", "/v1/status");
        return verify;
      },
    });
    this.server.route("/v1/resolve-split-brain", {
      POST: (request) => control.resolveSplitBrain(parseResolveSplitBrainRequest(request.body).survivor),
    });
  }

  /** Starts listening; resolves with the bound address as HOST:PORT (the real port when 0 was asked). */
  listen(host: string, port: number): Promise<string> {
    return this.server.listen(host, port);
  }

  /** Stops accepting, lets requests in flight finish (for at most 2 s), then closes. */
  stop(): Promise<void> {
    return this.server.stop();
  }
}
