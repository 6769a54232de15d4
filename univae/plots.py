"""The PNG plots beside the evaluation report: training curves, the multi-scale control, sentence lengths."""

from univae import metrics


def _pyplot():
    import matplotlib  # imported here: heavy, and only the evaluation's plots need it

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(train, val, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("loss / CE", [(train, "loss", "train loss"), (val, "ce", "val CE")]),
        ("KL and MI (nats)", [(train, "kl", "train KL"), (val, "kl", "val KL"), (val, "mi", "val MI")]),
        ("reconstruction (val, greedy)", [(val, "char_f1", "char F1"), (val, "exact_match", "exact match")]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for rows, key, label in series:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_control(rows, unedited_f1, path):
    plt = _pyplot()
    labels = [f"{r['name']}\n{r['dims']}" if r["layer"] is not None else r["name"] for r in rows]
    bars = [
        ("char_f1", "char F1 with the sentence"),
        ("content_kept", "content chars kept"),
        ("pattern_kept", "pattern chars kept"),
        ("changed", "share changed"),
    ]
    bars = [(key, label) for key, label in bars if any(isinstance(r[key], float) for r in rows)]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 4.4))
    for b, (key, label) in enumerate(bars):
        x = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(x, [r[key] if isinstance(r[key], float) else 0.0 for r in rows], width=width, label=label)
    ax.axhline(unedited_f1, color="gray", linestyle="--", label="char F1, unedited")
    ax.set_xticks(list(range(len(rows))), labels)
    ax.set_ylim(0, 1)
    ax.set_title("dims replaced by a prior draw (lowest latent layer left)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lengths(data_texts, samples, maxlen, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = list(range(0, maxlen + 1))
    ax.hist([len(metrics.strip_ws(s)) for s in data_texts], bins=bins, alpha=0.6, density=True, label="data")
    ax.hist([len(metrics.strip_ws(s)) for s in samples], bins=bins, alpha=0.6, density=True, label="prior samples")
    ax.set_xlabel("length (chars)")
    ax.set_title("sentence lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
