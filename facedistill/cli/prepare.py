"""``facedistill prepare``: turn face datasets into the packed format the rest of the toolkit reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facedistill.cli.common import console, progress_bar, user_errors, write_json_output

prepare_app = typer.Typer(
    help="Turn face datasets into packed, memory-mappable datasets (train sets and pair sets).\n\n"
         "Example: facedistill prepare synthetic --out data/synthetic",
    no_args_is_help=True,
)


def print_summary(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(str(key), str(value))
    console.print(table)


@prepare_app.command("synthetic")
@user_errors
def synthetic(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; gets train/ and val/ packed sets."),
    identities: int = typer.Option(200, help="Training identities."),
    images_per_identity: int = typer.Option(20, help="Images per training identity."),
    val_identities: int = typer.Option(100, help="Verification identities (disjoint from training)."),
    val_images_per_identity: int = typer.Option(6, help="Images per verification identity."),
    val_pairs: int = typer.Option(1200, help="Verification pairs (multiple of 20: 10 balanced folds)."),
    seed: int = typer.Option(0, help="Seed: the same seed renders the same faces."),
    difficulty: float = typer.Option(1.0, help="Nuisance strength (0 clean, 1 default, 2 very hard)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON ('-' for stdout)."),
) -> None:
    """Render the built-in procedural face set (no download): a train split and an identity-disjoint pair set.

    Example: facedistill prepare synthetic --out data/synthetic --identities 200 --images-per-identity 20
    """
    from facedistill.data.synthetic import write_synthetic

    total = identities * images_per_identity + val_identities * val_images_per_identity
    with progress_bar("rendering faces", total) as advance:
        summary = write_synthetic(out, train_identities=identities, images_per_identity=images_per_identity,
                                  val_identities=val_identities, val_images_per_identity=val_images_per_identity,
                                  val_pairs=val_pairs, seed=seed, difficulty=difficulty, progress=advance)
    print_summary("prepare synthetic", summary)
    write_json_output(json_out, summary)
