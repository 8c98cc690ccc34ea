"""Generate MNIST digits from a checkpoint: `python generate_samples.py --help` (the same as the `fm-generate` command)."""
from fm_mnist.cli import generate_main

if __name__ == '__main__':
    raise SystemExit(generate_main())
