"""Train a spiking model: ``python tools/train.py --config configs/<run>.yaml [--key value ...]``."""
from spikeloc.cli import train

if __name__ == "__main__":
    train()
