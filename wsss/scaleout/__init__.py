"""Per-image stages as chunks: in this process (engine local, as shipped) or on a Dask cluster
(engine dask). A stage splits its images into chunks aligned to its output shards; one chunk
function, the same in both engines, writes its chunk's files (files.py: temp name, then rename)
and returns statistics the driver sums. engine.py runs the chunks."""
