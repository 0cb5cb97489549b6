"""Train a ResNet-20 in a plain PyTorch loop and record it with probe.Recorder (see README.md)."""

import argparse

import torch
import torch.nn.functional as F

import probe
from probe.datasets.tensors import augment, normalize

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument(
    "--data", help="CIFAR-10 as train/ and test/ class folders (else $PROBE_DATA, else download)"
)
ap.add_argument("--run-dir", default="runs/own-loop")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--subset", type=int, default=2000, help="training images (0 = all 50,000)")
ap.add_argument("--val-size", type=int, default=1000, help="validation images (probe set included)")
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
torch.manual_seed(0)

rec = probe.Recorder(
    args.run_dir,
    model="resnet",
    model_params={"depth": 20},
    dataset="cifar10",
    data=args.data,
    subset_train_size=args.subset,
    probe_set_size=min(500, args.val_size),
    analysis_batch_size=256,
    val_size=args.val_size,
    epochs=args.epochs,
    device=args.device,
    force=True,
)
ds, spec, dev = rec.dataset, rec.spec, rec.device
x_train, y_train = ds.train_x[rec.train_indices].to(dev), ds.train_y[rec.train_indices].to(dev)
model = spec.build().to(dev)  # or any nn.Module whose state dict is the family's
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
gen = torch.Generator().manual_seed(1)

with rec:
    rec.record(0, model, opt)  # epoch 0: the initialisation
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum = correct = 0.0
        perm = torch.randperm(len(y_train), generator=gen).to(dev)
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            x = normalize(augment(x_train[idx], gen), spec.mean, spec.std)
            logits = model(x)
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_train[idx]).sum().item()
        row = rec.record(
            epoch,
            model,
            opt,
            {"train_loss": loss_sum / len(perm), "train_acc": correct / len(perm)},
        )
        print(
            f"epoch {epoch}: train_loss {row['train_loss']:.3f}  val_acc {row['val_acc']:.3f}  "
            f"({row['epoch_seconds']:.0f} s)"
        )
print(
    f"run directory: {args.run_dir}; next: probe analyze {args.run_dir} --all && probe report "
    f"{args.run_dir}"
)
