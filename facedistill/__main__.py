"""``python -m facedistill`` (also what torchrun runs: ``torchrun --nproc_per_node 2 -m facedistill distill r.yaml``)."""

from facedistill.cli.main import app

if __name__ == "__main__":
    app()
