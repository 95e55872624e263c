"""Recipe, values over training, freezing, precision, stage plan, model/optimizer building, the trainer, the run
folder, run checkpoints and evaluation."""
