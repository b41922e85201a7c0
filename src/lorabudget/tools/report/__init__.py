"""`lorabudget report`: run directories and studies (`collect`), compared (`groups`), drawn (`figures`, with
`labels` placing names and `parallel` laying out a study's axes), written as Markdown and HTML (`document`), in
the sections a report has (`sections`, the best run's in `best_run`). A new figure is a function in `figures` and
a block in `sections.build`."""

from .collect import Collection, Run, collect
from .groups import Group, group_by_seed, varied_keys
from .sections import build, group_label, write_report

__all__ = ["Collection", "Group", "Run", "build", "collect", "group_by_seed", "group_label", "varied_keys",
           "write_report"]
