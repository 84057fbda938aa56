"""`python -m training`: run the training stage (see training/train.py)."""

from training.train import main

main()
