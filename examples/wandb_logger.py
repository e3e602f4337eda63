"""A Weights & Biases tracker for vaekit in 20 lines (wandb is not a vaekit dependency).

    vaekit.fit(vae, train_x, test_x, run_dir="runs/a", loggers=[WandbLogger()])

Run as a script, it only checks that the class has the `vaekit.tracking.Logger` methods.
"""

import vaekit.tracking


class WandbLogger:
    """Logs a vaekit run to W&B: params, metrics by step, pictures, the final summary."""

    def __init__(self, project="vaekit"):
        self.project = project

    def start(self, run):
        import wandb  # pip install wandb

        self.wandb = wandb
        self.run = wandb.init(project=self.project, name=run.name, id=run.name, resume="allow",
                              config=run.params, tags=list(run.tags.values()))

    def log_metrics(self, metrics, step):
        self.run.log(dict(metrics), step=step)

    def log_images(self, images, step):
        pictures = {k: self.wandb.Image(v.permute(1, 2, 0).numpy()) for k, v in images.items()}
        self.run.log(pictures, step=step)

    def finish(self, summary, status="FINISHED"):
        self.run.summary.update(dict(summary))
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


if __name__ == "__main__":
    assert isinstance(WandbLogger(), vaekit.tracking.Logger)
    print("WandbLogger implements vaekit.tracking.Logger")
