"""Spiking classification on the shared online loop (the first vehicle for FPTT)."""
from __future__ import annotations

from typing import Any, Callable

import timm
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from spikeloc.models.backbones.pretrained import load_pretrained
from .loop import OnlineModule
from .time_loop import present


class SpikingClassifier(OnlineModule):
    """A timm-registered spiking model + cross-entropy at every weighted time step.

    Args:
        model: registered model name (``ltc_convnet``, ``srnn_ltc``, ``spyv4_tiny``, ``ltc_resnet18`` ...).
        num_classes / in_channels: linked from the datamodule by the CLI.
        model_kwargs: extra constructor arguments (``width``, ``neuron``, ``channels`` ...).
        pretrained: local checkpoint to initialise the model from (head re-initialised when
            the number of classes differs).
        **kwargs: the loop's settings, see :class:`OnlineModule`.
    """

    def __init__(self, model: str = "ltc_convnet", num_classes: int = 10, in_channels: int = 1,
                 model_kwargs: dict[str, Any] | None = None, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = timm.create_model(model, num_classes=num_classes, in_chans=in_channels, **(model_kwargs or {}))
        if pretrained:
            rank_zero_info(load_pretrained(self.net, pretrained).summary())
            self.hparams["pretrained"] = None  # the checkpoint holds every weight: rebuilding reads no file
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Callable[[int], Tensor], int]:
        return present(batch[0], self.time_steps)

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        features, state = self.call_step(self.net, x_t, state)  # compiled with ``compile_step``
        return self.net.forward_head(features), state

    def step_loss(self, logits: Tensor, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(logits, batch[1])}

    def spiking_network(self) -> nn.Module:
        return self.net

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.net.get_classifier().parameters()}
        return [p for p in self.net.parameters() if id(p) not in head]

    def _evaluate(self, batch: tuple[Tensor, Tensor], metric: MulticlassAccuracy, stage: str) -> None:
        logits = self.run_sequence(batch)[-1]  # prediction read at the last step
        metric.update(logits, batch[1])
        self.log(f"{stage}/loss", F.cross_entropy(logits, batch[1]), sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_accuracy, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_accuracy, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities ``[B, K]`` read at the last step (``batch``: inputs or ``(inputs, labels)``)."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.run_sequence((inputs, None))[-1].softmax(dim=-1)
