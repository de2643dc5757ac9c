"""Training the behaviour model: data from the log (data.py), training runs
(pipeline.py), the registry of versions (registry.py), and the background trainer
that retrains while the service keeps serving (background.py).

Import from the submodules: this package imports nothing eagerly, so that a
process that serves no model never loads torch.
"""
