"""Event-camera data: tonic classification sets (:mod:`.classification`), Prophesee ``.dat`` files, events to
frames, GEN1 and N-Caltech101 detection, the embedded moving shapes and batches that continue recordings."""
