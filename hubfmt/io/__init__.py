"""The streaming engine: moving tensor bytes between files, one tensor at a time, and publishing
outputs atomically. Every writer goes through it.

    stream.py     the write loop: prefetch, kernel copy or load+convert, byte counts, checksums
    progress.py   progress on a terminal
    atomic.py     outputs appear whole or not at all (temporaries, fsync, rename)
    writeback.py  pacing writeback so the final fsync finds nothing left
    transforms.py layout transforms; permute.py the tiled transposing copy they use
    malloc.py     the allocator setting the command line runs with
    hubfile.py    reading and writing hub files (the neutral format's own file)
    conformance.py checking a hub file against the spec (`hubfmt validate`)
"""
