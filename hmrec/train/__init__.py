"""The train stage: the two-tower model trained on purchase pairs (:func:`hmrec.train.job.train`).

``step`` is one optimisation step, ``distributed`` the gloo helpers and the
process launcher, ``checkpoint`` the epoch checkpoints, ``pairs`` the
Petastorm pairs and their loader, ``validation`` the recall measured after
each epoch, and ``job`` the training processes and the driver side.
"""

STAGE = "train"
