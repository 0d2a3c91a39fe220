"""Camera columns are stored as they came: no compression, no dictionary, no statistics; segments written
the old way (zstd frames, statistics) still read and sample."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from cloud.buffer import ReplayBuffer
from cloud.buffer.storage import SEGMENTS
from tests.cloud.test_image_replay import SPEC, Fleet, check_frames, image_buffer


def test_camera_columns_have_no_compression_dictionary_or_statistics(tmp_path):
    buf = image_buffer(tmp_path)
    Fleet(robots=2, chunk=10).segment(buf, [25], wire=True)
    md = pq.read_metadata(tmp_path / SEGMENTS / buf.segments()[0].name)
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema.endswith((".cam", ".wrist")):
                assert col.compression == "UNCOMPRESSED" and not col.is_stats_set, col.path_in_schema
                assert not any("DICTIONARY" in e for e in col.encodings), (col.path_in_schema, col.encodings)
            else:  # the rest keeps what readers and filters use
                assert col.compression == "ZSTD" and col.is_stats_set, col.path_in_schema
    check_frames(buf.sample(32, np.random.default_rng(0)))


def test_a_segment_of_the_previous_layout_still_reads(tmp_path):
    """Frames zstd-compressed with statistics and dictionaries, as an older build or another writer left them."""
    buf = image_buffer(tmp_path)
    fleet = Fleet(robots=2, chunk=10)
    fleet.segment(buf, [25], wire=True)
    buf.store.compact()  # the snapshot names the segment; its file is then rewritten the old way below
    path = tmp_path / SEGMENTS / buf.segments()[0].name
    table = pq.read_table(path)
    pq.write_table(table, path, compression="zstd", use_dictionary=True, write_statistics=True)
    again = ReplayBuffer(tmp_path, 10_000, ["pos"], image_fields=["cam", "wrist"],
                         image_memory_bytes=buf.image_memory_bytes, history_fraction=1.0)
    assert again.spec == SPEC and again.rows == 50
    assert pq.read_metadata(path).row_group(0).column(5).compression == "ZSTD"
    keys = check_frames(again.sample(64, np.random.default_rng(1)))
    assert set(keys) <= set(fleet.rows)
