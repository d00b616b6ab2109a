"""Launching ``python -m train`` from outside: local torchrun runs and SLURM batch jobs (``python -m launch``).

``launch`` runs the trainer as processes (torchrun, srun, sbatch); it reads configs through the trainer's
config loader to check them before anything starts, and imports nothing else of ``train``.
"""
