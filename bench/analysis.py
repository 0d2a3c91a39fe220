"""The hand-written closing note of docs/benchmarks.md: where the time goes, what would close each gap.

The profiles quoted here are reproducible with ``python -m bench.profile compress|weights|ingest``
(cProfile and py-spy); the figures above are from the latest full run.
"""

ANALYSIS = """
## Product issues found while building these benchmarks (fixed)

- A camera robot could not run in the edge agent: the driver made its EGL
  context current on the main thread at startup, and the control loop, on its
  own thread, then failed with `EGL_BAD_ACCESS`. The driver now releases the
  context after every draw (`tests/hal_drivers/test_mujoco_fetch.py` renders
  from a second thread).
- A synchronous agent waiting for a new policy (`control.sync`) did not wake on
  SIGTERM; `ControlLoop.stop` now interrupts `PolicyHolder.wait_newer`.

## How to read the tables

- `ratio` is figure / baseline, both measured in the same run. For times
  (`weights`, `jitter`, `buffer` recovery) lower is better; for rates higher is better.
- `PASS`/`MISS` compare against the issue's target; `-` means reported, no target.
- All processes share one 2-core machine (with other work running on it): the
  learner and the robots of `jitter` and `async` are pinned to different cores
  with `taskset` to stand in for separate machines; `ingest`, `weights` and
  `buffer` share both cores.

## Where the time goes, and what would close each gap

### ingest (target >= 0.6x of a raw websocket: missed by far)

The baseline streams chunk bodies into a socket and counts them; the product
decodes and validates every chunk, seals it into a Parquet segment with
fsync + rename + directory fsync + manifest rewrite, acks, and the robot
records the ack durably. py-spy (`python -m bench.profile ingest`, state-only
50-step chunks, share of busy samples):

| side | where | share |
|---|---|---|
| learner | `ReplayBuffer.write` (sealing a segment) | 59 % |
| learner | ... of which `SegmentStore._commit` (manifest rewrite) | 22 % (`Manifest.to_json` alone 10 %) |
| learner | ... of which `pq.write_table` | ~15 % |
| learner | `Ingest.decode` (zstd, IPC, full validation, `single_value` = `unique()` on string columns) | 24 % |
| agent | `Spool.ack` -> `StateSlots.write` (a state file rewritten and fsynced for **every** ack) | 41 % |
| agent | `Spool.read` + `ws.send` | 24 % |

What would close the gap (product changes, not made here):
1. **Manifest as an append-only log** (one fsynced line per segment, compacted
   now and then) instead of re-serialising every segment ever written on each
   commit: the cost now grows with the run (quadratic over a run of small segments).
2. **Cumulative acks on the robot**: persist the acked mark at most every
   ~100 ms or per N acks. Safe: on reconnect the cloud's welcome carries the
   durable mark and the spool adopts it (`adopt_cloud_mark`), so a stale local
   mark only causes resends the cloud already drops.
3. **Bigger chunks on fast links**: 50-step state chunks are ~4 kB on the wire;
   every per-chunk cost (frame, validation, CRC, ack, fsync share) is paid 600
   times a second. Cut chunks by bytes/time as well as steps.
4. **Images**: the learner re-compresses image columns with Parquet zstd
   (noisy frames do not compress, so it is wasted CPU): write camera columns
   uncompressed, without dictionary or statistics, or keep the chunk's zstd
   body as the stored form.
5. `validate(full=True)` and `unique()` per chunk: check cheaper invariants
   (offsets are already bounded by the IPC reader) and compare the robot id
   from the dictionary/first and last value.

### compress (raw+zstd: ratio equal, camera bytes halved; speed ~0.7x clean / 0.9x noisy)

Frames are stored once (schema v2): a chunk carries each step's frame and
its last step's next frame, so raw camera bytes per transition are ~0.5x of
the old layout on the wire and in Parquet. For PNG/JPEG the wire figure is
~1x: a 50-step chunk of compressed frames fits zstd-3's 2 MiB window, so the
old copy was already nearly free there; it cost a second image encode per
step on the robot and a second stored copy in Parquet (both gone now).

Encode speed of clean raw frames stays below the target: cProfile of one
50-step clean chunk shows zstd itself close to the baseline's time; the rest
is the Arrow IPC stream and its copy before zstd (`to_pybytes()`). Raw frames
are now gathered from one `np.stack` buffer (no per-frame `bytes`); what
remains: compress straight from the IPC buffer (zstd accepts the buffer
protocol), one copy of the chunk fewer. With camera noise only JPEG keeps a
20 Mbit/s uplink above 30 frames/s.

### weights (<= 1.5x of a raw send: missed, ~2-3x)

Step timings for 10M parameters (`python -m bench.profile weights`):
learner persists `latest.safetensors` with fsync before telling any link
(~50 ms), one extra copy when the frame is encoded (~25 ms); the robot
checks sha256 and parses safetensors (~50 ms), then `PolicyHolder.prepare`
builds a fresh `Actor` - **randomly initialising 10M parameters** (`uniform_`,
~50 ms) only to overwrite them - and runs `isfinite` over every tensor
(~35 ms). Since policies travel in parts, reassembly adds one more copy.
To close it: persist the blob concurrently with (not before) the push; build
the actor on the `meta` device or with `torch.nn.utils.skip_init` and load
with `assign=True`; hash the parts as they arrive (incremental sha256) so
verification overlaps the transfer. To 8 agents on this 2-core machine the
robot-side work of all 8 runs on 2 cores, so the fan-out time is mostly
that work serialised; the learner sends each link its own copy of the frame.

### jitter (< 2 ms added at p99: missed under a 100M swap)

Idle, the 50 Hz loop's ticks are late by ~0.1-0.2 ms (p99). Upload at full
speed alone adds a few ms at p99 (quick runs with a 1M policy); the two
100M-parameter swaps add tens of ms at p99 and hundreds at max. The control
loop is a thread in the same interpreter as the uplink's event loop and the
decode/load workers, so any step that holds the GIL stalls a tick that is due.
`python -m bench.profile gil` runs each robot-side step of a 100M swap next to
a 1 kHz ticker thread and records the ticker's worst delay:

| step (100M parameters, 400 MB) | time | worst delay of another thread |
|---|---|---|
| reassemble 381 parts (`PolicyDownload.add`: `bytearray +=`, then `bytes(buf)`) | ~0.8 s | **~510 ms** |
| `decode_weights` (sha256, then safetensors `load` from bytes) | ~0.6 s | **~320 ms** |
| `PolicyHolder.prepare` (build actor, load_state_dict, isfinite) | ~1.6 s | ~7 ms (torch releases the GIL) |

So the max is the policy download and parse, not the swap itself. To close it:
reassemble into one preallocated buffer (size is known from the first part)
and hand on a `memoryview`, never `bytes(buf)`; hash each part as it arrives
(`hashlib.sha256().update` releases the GIL on large buffers); load the
tensors zero-copy (`torch.frombuffer` on the memoryview at the safetensors
offsets, or write the blob to the spool disk and `safe_open` it) or parse in a
subprocess; and lower `sys.setswitchinterval` in the agent (5 ms by default).
The robust fix is a control loop in its own process (policy in shared memory,
swapped by version), which makes the loop immune to anything the uplink does.

### async (generation ~1.5x: at the target, met or missed by noise; >= 4.6x training missed)

One robot at 50 Hz, the product's default SAC (256x256, batch 256,
`utd_ratio` 1, one torch thread on its own core): the learner makes ~50
updates/s, just what 50 transitions/s allow. Synchronous, the robot idles
while the learner trains on its episode, and the learner idles while the robot
collects the next one. With one robot the training speed-up is bounded by
(generation + training) / max(generation, training), i.e. at most 2x; 4.6x
needs a learner that is idle most of the synchronous cycle (many robots
whose episodes the synchronous learner waits for, or a faster learner with a
higher `utd_ratio`). The run reports what this setup gives; a multi-robot
synchronous variant is the next benchmark to add.

### wan (goodput and loss met; recovery < 2 s met or missed depending on timing)

Over 20 Mbit/s with 1 % loss and 40 ms RTT the durable goodput is at the link
rate less framing (0.92-0.96x across runs) and nothing is lost or stored twice
across a 5 s cut. The time for data to flow again after the heal varied from
0.04 s to 2.5 s across runs on this machine; the agent's link events (kept in
the JSON, `extra.link_events_rel_heal_s`) show why. While the uplink is
pushing bulk data, the socket's send buffer is full during the cut, so the
websocket keepalive ping cannot even be sent: the link is not declared dead
during the 5 s cut (ping timeout 3 s) but only ~2 s *after* the heal, which
kills a TCP connection that was about to recover on its own (its
retransmission timer had backed off to seconds), and the robot redials and
resends from the cloud's mark. So recovery is bounded by TCP's backed-off RTO
or the delayed keepalive, whichever comes first. To make it < 2 s always:
keep the bytes queued in the socket small (a send-buffer/high-water limit on
the uplink, so control frames - pings, acks - are never stuck behind MBs of
bulk data, as the design requires), declare the link dead on *ack progress*
(no ack for N s while chunks are in flight) or with `TCP_USER_TIMEOUT`, and
redial at once when the link is back. The 40 ms RTT is added by a user-space
relay (no netem in this kernel), so TCP itself sees a short RTT; real
long-RTT loss recovery would be slower. Agent link settings here: keepalive
1 s / 3 s, backoff 0.1-1 s (the default backoff cap of 10 s would make
recovery up to 10 s).

### buffer (recovery met; image sampling with history from disk ~0.8x of memory)

Recovery of 1M transitions takes a few seconds, close to a cold start
(interpreter and torch import dominate). Image batches come from the
product's `ReplayBuffer`: recent frames in a uint8 ring sized in bytes, older
rows from the segments. Image segments are written in row groups of whole
chunks (<= 64 rows), cameras uncompressed in one page per column chunk, so a
batch draws a few row groups (weighted by rows) then rows within them, and
raw frames are read in place from the mapped file (the OS page cache is their
cache). Before those reads (row groups decoded by Arrow) the ratio was
0.4-0.6x; one Parquet row group per commit, as before this work, gave 0.006x.
The prefetcher's figure is below inline sampling on 2 shared cores (handing
batches between threads); on a GPU learner it overlaps the update.
"""
