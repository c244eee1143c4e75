"""``minimascope datasets`` and ``models``: the data sets a run can train on, and the forms of an arch's name."""

from __future__ import annotations

import importlib.util

from rich.markup import escape
from rich.table import Table

from minimascope.cli._app import app, console, one_line_errors

# The forms --arch takes (minimascope.architectures), with what each builds and where its --pretrained weights are.
ARCHITECTURE_FORMS = (
    ("resnet18", "ResNet-18 with the ImageNet stem (7×7 conv, max-pool), as in the paper",
     "torchvision's IMAGENET1K_V1 (--weights FILE offline)"),
    ("resnet18-cifar", "ResNet-18 with a 3×3 stem and no max-pool, for small images", "none"),
    ("torchvision:NAME", "any torchvision classification model, e.g. torchvision:resnet34, torchvision:vgg11_bn",
     "torchvision's DEFAULT weights of NAME"),
    ("timm:NAME", "any timm model, e.g. timm:resnet18d (pip install 'minimascope[timm]')",
     "timm's published weights of NAME"),
)


def _size(size: tuple[int, int] | None) -> str:
    return f"{size[0]}×{size[1]}" if size else "any (one per set)"


def _architectures_table() -> Table:
    timm = "installed" if importlib.util.find_spec("timm") else "not installed"
    table = Table(title=f"architectures (--arch, arch:); the head is sized to the data set's classes and the stem to "
                        f"its channels; timm {timm}", title_justify="left")
    for column in ("form", "what", "--pretrained"):
        table.add_column(column)
    for row in ARCHITECTURE_FORMS:
        table.add_row(*map(escape, row))
    return table


@app.command("datasets")
@one_line_errors
def datasets_command() -> None:
    """The data sets a run can train on (--dataset NAME, a study's dataset:) and where --data points for each,
    then the forms of an architecture's name (--arch)."""
    from minimascope import datasets

    table = Table(title="data sets (--dataset, dataset:); the cache keys each source by its content",
                  title_justify="left")
    for column in ("name", "title", "classes", "channels", "size", "flip", "--data"):
        table.add_column(column, overflow="fold")
    for spec in datasets.DATASETS.values():
        where = spec.sources + ("; without --data: torchvision's download" if spec.download else "")
        table.add_row(spec.name, escape(spec.title), str(len(spec.classes)) if spec.classes else "folder names",
                      str(spec.channels) if spec.channels else "1 or 3", _size(spec.image_size),
                      "yes" if spec.flip else "no", escape(where))
    console.print(table)
    console.print(_architectures_table())


@app.command("models")
@one_line_errors
def models_command() -> None:
    """The forms of an architecture's name (--arch, a study's arch:) and where --pretrained takes weights from."""
    console.print(_architectures_table())
