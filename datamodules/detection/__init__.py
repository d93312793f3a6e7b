"""Detection data: records, samples and the base datamodule (:mod:`.base`), VOC, COCO, the embedded shapes
and glyphs, box-aware transforms, mosaic and the box rule (:mod:`.validation`)."""
