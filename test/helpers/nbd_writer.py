# A writer for resize tests: writes 64 KiB blocks over NBD in a loop (block n of the range gets bytes
# (n % 251) + 1), each flushed, reconnecting whenever the server drops the connection (a volume's engine
# restarting), until the file named by argv[4] exists. Prints one line: the number of blocks it wrote
# and saw acknowledged (flush included), all in order from the start of the range, and the longest time
# in ms between two acknowledgements (the pause clients saw).
# usage: nbd_writer.py URI OFFSET LENGTH STOPFILE
import os
import sys
import time

import nbd

BLOCK = 64 * 1024
uri, offset, length, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
acked = 0
longest_gap = 0.0
last_ack = time.monotonic()
handle = None
deadline = None
while not os.path.exists(stop) and acked < length // BLOCK:
    try:
        if handle is None:
            handle = nbd.NBD()
            handle.connect_uri(uri)
        handle.pwrite(bytes([(acked % 251) + 1]) * BLOCK, offset + acked * BLOCK)
        handle.flush()
        acked += 1
        now = time.monotonic()
        longest_gap = max(longest_gap, now - last_ack)
        last_ack = now
        deadline = None
    except nbd.Error:
        handle = None
        # Bounded: a server away for more than 60 s is a failure of the test, not something to wait out.
        deadline = deadline or time.monotonic() + 60
        if time.monotonic() > deadline:
            print(acked, round(longest_gap * 1000))
            sys.exit(1)
        time.sleep(0.05)
print(acked, round(longest_gap * 1000))
