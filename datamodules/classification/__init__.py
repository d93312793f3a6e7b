"""Image classification data: the embedded procedural shapes and MNIST / Fashion-MNIST / CIFAR-10 (static or
as pixel sequences)."""
