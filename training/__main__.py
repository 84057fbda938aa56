"""`python -m shoprank.training`: run the training stage (see training/train.py)."""

from shoprank.training.train import main

main()
