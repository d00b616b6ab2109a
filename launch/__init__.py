"""Launching ``python -m train`` from outside: local torchrun runs and SLURM batch jobs (``python -m launch``).

``launch`` runs the trainer as processes (torchrun, srun, sbatch); it loads and validates configs with the
trainer's config loader and ``validate`` before anything starts, and imports nothing else of ``train``.
"""
