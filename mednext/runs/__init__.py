"""Running experiments: the run folder (``layout``, no torch), the training and test entry
(``train``), the callbacks that keep a run's files true (``callbacks``) and the DDP launch and
run-id logic (``launch``). Importing the package loads nothing: each caller imports the module it
needs, so ``mednext leaderboard`` and the sweep runner never load Lightning.
"""
