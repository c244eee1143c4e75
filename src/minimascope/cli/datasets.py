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


def _images(channels: int | None, size: tuple[int, int] | None) -> str:
    """Channels × height × width, as a data set's spec fixes them ("any" where its files say)."""
    return f"{channels}×{size[0]}×{size[1]}" if channels and size else "any"


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
    # Short columns kept whole: in an 80-column terminal the explanation of --data takes what is left.
    for column in ("name", "classes", "images", "flip"):
        table.add_column(column, no_wrap=True)
    table.add_column("--data", overflow="fold", ratio=1)
    for spec in datasets.DATASETS.values():
        where = spec.sources + ("; without --data: torchvision's download" if spec.download else "")
        table.add_row(spec.name, str(len(spec.classes)) if spec.classes else "folders",
                      _images(spec.channels, spec.image_size), "yes" if spec.flip else "no", escape(where))
    console.print(table)
    console.print(_architectures_table())


@app.command("models")
@one_line_errors
def models_command() -> None:
    """The forms of an architecture's name (--arch, a study's arch:) and where --pretrained takes weights from."""
    console.print(_architectures_table())
