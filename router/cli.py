"""Click commands `train`, `eval` and `classify`, added to the `rightsize` group by the gateway.

Training code (router.training) is imported inside the commands that run it, so building the
command group, `--help` and `classify` need only the runtime.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from router.artifact import RUNTIMES, default_artifact_dir
from router.encoders.sentence_transformer import DEFAULT_MODEL


@click.command("train")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory with train.jsonl.gz and dev.jsonl.gz.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Artifact directory (default: the one shipped in the package).",
)
@click.option(
    "--date",
    default=None,
    help="Date for the model card (default: today); pass the shipped one to reproduce bytes.",
)
@click.option(
    "--no-transformer",
    is_flag=True,
    help="Skip the sentence-transformers heads (faster).",
)
@click.option(
    "--static-from",
    "static_from",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Reuse this artifact's static token table instead of distilling one "
    "(refits the heads only; how the shipped static heads were refitted on 2026-12-03).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".cache/embeddings"),
    show_default=True,
    help="Embedding cache.",
)
@click.option(
    "--encoder-model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="The sentence-transformers model the static table is distilled from and the "
    "sentence-transformers runtime encodes with: the packaged default, a directory, or a "
    "name already in the Hugging Face cache (nothing is downloaded).",
)
def train(
    data_dir: Path,
    out_dir: Path | None,
    date: str | None,
    no_transformer: bool,
    static_from: Path | None,
    cache_dir: Path,
    encoder_model: str,
) -> None:
    """Train the router heads (and the static encoder); write the artifact and model card."""
    from router.training.train import TrainOptions, train_artifact

    options = TrainOptions(
        out_dir=out_dir or default_artifact_dir(),
        date=date or dt.date.today().isoformat(),
        with_transformer=not no_transformer,
        reuse_static_from=static_from,
        cache_dir=cache_dir,
        transformer_model=encoder_model,
    )
    train_artifact(data_dir, options)
    click.echo(f"wrote {options.out_dir}")


@click.command("eval")
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory with train.jsonl.gz and dev.jsonl.gz: scores the dev split.",
)
@click.option(
    "--pairs",
    "pairs_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON lines of your own prompts with a weak and a strong model's quality on each "
    '({"prompt", "weak", "strong", "strong_tokens"?, "group"?}; docs/router.md): scores them.',
)
@click.option(
    "--artifact",
    "artifact_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="Encoder runtime (default: the artifact's).",
)
@click.option(
    "--loso",
    is_flag=True,
    help="Also retrain per held-out source (leave-one-source-out) and report it.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    # router.training.peers.PEERS, spelt out: building the command group imports no training.
    type=click.Choice(("litellm",)),
    help="Also score another router on the same prompts, as its authors ship it (litellm: "
    "LiteLLM's complexity router, default config, its tier as demand); repeatable.",
)
def eval_cmd(
    data_dir: Path | None,
    pairs_path: Path | None,
    artifact_dir: Path | None,
    runtime: str | None,
    loso: bool,
    peers: tuple[str, ...],
) -> None:
    """Print routing and budget metrics per group, with random and prompt-length baselines.

    Either the dev split of --data (per source and overall) or your own --pairs file.
    """
    from router.router import Router
    from router.training.evaluate import markdown_table

    if (data_dir is None) == (pairs_path is None):
        raise click.UsageError("give exactly one of --data DIR and --pairs FILE")
    if loso and data_dir is None:
        raise click.UsageError("--loso retrains on the training split: it needs --data DIR")
    if peers and data_dir is None:
        raise click.UsageError("--peer scores the dev split beside the router: it needs --data DIR")
    if pairs_path is not None:
        from router.training.pairs import PairFileError, evaluate_pairs, load_pairs

        try:
            rows = load_pairs(pairs_path)  # a bad row fails before the router loads
        except PairFileError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(markdown_table(evaluate_pairs(Router.load(artifact_dir, runtime), rows)))
        return
    assert data_dir is not None  # checked above; narrows the type
    router = Router.load(artifact_dir, runtime)
    from router.training.dataset import load_split
    from router.training.evaluate import evaluate
    from router.training.peers import peer_predictions
    from router.training.train import predictions

    train_records, dev = load_split(data_dir, "train"), load_split(data_dir, "dev")
    dev_emb = router.embed_batch([r.prompt for r in dev])
    peer_preds = [peer_predictions(name, dev) for name in dict.fromkeys(peers)]
    ours = predictions("router", router.heads, dev_emb, dev)
    click.echo(markdown_table(evaluate(train_records, dev, ours, peer_preds)))
    if loso:
        from router.training.crossval import leave_one_source_out

        click.echo(
            "\nLeave-one-source-out (heads retrained without the source, "
            "scored on its dev prompts):"
        )
        click.echo(
            markdown_table(
                leave_one_source_out(router.encoder, train_records, dev, peers=peer_preds)
            )
        )


@click.command("classify")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--artifact",
    "artifact_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None)
def classify(
    input_path: Path,
    output_path: Path,
    batch_size: int,
    artifact_dir: Path | None,
    runtime: str | None,
) -> None:
    """Estimate every {"id", "prompt"} row of a JSONL file; bad rows become {"id", "error"} rows."""
    from tqdm import tqdm

    from router.classify import classify_stream, read_lines
    from router.router import Router

    router = Router.load(artifact_dir, runtime)
    total = os.path.getsize(input_path)
    with (
        open(input_path, "rb") as src,
        # A lone surrogate (an id of "\ud800") is written back as that same JSON escape.
        open(output_path, "w", encoding="utf-8", errors="backslashreplace") as sink,
        tqdm(total=total, unit="B", unit_scale=True, desc="classify", disable=None) as bar,
    ):
        lines = read_lines(src, on_bytes=bar.update)
        rows, errors = classify_stream(router, lines, sink, batch_size)
    click.echo(f"{rows} rows, {errors} errors -> {output_path}", err=True)


@click.command("tune")
@click.option(
    "--pairs",
    "pairs_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your outcomes, rows as `eval --pairs` "
    '({"prompt" or "messages", "weak", "strong", "strong_tokens"?, "group"?}).',
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New artifact directory (must not exist, or be empty).",
)
@click.option(
    "--artifact",
    "artifact_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Base artifact (default: the shipped one).",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="Whose heads to tune (default: the artifact's default runtime).",
)
@click.option("--date", default=None, help="Date for the model card (default: today).")
def tune(
    pairs_path: Path | None,
    out_dir: Path,
    artifact_dir: Path | None,
    runtime: str | None,
    date: str | None,
) -> None:
    """Adapt demand and budgets to your outcomes; keep the base unless CV shows a gain."""
    from tqdm import tqdm

    from router.artifact import read_manifest
    from router.router import Router
    from router.training.pairs import PairFileError, load_pairs
    from router.training.residual import ResidualConfig
    from router.training.tune import report_table, tuned_block, write_tuned_artifact
    from router.training.tune import tune as tune_rows

    if pairs_path is None:  # `rightsize tune` adds --spend-log, which needs no file
        raise click.UsageError("give --pairs FILE (or, with the gateway, --spend-log)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise click.UsageError(f"{out_dir} is not empty; tune writes a new artifact directory")
    try:
        rows = load_pairs(pairs_path)
    except PairFileError as exc:
        raise click.ClickException(str(exc)) from None
    base_dir = artifact_dir or default_artifact_dir()
    chosen = runtime or str(read_manifest(base_dir)["default_runtime"])
    router = Router.load(base_dir, chosen)
    config = ResidualConfig()
    with tqdm(
        total=config.folds * config.repeats, desc="tune (cross-validation)", disable=None
    ) as bar:
        outcome = tune_rows(router, rows, config, progress=bar.update)
    block = tuned_block(
        outcome, base_dir, chosen, date or dt.date.today().isoformat(), pairs_path.name
    )
    write_tuned_artifact(base_dir, out_dir, chosen, outcome, block)
    click.echo(report_table(outcome.report))
    click.echo(f"{outcome.guard.reason}\nwrote {out_dir}", err=True)
