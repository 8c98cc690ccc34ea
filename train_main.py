"""Train a flow-matching UNet on MNIST: `python train_main.py --help` (the same as the `fm-train` command)."""
from fm_mnist.cli import train_main

if __name__ == '__main__':
    raise SystemExit(train_main())
