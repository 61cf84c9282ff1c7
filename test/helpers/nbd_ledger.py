# A client for failover tests that keeps a ledger of what the server acknowledged (libnbd).
#
#   nbd_ledger.py write URI BLOCKS SEED FIRST_SEQ
#                                         writes 4 KiB blocks at random, at most QUEUE_DEPTH at a time and
#                                         never two at once to one block, until the connection fails or
#                                         the process is killed. Each block's bytes are (block, seq) as two
#                                         big-endian u64s, repeated; seq counts up from FIRST_SEQ. Prints "sent B S" before a write goes
#                                         out and "ack B S" once the server acknowledged it, flushed each
#                                         time, and "end REASON" when the connection fails.
#   nbd_ledger.py read URI B1,B2,...      prints "B S" for each listed block as read back (S = 0 for zeroes,
#                                         -1 for bytes that are not one (block, seq) pattern).
import random
import struct
import sys

import nbd

BLOCK_BYTES = 4096
QUEUE_DEPTH = 8


def pattern(block, seq):
    return struct.pack(">QQ", block, seq) * (BLOCK_BYTES // 16)


def decode(block, data):
    if data == bytes(BLOCK_BYTES):
        return 0
    got_block, seq = struct.unpack(">QQ", data[:16])
    if got_block != block or data != pattern(block, seq):
        return -1
    return seq


def write(uri, blocks, seed, first_seq):
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    inflight = {}
    seq = first_seq - 1
    out = sys.stdout
    try:
        while True:
            while len(inflight) < QUEUE_DEPTH:
                block = rng.randrange(blocks)
                if any(b == block for b, _, _ in inflight.values()):
                    continue
                seq += 1
                buf = nbd.Buffer.from_bytearray(bytearray(pattern(block, seq)))
                out.write("sent %d %d\n" % (block, seq))
                out.flush()
                cookie = h.aio_pwrite(buf, block * BLOCK_BYTES)
                inflight[cookie] = (block, seq, buf)
            h.poll(-1)
            for cookie in list(inflight):
                if h.aio_command_completed(cookie):
                    block, s, _ = inflight.pop(cookie)
                    out.write("ack %d %d\n" % (block, s))
            out.flush()
    except nbd.Error as error:
        out.write("end %s\n" % str(error).replace("\n", " "))
        out.flush()


def read(uri, blocks):
    h = nbd.NBD()
    h.connect_uri(uri)
    for block in blocks:
        print("%d %d" % (block, decode(block, h.pread(BLOCK_BYTES, block * BLOCK_BYTES))))
    h.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        read(sys.argv[2], [int(b) for b in sys.argv[3].split(",") if b])
