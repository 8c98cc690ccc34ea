"""Remake, or check, the MNIST classifier whose features the evaluator uses.

    python benchmarks/train_classifier.py --data_dir <MNIST root>            # write fm_mnist/assets/mnist_classifier.pt
    python benchmarks/train_classifier.py --data_dir <MNIST root> --check    # retrain elsewhere and compare with the shipped file

The shipped file's SHA-256 is recorded in nbs/80_evaluation.ipynb (CLASSIFIER_SHA256); after remaking the weights,
paste the printed hash there and run nbdev_export. Retraining on the same hardware and software gives the same bytes;
other CPUs or library versions may differ in the last bits, which --check reports.
"""
import argparse, sys, tempfile, time
from pathlib import Path

import torch

from fm_mnist.evaluation import (CLASSIFIER_SHA256, classifier_accuracy, classifier_path, file_sha256, load_classifier,
                                 save_classifier, train_classifier)
from fm_mnist.data import load_mnist_tensors
from common import hardware


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_dir', help='MNIST root (default: $FM_MNIST_DATA, else data/)')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=str(classifier_path()), help='where to write the weights')
    p.add_argument('--check', action='store_true', help='train into a temporary file and compare with the shipped weights')
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    model, acc = train_classifier(args.data_dir, epochs=args.epochs, seed=args.seed, device=args.device)
    secs = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp()) / 'mnist_classifier.pt' if args.check else Path(args.out)
    sha = save_classifier(model, out, acc)
    print(f"test accuracy {acc:.4f}; {secs:.0f} s on {hardware(args.device)}")
    print(f'wrote {out}\nSHA-256 {sha}')
    if acc < 0.99: print('accuracy below 0.99: the evaluator needs at least 99%'); return 1
    if args.check:
        xt, yt = load_mnist_tensors(args.data_dir, train=False)
        shipped = classifier_accuracy(load_classifier(device='cpu'), xt, yt)
        same = sha == (CLASSIFIER_SHA256 or file_sha256(classifier_path()))
        print(f'shipped: accuracy {shipped:.4f}, SHA-256 {CLASSIFIER_SHA256}; remade weights are '
              f'{"bit-identical" if same else "different in their bits (other hardware or library versions)"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
