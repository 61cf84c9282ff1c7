// What an NBD export served its clients: requests, bytes and latency of reads and of writes (writes,
// trims and zeroing), as the NBD front saw them (from the request's dispatch to its reply being
// queued, so sendfile reads and reads of holes count too). The front fills it on every request, so
// it is plain numbers and two preallocated histograms; its owner (the agent, per served volume)
// hands it to the export and the metrics read it at scrape time.
// Measured with bench/metrics on the 2-CPU test machine, under load from other runs: 0.3 to 1.1 µs per
// request, nearly all of it the two performance.now() reads (150 to 275 ns each there; the counting
// and the bucket scan take 50 to 130 ns). At about 10k 4 KiB requests per second that is 1% of the
// server's time at most. fio's side-by-side run could not tell the two exports apart there: its rounds
// spread by a factor of 3 to 6, far above any difference between them.

import { LatencyHistogram } from "./latency-histogram.js";

export class ServedRequests {
  reads = 0;
  readBytes = 0;
  writes = 0;
  writtenBytes = 0;
  /** Requests that got an error reply after they were dispatched (refused ones are not dispatched). */
  errors = 0;
  readonly readSeconds = new LatencyHistogram();
  readonly writeSeconds = new LatencyHistogram();

  read(bytes: number, seconds: number): void {
    this.reads++;
    this.readBytes += bytes;
    this.readSeconds.observe(seconds);
  }

  write(bytes: number, seconds: number): void {
    this.writes++;
    this.writtenBytes += bytes;
    this.writeSeconds.observe(seconds);
  }
}
