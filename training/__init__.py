"""Keras training scripts for hvdspar: the paper's experiments under horovodrun.

    horovodrun -np 2 -H localhost:2 python -m hvdspar.training.train --model logreg --data synthetic \
        --compressor gspar:rho=0.01 --optimizer sgd --batch-size 8 --epochs 20

Modules:
  data       the paper's synthetic generator, LIBSVM a9a/w8a, CIFAR-10 (+ exact subset), Fashion-MNIST; shards
  models     logistic regression, linear SVM (hinge), the paper's CNN
  fstar      f* = min f for the convex models (L-BFGS + Newton / SVM dual and smoothing), cached on disk
  svrg       distributed SVRG with the compressed variance-reduced gradient
  callbacks  per-epoch metrics into Keras logs, checkpoints, metrics file
  train      the command line (python -m hvdspar.training.train --help)
"""
