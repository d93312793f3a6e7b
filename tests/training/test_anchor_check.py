"""The detector measures its anchors against the training boxes when training starts."""
import warnings

import torch

from .test_detection_module import shapes, tiny_detector
from .tiny import trainer

TOO_LARGE = [[(150, 150), (180, 180), (200, 200)], [(220, 220), (260, 260), (300, 300)]]  # for 64-pixel images


def _fit(tmp_path, **kwargs):
    torch.manual_seed(0)
    module = tiny_detector(anchors=TOO_LARGE, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=shapes(augment=True))
    return module, [str(w.message) for w in caught if "model.init_args.anchors" in str(w.message)]


def test_anchors_that_do_not_fit_are_named_without_changing_the_run(tmp_path):
    checked, found = _fit(tmp_path / "on")
    assert len(found) == 1 and "fit the training boxes poorly" in found[0] and "anchors: [[" in found[0]
    unchecked, silent = _fit(tmp_path / "off", check_anchors=False)
    assert silent == []
    for p, q in zip(checked.parameters(), unchecked.parameters()):  # sampling the data moved no random stream
        assert torch.equal(p, q)
