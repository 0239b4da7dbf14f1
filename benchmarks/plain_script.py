"""The plain script: the ~60 lines of PyTorch a user writes, the peer that benchmarks/defaults.py holds auto to.

Full-width ResNet-18 (random weights) on the picture squashed to a square, the training split's own mean/std,
AdamW one-cycle peak 2e-3, weight decay 0.05, flips only, label smoothing 0.1, batch 64, epochs fitted to the
budget from the first steps' speed, the last epoch's weights scored on DATA/test (DATA/val is not used).

    python benchmarks/plain_script.py DATA --budget 900 --out RUN      # writes RUN/metrics.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from torchvision import datasets, models
from torchvision import transforms as T


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder holding train/ and test/ class folders")
    parser.add_argument("--budget", type=float, default=900, help="wall seconds; the epochs fill 80 %% of it")
    parser.add_argument("--img-size", type=int, default=160, help="square side in px (the native one below 64 px)")
    parser.add_argument("--out", type=Path, default=Path("plain-run"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = (args.img_size, args.img_size)  # squashed, not cropped: a mark near an edge stays in the picture

    # the training split's own mean/std per channel over up to 500 images (ImageFolder's loader converts to RGB)
    probe = datasets.ImageFolder(args.data / "train", T.Compose([T.Resize(size), T.ToTensor()]))
    pixels = torch.stack([probe[i][0] for i in torch.randperm(len(probe))[:500].tolist()])  # N x 3 x H x W
    mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).clamp_min(1e-3).tolist()
    del pixels
    flips = [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
    train = datasets.ImageFolder(args.data / "train", T.Compose([T.Resize(size), *flips, T.ToTensor(),
                                                                   T.Normalize(mean, std)]))
    # drop_last: a last batch of 1 image fails in BatchNorm where 8 px pictures end at 1 x 1
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, num_workers=2, persistent_workers=True,
                                         drop_last=len(train) > 64)

    model = models.resnet18(weights=None, num_classes=len(train.classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3 / 25, weight_decay=0.05)  # one-cycle's starting LR
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = criterion(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()  # a host sync: the clock below measures finished steps

    # speed: up to 20 steps timed after 1 untimed one (worker start-up), within one epoch where it has more than
    # 1 step, at one-cycle's starting LR; they are a warm-up outside the schedule, which then starts a fresh epoch
    model.train()
    timed = max(1, min(20, len(loader) - 1))
    steps, timed_from = 0, None
    while steps <= timed:
        for x, y in loader:
            step(x, y)
            steps += 1
            timed_from = timed_from or time.perf_counter()
            if steps > timed:
                break
    epoch_s = (time.perf_counter() - timed_from) / timed * len(loader)
    epochs = max(1, int((0.8 * args.budget - (time.perf_counter() - started)) / epoch_s))
    print(f"{epoch_s:.1f} s per epoch of {len(loader)} steps -> {epochs} epochs", flush=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, epochs=epochs, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for x, y in loader:
            loss = step(x, y)
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs}: last loss {loss:.3f}, {time.perf_counter() - started:.0f} s", flush=True)

    # the last epoch's weights on the test split, its labels mapped by class name to the training split's numbers
    test = datasets.ImageFolder(args.data / "test", T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(mean, std)]))
    test.samples = [(path, train.class_to_idx[test.classes[label]]) for path, label in test.samples]
    model.eval()
    truth, predicted = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=64, num_workers=2):
            predicted += model(x.to(device)).argmax(1).tolist()
            truth += y.tolist()
    metrics = {"accuracy": accuracy_score(truth, predicted), "images": len(truth),
               "balanced_accuracy": balanced_accuracy_score(truth, predicted),
               "macro_f1": f1_score(truth, predicted, average="macro"), "epochs": epochs, "img_size": args.img_size,
               "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
